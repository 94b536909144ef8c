//! Where the time goes: frames that leave the pod program at successive stages (all
//! drops, so test_run `repeat` re-runs an unmodified packet and the figure is exact).
use enforcer_common::prog_names::{POD_EGRESS, TRUNK_INGRESS};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

fn main() {
    let mut h = Harness::new();
    let groups = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissionsEgress":[{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]}]}]}"#;
    let k8s = format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: b, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-1]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    );
    h.apply(groups, &k8s);
    let syn = |src: &str, dst: &str, mac, port| {
        Frame::new(
            mac,
            HOST_MAC,
            src,
            dst,
            L4::Syn {
                sport: 1,
                dport: port,
            },
        )
        .bytes()
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "trunk: unknown VLAN",
            TRUNK_INGRESS,
            Frame::new(
                GW_MAC,
                CLIENT.mac,
                "10.0.2.5",
                CLIENT.ipv4,
                L4::Syn { sport: 1, dport: 2 },
            )
            .tagged(99)
            .bytes(),
        ),
        (
            "pod: spoofed MAC (pod lookup)",
            POD_EGRESS,
            syn(CLIENT.ipv4, "10.0.2.5", [2, 0, 0, 0, 0, 9], 443),
        ),
        (
            "pod: spoofed IP (+ parse)",
            POD_EGRESS,
            syn("10.0.1.99", "10.0.2.5", CLIENT.mac, 443),
        ),
        (
            "pod: no peer (+ flow miss, stage A, always)",
            POD_EGRESS,
            syn(CLIENT.ipv4, "10.0.9.5", CLIENT.mac, 443),
        ),
        (
            "pod: no port (+ stage B)",
            POD_EGRESS,
            syn(CLIENT.ipv4, "10.0.2.5", CLIENT.mac, 22),
        ),
    ];
    let floor = syn(CLIENT.ipv4, "10.0.2.5", CLIENT.mac, 443);
    let mut v: Vec<f64> = (0..7).map(|_| h.time_floor(&floor, 200_000).1).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{:<45} {:>6.1} ns",
        "trivial program (fabric, untagged)", v[3]
    );
    for (name, prog, frame) in cases {
        println!("{name:<45} {:>6.1} ns", median_ns(&mut h, prog, &frame));
    }
    by_rule_count();
}

fn median_ns(h: &mut Harness, prog: &str, frame: &[u8]) -> f64 {
    let mut v: Vec<f64> = (0..7).map(|_| h.time(prog, frame, 200_000).1).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[3]
}

/// Whether the rule look-up grows with the rule count: with the hashed tables it should
/// not (one hash look-up per prefix length in use); the tries it replaced grew with the
/// log2 of their entries on a hit.
fn by_rule_count() {
    println!("\nRule count: n outbound tcp rules, each its own /24 and port");
    for n in [1usize, 60, 1000] {
        let mut h = Harness::new();
        h.cfg.node.quotas.rules_per_group_per_family = 1000;
        let perms: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"IpProtocol":"tcp","FromPort":{p},"ToPort":{p},"IpRanges":[{{"CidrIp":"10.{a}.{b}.0/24"}}]}}"#,
                    p = 1000 + i,
                    a = 100 + i / 256,
                    b = i % 256
                )
            })
            .collect();
        let groups = format!(
            r#"{{"SecurityGroups":[{{"GroupId":"sg-1","IpPermissionsEgress":[{}]}}]}}"#,
            perms.join(",")
        );
        let k8s = format!(
            "kind: SecurityGroupPolicy\nmetadata: {{name: b, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-1]}}}}\n{}",
            pod_yaml(&CLIENT, "{}")
        );
        h.apply(&groups, &k8s);
        let i = n - 1;
        let last = format!("10.{}.{}.9", 100 + i / 256, i % 256);
        let syn = |dst: &str, port| {
            Frame::new(
                CLIENT.mac,
                HOST_MAC,
                CLIENT.ipv4,
                dst,
                L4::Syn {
                    sport: 1,
                    dport: port,
                },
            )
            .bytes()
        };
        let miss = median_ns(&mut h, POD_EGRESS, &syn("10.50.0.1", 1000));
        let hit = median_ns(&mut h, POD_EGRESS, &syn(&last, 9));
        println!("{n:>5} rules: stage A miss {miss:>6.1} ns   stage A hit, B miss {hit:>6.1} ns");
    }
}
