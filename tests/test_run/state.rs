//! Flow state through the real programs (test_run): replies by state, revocations,
//! untracked flows, a full table.
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::L4;
use integration_tests::harness::*;
use integration_tests::scenario::*;

#[test]
fn replies_pass_by_state_only() {
    let mut h = setup();
    let slot = h.slot("client");
    // TCP: SYN out, SYN-ACK back passes by state; an unsolicited SYN-ACK does not.
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 40000,
                    dport: 443
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(h.flow_count(), 1);
    let synack = into(
        "10.0.2.5",
        L4::SynAck {
            sport: 443,
            dport: 40000,
        },
    );
    assert_eq!(h.run(TRUNK_INGRESS, &synack.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.counter(slot, Reason::AllowFlow), 1);
    let flows = h.dp.flows().unwrap();
    assert_eq!(flows[0].1.state, enforcer_common::FLOW_TCP_ESTABLISHED);
    let stray = into(
        "10.0.2.6",
        L4::SynAck {
            sport: 443,
            dport: 40000,
        },
    );
    assert_eq!(h.run(TRUNK_INGRESS, &stray.bytes()).0, TC_ACT_SHOT);
    let wrong_port = into(
        "10.0.2.5",
        L4::SynAck {
            sport: 443,
            dport: 40001,
        },
    );
    assert_eq!(h.run(TRUNK_INGRESS, &wrong_port.bytes()).0, TC_ACT_SHOT);

    // UDP and ICMP echo (v4 and v6).
    for (req, reply) in [
        (
            out(
                "10.0.2.53",
                L4::Udp {
                    sport: 5353,
                    dport: 53,
                },
            ),
            into(
                "10.0.2.53",
                L4::Udp {
                    sport: 53,
                    dport: 5353,
                },
            ),
        ),
        (
            out(
                "fd00:10:2::53",
                L4::Udp {
                    sport: 5353,
                    dport: 53,
                },
            ),
            into(
                "fd00:10:2::53",
                L4::Udp {
                    sport: 53,
                    dport: 5353,
                },
            ),
        ),
        (
            out("10.0.2.7", L4::EchoRequest { id: 77 }),
            into("10.0.2.7", L4::EchoReply { id: 77 }),
        ),
        (
            out("fd00:10:2::7", L4::EchoRequest { id: 78 }),
            into("fd00:10:2::7", L4::EchoReply { id: 78 }),
        ),
    ] {
        assert_eq!(
            h.run(TRUNK_INGRESS, &reply.bytes()).0,
            TC_ACT_SHOT,
            "reply before request: {reply:?}"
        );
        assert_eq!(
            h.run(POD_EGRESS, &req.bytes()).0,
            TC_ACT_REDIRECT,
            "{req:?}"
        );
        assert_eq!(
            h.run(TRUNK_INGRESS, &reply.bytes()).0,
            TC_ACT_REDIRECT,
            "{reply:?}"
        );
    }
    let other_id = into("10.0.2.7", L4::EchoReply { id: 79 });
    assert_eq!(h.run(TRUNK_INGRESS, &other_id.bytes()).0, TC_ACT_SHOT);
}

#[test]
fn revoked_rule_keeps_tracked_flows_and_stops_new_ones() {
    let mut h = setup();
    let ack = out(
        "10.0.2.5",
        L4::Ack {
            sport: 40000,
            dport: 443,
        },
    );
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 40000,
                    dport: 443
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_REDIRECT
    );
    let old_policy = h.last.as_ref().unwrap().pods[0].policy_id;
    // Revoke every outbound rule of sg-client.
    let revoked = GROUPS.replace(
        r#""FromPort":443,"ToPort":443"#,
        r#""FromPort":444,"ToPort":444"#,
    );
    h.apply(&revoked, &k8s());
    let new_policy = h.last.as_ref().unwrap().pods[0].policy_id;
    assert_eq!(
        old_policy, new_policy,
        "same groups, same policy id: the changed entries are rewritten in place"
    );
    assert_eq!(
        h.run(POD_EGRESS, &ack.bytes()).0,
        TC_ACT_REDIRECT,
        "tracked flow survives"
    );
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 40001,
                    dport: 443
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 40002,
                    dport: 444
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_REDIRECT
    );
    // The revoked rule's class is gone from the maps: no port entry names 443.
    assert!(
        h.dp.current()
            .ports
            .keys()
            .all(|(_, k)| u16::from_be_bytes(k.port_be) != 443)
    );
}

#[test]
fn untracked_flows_are_cut_when_the_rule_goes() {
    let open = r#"{"SecurityGroups":[{"GroupId":"sg-client",
      "IpPermissions":[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]}],
      "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#;
    let k = format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-client]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    );
    let mut h = Harness::new();
    h.apply(open, &k);
    let syn = into(
        "10.9.9.9",
        L4::Syn {
            sport: 50000,
            dport: 22,
        },
    );
    assert_eq!(h.run(TRUNK_INGRESS, &syn.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.flow_count(), 0, "0/0 in with all-open out: untracked");

    let closed = open.replace(
        r#""FromPort":22,"ToPort":22"#,
        r#""FromPort":23,"ToPort":23"#,
    );
    h.apply(&closed, &k);
    let ack = into(
        "10.9.9.9",
        L4::Ack {
            sport: 50000,
            dport: 22,
        },
    );
    assert_eq!(
        h.run(TRUNK_INGRESS, &ack.bytes()).0,
        TC_ACT_SHOT,
        "untracked flow is cut at once"
    );
}

#[test]
fn flow_table_full_refuses_new_flows_keeps_old() {
    let mut h = setup();
    let slot = h.slot("client");
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 40000,
                    dport: 443
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_REDIRECT
    );
    {
        use aya::maps::HashMap;
        use enforcer_common::{FLOW_UDP, FlowKey, FlowValue, MAX_FLOWS};
        let mut m: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(h.dp.ebpf().map_mut("FLOWS").unwrap()).unwrap();
        let now = enforcer::datapath::sweep::coarse_now_ns();
        for i in 0..MAX_FLOWS - 1 {
            let mut k = FlowKey {
                proto: 17,
                family: 4,
                ..Default::default()
            };
            k.local[..4].copy_from_slice(&[10, 0, 1, 10]);
            k.remote[..4].copy_from_slice(&i.to_be_bytes());
            let v = FlowValue {
                last_seen_ns: now,
                state: FLOW_UDP,
                ..Default::default()
            };
            m.insert(k, v, 0).unwrap();
        }
    }
    assert_eq!(h.flow_count(), enforcer_common::MAX_FLOWS as usize);
    assert_eq!(
        h.run(
            POD_EGRESS,
            &out(
                "10.0.2.5",
                L4::Syn {
                    sport: 40001,
                    dport: 443
                }
            )
            .bytes()
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(h.counter(slot, Reason::DropFlowTableFull), 1);
    let ack = out(
        "10.0.2.5",
        L4::Ack {
            sport: 40000,
            dport: 443,
        },
    );
    assert_eq!(
        h.run(POD_EGRESS, &ack.bytes()).0,
        TC_ACT_REDIRECT,
        "existing flows keep working"
    );
}

#[test]
fn all_open_groups_leave_tcp_and_udp_untracked_but_track_icmp() {
    let open = r#"{"SecurityGroups":[{"GroupId":"sg-open",
      "IpPermissions":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}],
      "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#;
    let k = format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: o, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-open]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    );
    let mut h = Harness::new();
    h.apply(open, &k);
    let tcp = out(
        "10.9.9.9",
        L4::Syn {
            sport: 40000,
            dport: 443,
        },
    );
    let udp = out(
        "10.9.9.9",
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
    );
    assert_eq!(h.run(POD_EGRESS, &tcp.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.run(POD_EGRESS, &udp.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(
        h.flow_count(),
        0,
        "tcp and udp under 0/0 both ways: untracked"
    );
    let ping = out("10.9.9.9", L4::EchoRequest { id: 5 });
    assert_eq!(h.run(POD_EGRESS, &ping.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.flow_count(), 1, "icmp is always tracked");
}
