//! Crafted frames through the real programs (BPF_PROG_TEST_RUN): verdict, bytes out,
//! counters and flow-table state. Each test loads its own copy of the programs.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4, as_ipv4_fragment, with_ipv4_options, with_ipv6_ext};
use integration_tests::harness::*;

const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client","GroupName":"client",
  "IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.3.0/24"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:3::/64"}]}],
  "IpPermissionsEgress":[
    {"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.0/24"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},
    {"IpProtocol":"udp","FromPort":53,"ToPort":53,"IpRanges":[{"CidrIp":"10.0.2.53/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::53/128"}]},
    {"IpProtocol":"icmp","FromPort":8,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmpv6","FromPort":128,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},
    {"IpProtocol":"47","IpRanges":[{"CidrIp":"10.0.2.9/32"}]}]},
 {"GroupId":"sg-server","GroupName":"server",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"UserIdGroupPairs":[{"GroupId":"sg-client"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}
]}"#;

fn k8s() -> String {
    format!(
        "{}{}{}",
        r#"
kind: SecurityGroupPolicy
metadata: {name: client, namespace: test}
spec: {podSelector: {matchLabels: {app: client}}, securityGroups: {groupIds: [sg-client]}}
---
kind: SecurityGroupPolicy
metadata: {name: server, namespace: test}
spec: {podSelector: {matchLabels: {app: server}}, securityGroups: {groupIds: [sg-server]}}
"#,
        pod_yaml(&CLIENT, "{app: client}"),
        pod_yaml(&SERVER, "{app: server}")
    )
}

fn setup() -> Harness {
    let mut h = Harness::new();
    let p = h.apply(GROUPS, &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

/// From the client pod, as its host veth receives it.
fn out(dst: &str, l4: L4) -> Frame {
    let src = if dst.contains(':') {
        CLIENT.ipv6
    } else {
        CLIENT.ipv4
    };
    Frame::new(CLIENT.mac, HOST_MAC, src, dst, l4)
}

/// Toward the client pod, as the trunk receives it.
fn into(src: &str, l4: L4) -> Frame {
    let dst = if src.contains(':') {
        CLIENT.ipv6
    } else {
        CLIENT.ipv4
    };
    Frame::new(GW_MAC, CLIENT.mac, src, dst, l4).tagged(CLIENT.vlan)
}

#[test]
fn pod_egress_table() {
    let mut h = setup();
    let slot = h.slot("client");
    let syn = |d| L4::Syn {
        sport: 40000,
        dport: d,
    };
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "v4 tcp 443 allowed",
            out("10.0.2.5", syn(443)).bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "v4 tcp 22 denied",
            out("10.0.2.5", syn(22)).bytes(),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "v4 tcp 443 outside prefix",
            out("10.0.9.5", syn(443)).bytes(),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "v6 tcp 443 allowed",
            out("fd00:10:2::5", syn(443)).bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "v6 tcp 22 denied",
            out("fd00:10:2::5", syn(22)).bytes(),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "v4 udp 53 allowed",
            out(
                "10.0.2.53",
                L4::Udp {
                    sport: 5000,
                    dport: 53,
                },
            )
            .bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "v4 udp 53 other host",
            out(
                "10.0.2.54",
                L4::Udp {
                    sport: 5000,
                    dport: 53,
                },
            )
            .bytes(),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "v6 udp 53 allowed",
            out(
                "fd00:10:2::53",
                L4::Udp {
                    sport: 5000,
                    dport: 53,
                },
            )
            .bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "v4 echo allowed",
            out("10.0.2.7", L4::EchoRequest { id: 7 }).bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "v6 echo allowed",
            out("fd00:10:2::7", L4::EchoRequest { id: 7 }).bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "v4 echo reply not allowed out",
            out("10.0.2.7", L4::EchoReply { id: 9 }).bytes(),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "gre to allowed host",
            out("10.0.2.9", L4::Gre).bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "gre elsewhere",
            out("10.0.2.10", L4::Gre).bytes(),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "vpc resolver always allowed",
            out(
                "10.0.0.2",
                L4::Udp {
                    sport: 5001,
                    dport: 53,
                },
            )
            .bytes(),
            TC_ACT_REDIRECT,
            Reason::AllowAlways,
        ),
        (
            "ipv4 options, port 443",
            with_ipv4_options(
                &out(
                    "10.0.2.5",
                    L4::Syn {
                        sport: 40100,
                        dport: 443,
                    },
                )
                .bytes(),
                14,
                2,
            ),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "ipv4 options, port 22",
            with_ipv4_options(&out("10.0.2.5", syn(22)).bytes(), 14, 3),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
    ];
    for (name, frame, want, reason) in cases {
        let before = h.counter(slot, reason);
        let (ret, bytes) = h.run(POD_EGRESS, &frame);
        assert_eq!(ret, want, "{name}");
        assert_eq!(
            h.counter(slot, reason),
            before + 1,
            "{name}: counter {reason:?}"
        );
        if want == TC_ACT_REDIRECT {
            // Addressed to the VPC router, payload unchanged. The VLAN tag goes into skb
            // metadata, which test_run does not return; the namespace tests check the
            // tag the fabric receives.
            assert_eq!(&bytes[..6], &GW_MAC, "{name}");
            assert_eq!(&bytes[6..12], &CLIENT.mac, "{name}");
            assert_eq!(&bytes[12..], &frame[12..], "{name}");
        }
    }
}

#[test]
fn pod_egress_rejects_spoofing_and_junk() {
    let mut h = setup();
    let slot = h.slot("client");
    let syn = L4::Syn {
        sport: 1,
        dport: 443,
    };
    let spoof_ip = Frame::new(CLIENT.mac, HOST_MAC, "10.0.1.99", "10.0.2.5", syn).bytes();
    let spoof_ip6 = Frame::new(CLIENT.mac, HOST_MAC, "fd00:10:1::99", "fd00:10:2::5", syn).bytes();
    let spoof_mac = Frame::new(
        [2, 0, 0, 0, 0, 0x99],
        HOST_MAC,
        CLIENT.ipv4,
        "10.0.2.5",
        syn,
    )
    .bytes();
    let truncated = out("10.0.2.5", syn).bytes()[..14 + 20 + 6].to_vec();
    let tagged = out("10.0.2.5", syn).tagged(5).bytes();
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT.mac);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    for (name, frame, reason) in [
        ("spoofed ipv4", spoof_ip, Reason::DropSpoofIp),
        ("spoofed ipv6", spoof_ip6, Reason::DropSpoofIp),
        ("spoofed mac", spoof_mac, Reason::DropSpoofMac),
        ("truncated tcp", truncated, Reason::DropMalformed),
        ("tagged by the pod", tagged, Reason::DropEthertype),
        ("arp", arp, Reason::DropEthertype),
    ] {
        h.expect(slot, POD_EGRESS, &frame, TC_ACT_SHOT, reason, name);
    }
    assert_eq!(h.flow_count(), 0, "nothing dropped may create state");
}

#[test]
fn trunk_ingress_table() {
    let mut h = setup();
    let slot = h.slot("client");
    let syn = |p| L4::Syn {
        sport: 50000,
        dport: p,
    };
    for (name, frame, want) in [
        (
            "v4 8080 from allowed prefix",
            into("10.0.3.5", syn(8080)),
            TC_ACT_REDIRECT,
        ),
        (
            "v6 8080 from allowed prefix",
            into("fd00:10:3::5", syn(8080)),
            TC_ACT_REDIRECT,
        ),
        (
            "v4 8080 from elsewhere",
            into("10.0.4.5", syn(8080)),
            TC_ACT_SHOT,
        ),
        ("v4 other port", into("10.0.3.5", syn(8081)), TC_ACT_SHOT),
        (
            "v6 other port",
            into("fd00:10:3::5", syn(8081)),
            TC_ACT_SHOT,
        ),
    ] {
        let bytes = frame.bytes();
        let (ret, outb) = h.run(TRUNK_INGRESS, &bytes);
        assert_eq!(ret, want, "{name}");
        if want == TC_ACT_REDIRECT {
            // Tag removed, addressed to the pod from its host veth.
            assert_eq!(&outb[..6], &CLIENT.mac, "{name}");
            assert_eq!(&outb[6..12], &HOST_MAC, "{name}");
            assert_eq!(&outb[12..], &bytes[16..], "{name}");
        }
    }
    assert_eq!(h.counter(slot, Reason::AllowPolicy), 2);
    assert_eq!(h.counter(slot, Reason::DropNoRule), 3);

    let unknown = Frame::new(GW_MAC, CLIENT.mac, "10.0.3.5", CLIENT.ipv4, syn(8080))
        .tagged(99)
        .bytes();
    assert_eq!(h.run(TRUNK_INGRESS, &unknown).0, TC_ACT_SHOT);
    assert_eq!(h.counter(0, Reason::DropUnknownVlan), 1);
    // Untagged frames are the node's own traffic on the trunk: left to the stack.
    let untagged = Frame::new(GW_MAC, CLIENT.mac, "10.0.3.5", "10.0.0.10", syn(22)).bytes();
    assert_eq!(h.run(TRUNK_INGRESS, &untagged).0, TC_ACT_OK);
}

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
fn icmp_errors_about_tracked_flows_only() {
    let mut h = setup();
    let slot = h.slot("client");
    let req = out(
        "10.0.2.53",
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    );
    let err = into("10.0.2.53", L4::PortUnreachable).quoting(req.ip_packet());
    assert_eq!(
        h.run(TRUNK_INGRESS, &err.bytes()).0,
        TC_ACT_SHOT,
        "error before the flow exists"
    );
    assert_eq!(h.run(POD_EGRESS, &req.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.run(TRUNK_INGRESS, &err.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.counter(slot, Reason::AllowRelated), 1);
    let unrelated = out(
        "10.0.2.53",
        L4::Udp {
            sport: 6000,
            dport: 53,
        },
    );
    let err2 = into("10.0.2.53", L4::PortUnreachable).quoting(unrelated.ip_packet());
    assert_eq!(h.run(TRUNK_INGRESS, &err2.bytes()).0, TC_ACT_SHOT);

    let req6 = out(
        "fd00:10:2::53",
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    );
    let err6 = into("fd00:10:2::53", L4::PortUnreachable).quoting(req6.ip_packet());
    assert_eq!(h.run(TRUNK_INGRESS, &err6.bytes()).0, TC_ACT_SHOT);
    assert_eq!(h.run(POD_EGRESS, &req6.bytes()).0, TC_ACT_REDIRECT);
    assert_eq!(h.run(TRUNK_INGRESS, &err6.bytes()).0, TC_ACT_REDIRECT);
}

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
    assert_ne!(
        old_policy, new_policy,
        "a changed rule set gets a new policy id"
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
    // Old policy's entries are gone from the maps.
    assert!(
        h.dp.current()
            .peers_v4
            .keys()
            .all(|(_, k)| k.scope >> 1 != old_policy)
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
fn ipv6_extension_headers_and_fragments() {
    let mut h = setup();
    let slot = h.slot("client");
    let syn = |p| {
        out(
            "fd00:10:2::5",
            L4::Syn {
                sport: 41000,
                dport: p,
            },
        )
        .bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "hop-by-hop then tcp 443",
            with_ipv6_ext(&syn(443), 14, 0, 0),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            "dest options then tcp 22",
            with_ipv6_ext(&syn(22), 14, 60, 0),
            TC_ACT_SHOT,
            Reason::DropNoRule,
        ),
        (
            "first fragment, tcp 443",
            with_ipv6_ext(
                &out(
                    "fd00:10:2::5",
                    L4::Syn {
                        sport: 41001,
                        dport: 443,
                    },
                )
                .bytes(),
                14,
                44,
                0,
            ),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
        (
            // Same datagram id as the first fragment above: follows its verdict.
            "later fragment of the allowed datagram",
            with_ipv6_ext(&syn(443), 14, 44, 100),
            TC_ACT_REDIRECT,
            Reason::AllowFragment,
        ),
        (
            "ipv4 later fragment",
            as_ipv4_fragment(
                &out(
                    "10.0.2.5",
                    L4::Syn {
                        sport: 41002,
                        dport: 443,
                    },
                )
                .bytes(),
                14,
                77,
                100,
                false,
            ),
            TC_ACT_SHOT,
            Reason::DropFragment,
        ),
        (
            "ipv4 first fragment (MF), tcp 443",
            as_ipv4_fragment(
                &out(
                    "10.0.2.5",
                    L4::Syn {
                        sport: 41003,
                        dport: 443,
                    },
                )
                .bytes(),
                14,
                78,
                0,
                true,
            ),
            TC_ACT_REDIRECT,
            Reason::AllowPolicy,
        ),
    ];
    for (name, frame, want, reason) in cases {
        h.expect(slot, POD_EGRESS, &frame, want, reason, name);
    }
}

#[test]
fn neighbour_discovery_stays_on_the_node() {
    let mut h = setup();
    let slot = h.slot("client");
    // A neighbour solicitation for the pod's gateway, from the pod's own link-local
    // address: passed to the node's stack (TC_ACT_OK), not redirected to the trunk, not
    // subject to groups. (edges.rs has the invalid ones.)
    let ns = {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT.mac, [0x33, 0x33, 0xff, 0, 0, 1])
            .ipv6(
                "fe80::ff:fe00:a01"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                "ff02::1:ff00:1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                255,
            )
            .icmpv6(etherparse::Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut f, &[0u8; 16])
            .unwrap();
        f
    };
    assert_eq!(h.run(POD_EGRESS, &ns).0, TC_ACT_OK);
    assert_eq!(h.counter(slot, Reason::PassLocal), 1);
    assert_eq!(h.flow_count(), 0);
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut h = setup();
    let slot = h.slot("client");
    let tcp = |dport| {
        out(
            "10.0.2.5",
            L4::Syn {
                sport: 42000,
                dport,
            },
        )
        .bytes()
    };
    // IPv4: id 5 allowed (443), id 6 denied (22).
    assert_eq!(
        h.run(POD_EGRESS, &as_ipv4_fragment(&tcp(443), 14, 5, 0, true))
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        h.run(POD_EGRESS, &as_ipv4_fragment(&tcp(443), 14, 5, 185, true))
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        h.run(POD_EGRESS, &as_ipv4_fragment(&tcp(443), 14, 5, 370, false))
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(h.counter(slot, Reason::AllowFragment), 2);
    assert_eq!(
        h.run(POD_EGRESS, &as_ipv4_fragment(&tcp(22), 14, 6, 0, true))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(POD_EGRESS, &as_ipv4_fragment(&tcp(22), 14, 6, 185, false))
            .0,
        TC_ACT_SHOT
    );
    // Another datagram's id, same addresses: not covered.
    assert_eq!(
        h.run(POD_EGRESS, &as_ipv4_fragment(&tcp(443), 14, 9, 185, false))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(h.counter(slot, Reason::DropFragment), 2);
    // IPv6: the fragment header carries the id (0x1234 in these frames).
    let v6 = out(
        "fd00:10:2::5",
        L4::Syn {
            sport: 42001,
            dport: 443,
        },
    )
    .bytes();
    assert_eq!(
        h.run(POD_EGRESS, &with_ipv6_ext(&v6, 14, 44, 100)).0,
        TC_ACT_SHOT,
        "before its first"
    );
    assert_eq!(
        h.run(POD_EGRESS, &with_ipv6_ext(&v6, 14, 44, 0)).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        h.run(POD_EGRESS, &with_ipv6_ext(&v6, 14, 44, 100)).0,
        TC_ACT_REDIRECT,
        "after its first"
    );
    // Inbound: the first fragment of a reply passes by state, and so do the rest.
    let reply = into(
        "10.0.2.5",
        L4::SynAck {
            sport: 443,
            dport: 42000,
        },
    )
    .bytes();
    assert_eq!(
        h.run(TRUNK_INGRESS, &as_ipv4_fragment(&reply, 18, 11, 0, true))
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        h.run(TRUNK_INGRESS, &as_ipv4_fragment(&reply, 18, 11, 185, false))
            .0,
        TC_ACT_REDIRECT
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
