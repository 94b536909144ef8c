//! Enforcing modes through the real programs (test_run). In standard mode a pod's traffic
//! must be allowed by its own groups AND by the node's groups (SPEC §5); a pod keeps the
//! mode it was first seen with.
//!
//! Topology: the client pod on `lo` (test_run runs skbs there), frames toward it tagged
//! with its VLAN as the trunk receives them.
use enforcer_common::{PodMode, Reason, prog_names::*};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

/// The pod's group allows more than the node's: TCP 443 to the /24 out, TCP 8080 from
/// the /24 in. The node's group allows one host each way.
const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.3.0/24"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]}]},
 {"GroupId":"sg-node",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.3.7/32"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.5/32"}]}]}
]}"#;

fn k8s() -> String {
    format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-client]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    )
}

fn harness(mode: &str) -> Harness {
    let mut cfg = node_config();
    cfg.node.enforcing_mode = Some(serde_yaml::from_str(mode).unwrap());
    cfg.node.node_groups = vec!["sg-node".into()];
    let mut h = Harness::with_config(cfg);
    let p = h.apply(GROUPS, &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

fn out(dst: &str, dport: u16) -> Vec<u8> {
    Frame::new(
        CLIENT.mac,
        HOST_MAC,
        CLIENT.ipv4,
        dst,
        L4::Syn {
            sport: 40000,
            dport,
        },
    )
    .bytes()
}

fn into(src: &str, dport: u16) -> Vec<u8> {
    Frame::new(
        GW_MAC,
        CLIENT.mac,
        src,
        CLIENT.ipv4,
        L4::Syn {
            sport: 40000,
            dport,
        },
    )
    .tagged(CLIENT.vlan)
    .bytes()
}

#[test]
fn standard_mode_needs_the_pods_and_the_nodes_groups() {
    let mut h = harness("standard");
    let slot = h.slot("client");
    let resolver = Frame::new(
        CLIENT.mac,
        HOST_MAC,
        CLIENT.ipv4,
        "10.0.0.2",
        L4::Udp {
            sport: 5000,
            dport: 53,
        },
    )
    .bytes();
    for (what, prog, frame, want, reason) in [
        (
            "out: both groups allow",
            POD_EGRESS,
            out("10.0.2.5", 443),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "out: the pod's group allows, the node's does not",
            POD_EGRESS,
            out("10.0.2.6", 443),
            TC_ACT_SHOT,
            Reason::DropNoNodeRule,
        ),
        (
            "out: the pod's group does not allow",
            POD_EGRESS,
            out("10.0.2.5", 22),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "in: both groups allow",
            TRUNK_INGRESS,
            into("10.0.3.7", 8080),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "in: only the pod's group allows",
            TRUNK_INGRESS,
            into("10.0.3.8", 8080),
            TC_ACT_SHOT,
            Reason::DropNoNodeRule,
        ),
        (
            "the VPC resolver is always allowed, whatever the groups",
            POD_EGRESS,
            resolver,
            TC_ACT_REDIRECT,
            Reason::AllowAlways,
        ),
    ] {
        h.expect(slot, prog, &frame, want, reason, what);
    }
    // The flow records both verdicts: the pod's rule and the node's.
    let flows = h.dp.flows().unwrap();
    let (_, v) = flows
        .iter()
        .find(|(k, _)| k.remote_port == 443)
        .expect("the allowed flow is tracked");
    assert!(v.cookie != 0 && v.node_cookie != 0, "{v:?}");
    assert_ne!(v.cookie, v.node_cookie);
}

#[test]
fn strict_mode_ignores_the_nodes_groups_and_modes_stick() {
    let mut h = harness("strict");
    let slot = h.slot("client");
    h.expect(
        slot,
        POD_EGRESS,
        &out("10.0.2.6", 443),
        TC_ACT_REDIRECT,
        Reason::AllowPolicy,
        "strict: the pod's groups alone decide",
    );
    // A changed node setting applies to pods first seen later, not to this one.
    h.cfg.node.enforcing_mode = Some(serde_yaml::from_str("standard").unwrap());
    h.apply(GROUPS, &k8s());
    let entry = h.dp.current().pods_by_vlan[&(CLIENT.vlan as u32)];
    assert_eq!(entry.mode(), PodMode::Strict);
    h.expect(
        slot,
        POD_EGRESS,
        &out("10.0.2.7", 443),
        TC_ACT_REDIRECT,
        Reason::AllowPolicy,
        "still strict after the node setting changed",
    );
}
