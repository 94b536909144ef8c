//! The paths beyond the strict pod-to-VPC one, each beside a redirect-only floor (the
//! fabric object's `sim_floor_redirect`: parse the Ethernet header, redirect) and the
//! strict established path, all measured in the same run (test_run; one run per call
//! minus the single-run overhead, as the main rows):
//!
//! - strict_established: a flow hit from a strict pod to a VPC host (the reference).
//! - snat_new: a standard pod's first packet off-VPC (node groups, a NAT port, the
//!   rewrite); each packet a new remote port, so each allocates.
//! - snat_established: a packet of a translated flow (flow hit, the rewrite).
//! - reverse_nat_established: its reply on the primary ENI (mapping, flow hit, rewrite
//!   back, into the pod).
//! - host_local_established: strict pod to strict pod on the node (the sender's flow
//!   hit, the tail call, the receiver's flow hit, into the pod).
//! - denied_<program>: a denied packet through the program its hook runs (`pod_egress`,
//!   `trunk_ingress`: the fast path misses, then the tail call) and through the full
//!   program it tail-calls, run directly (`<program>_full`): the difference is what the
//!   fast path's miss and the tail call cost every packet the fast path does not forward.
use enforcer_common::prog_names::{
    POD_EGRESS, POD_EGRESS_FULL, PRIMARY_INGRESS, TRUNK_INGRESS, TRUNK_INGRESS_FULL,
};
use integration_tests::fabric::FLOOR_REDIRECT;
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

use crate::{PerCall, REPEAT, ROUNDS, SINGLE_RUNS, median, single_run_overhead};

const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client","IpPermissions":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"10.0.0.0/8"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"10.0.0.0/8"}]}]},
 {"GroupId":"sg-node","IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}
]}"#;
const NODE: &str = "10.0.0.10";
const INET: &str = "203.0.113.10";
const NEW_FLOWS: u16 = 4000;

fn harness(mode: &str) -> Harness {
    let mut cfg = node_config();
    cfg.node.enforcing_mode = Some(serde_yaml::from_str(mode).unwrap());
    cfg.node.node_groups = vec!["sg-node".into()];
    cfg.node.primary_interface = Some("lo".into());
    cfg.node.primary_ipv4 = Some(NODE.parse().unwrap());
    cfg.node.flows_per_pod = enforcer_common::MAX_FLOWS;
    let mut h = Harness::with_config(cfg);
    let k8s = format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-client]}}}}\n{}{}",
        pod_yaml(&CLIENT, "{}"),
        pod_yaml(&SERVER, "{}")
    );
    let p = h.apply(GROUPS, &k8s);
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

/// Median over rounds of the mean single-run time, overhead removed.
fn timed(h: &mut Harness, prog: &str, frame: &[u8], want: u32, overhead: f64) -> f64 {
    median(
        (0..ROUNDS)
            .map(|_| {
                let mut total = 0.0;
                for _ in 0..SINGLE_RUNS {
                    let (ret, ns) = h.time(prog, frame, 1);
                    assert_eq!(ret, want, "{prog}");
                    total += ns;
                }
                total / SINGLE_RUNS as f64 - overhead
            })
            .collect(),
    )
}

fn syn(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    Frame::new(CLIENT.mac, HOST_MAC, src, dst, L4::Syn { sport, dport }).bytes()
}

/// The `denied_*` rows (see the module doc): for each side, the hook's program and the
/// full program on the same denied frame, in interleaved rounds of `REPEAT` runs (the
/// test_run loop's own cost is the same in both, and cancels in the difference).
fn tail_calls(h: &mut Harness, results: &mut Vec<String>) {
    // Strict: the client may reach 10.0.0.0/8 only, and be reached from it only.
    let out = syn(CLIENT.ipv4, INET, 40000, 443);
    let into = Frame::new(
        GW_MAC,
        CLIENT.mac,
        "192.0.2.1",
        CLIENT.ipv4,
        L4::Syn {
            sport: 40000,
            dport: 80,
        },
    )
    .tagged(CLIENT.vlan)
    .bytes();
    for (frame, hook, full, cases) in [
        (
            &out,
            POD_EGRESS,
            POD_EGRESS_FULL,
            ["denied_pod_egress", "denied_pod_egress_full"],
        ),
        (
            &into,
            TRUNK_INGRESS,
            TRUNK_INGRESS_FULL,
            ["denied_trunk_ingress", "denied_trunk_ingress_full"],
        ),
    ] {
        let slot = h.slot("client");
        let drops = h.counter(slot, enforcer_common::Reason::DropNoRule);
        for prog in [hook, full] {
            assert_eq!(h.run(prog, frame).0, TC_ACT_SHOT, "{prog}: denied");
        }
        assert_eq!(
            h.counter(slot, enforcer_common::Reason::DropNoRule),
            drops + 2,
            "{hook}: both runs judged the frame as no rule allows it"
        );
        let (mut via_hook, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            via_hook.push(h.time(hook, frame, REPEAT).1);
            direct.push(h.time(full, frame, REPEAT).1);
        }
        let (a, b) = (median(via_hook), median(direct));
        println!(
            "{hook}: a denied packet {a:.1} ns via the fast path's miss and the tail call, {b:.1} ns in {full} directly: {:+.1} ns",
            a - b
        );
        for (case, ns) in [(cases[0], a), (cases[1], b)] {
            results.push(format!(
                r#"{{"case":"{case}","family":"v4","rules":1,"ns_per_packet":{ns:.1},"method":"test_run_repeat"}}"#
            ));
        }
    }
}

pub fn run(results: &mut Vec<String>) {
    let mut rows = Vec::new();

    let mut strict = harness("strict");
    let overhead = single_run_overhead(&mut strict, PerCall::Mean);
    let vpc = syn(CLIENT.ipv4, "10.0.2.5", 40000, 443);
    assert_eq!(strict.run(POD_EGRESS, &vpc).0, TC_ACT_REDIRECT);
    rows.push((
        "strict_established",
        timed(&mut strict, POD_EGRESS, &vpc, TC_ACT_REDIRECT, overhead),
    ));
    let to_server = syn(CLIENT.ipv4, SERVER.ipv4, 40000, 80);
    assert_eq!(strict.run(POD_EGRESS, &to_server).0, TC_ACT_REDIRECT);
    rows.push((
        "host_local_established",
        timed(
            &mut strict,
            POD_EGRESS,
            &to_server,
            TC_ACT_REDIRECT,
            overhead,
        ),
    ));
    let floor = median(
        (0..ROUNDS)
            .map(|_| strict.time_fabric(FLOOR_REDIRECT, &vpc, REPEAT).1)
            .collect(),
    );
    rows.push(("floor_redirect", floor));
    tail_calls(&mut strict, results);

    let mut standard = harness("standard");
    let out = syn(CLIENT.ipv4, INET, 40000, 443);
    let (ret, translated) = standard.run(POD_EGRESS, &out);
    assert_eq!(ret, TC_ACT_REDIRECT);
    rows.push((
        "snat_established",
        timed(&mut standard, POD_EGRESS, &out, TC_ACT_REDIRECT, overhead),
    ));
    let port = u16::from_be_bytes([translated[34], translated[35]]);
    let reply = Frame::new(
        GW_MAC,
        HOST_MAC,
        INET,
        NODE,
        L4::Ack {
            sport: 443,
            dport: port,
        },
    )
    .bytes();
    rows.push((
        "reverse_nat_established",
        timed(
            &mut standard,
            PRIMARY_INGRESS,
            &reply,
            TC_ACT_REDIRECT,
            overhead,
        ),
    ));
    let per_round: Vec<f64> = (0..ROUNDS as u16)
        .map(|r| {
            let mut total = 0.0;
            for k in 0..NEW_FLOWS {
                let f = syn(CLIENT.ipv4, INET, 40000, 1024 + r * NEW_FLOWS + k);
                let (ret, ns) = standard.time(POD_EGRESS, &f, 1);
                assert_eq!(ret, TC_ACT_REDIRECT);
                total += ns;
            }
            total / NEW_FLOWS as f64 - overhead
        })
        .collect();
    rows.push(("snat_new", median(per_round)));

    for (case, ns) in rows {
        println!("{case:<24} v4        1 {ns:>10.1}");
        results.push(format!(
            r#"{{"case":"{case}","family":"v4","rules":1,"ns_per_packet":{ns:.1},"method":"test_run"}}"#
        ));
    }
}
