//! Whose rules apply (test_run): referenced groups' members as peers, fail-closed pods.
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;
use integration_tests::scenario::*;

#[test]
fn referenced_group_members_are_peers() {
    let mut h = setup();
    let to_server = |src: &str| {
        Frame::new(
            GW_MAC,
            SERVER.mac,
            src,
            SERVER.ipv4,
            L4::Syn {
                sport: 1234,
                dport: 80,
            },
        )
        .tagged(SERVER.vlan)
    };
    // The client pod carries sg-client, which sg-server admits on port 80.
    assert_eq!(
        h.run(TRUNK_INGRESS, &to_server(CLIENT.ipv4).bytes()).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        h.run(TRUNK_INGRESS, &to_server("10.0.1.99").bytes()).0,
        TC_ACT_SHOT
    );
    let to_server6 = Frame::new(
        GW_MAC,
        SERVER.mac,
        CLIENT.ipv6,
        SERVER.ipv6,
        L4::Syn {
            sport: 1234,
            dport: 80,
        },
    )
    .tagged(SERVER.vlan);
    assert_eq!(h.run(TRUNK_INGRESS, &to_server6.bytes()).0, TC_ACT_REDIRECT);
}

#[test]
fn fail_closed_pod_keeps_only_always_allowed() {
    let k = format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-missing]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    );
    let mut h = Harness::new();
    let p = h.apply(GROUPS, &k);
    let err = p.pods[0].error.clone().unwrap();
    assert!(
        err.contains("InvalidSecurityGroupID.NotFound") && err.contains("sg-missing"),
        "{err}"
    );
    let slot = h.slot("client");
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 1,
                    dport: 443
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(h.counter(slot, Reason::DropFailClosed), 1);
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.0.2",
                L4::Udp {
                    sport: 1,
                    dport: 53
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        h.run(
            TRUNK_INGRESS,
            &into(
                "10.0.0.2",
                L4::Udp {
                    sport: 53,
                    dport: 1
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_REDIRECT
    );
}
