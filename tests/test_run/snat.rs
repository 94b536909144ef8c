//! Source NAT through the real programs (test_run): the rewrites byte for byte against
//! frames built independently (etherparse), with every checksum recomputed by it; the
//! way back (a reply, an ICMP error quoting a translated packet); port collisions and
//! exhaustion; what is never translated.
//!
//! Topology: the client pod (10.0.1.10) on `lo` in standard mode; the node 10.0.0.10,
//! its primary ENI "lo" too (test_run never delivers); the internet host 203.0.113.10.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4, as_ipv4_fragment, with_ipv4_protocol};
use integration_tests::harness::*;

const NODE: &str = "10.0.0.10";
const INET: &str = "203.0.113.10";

/// The client's group allows nothing off-VPC; the node's allows everything out: the
/// node's groups are the ones translated traffic meets.
const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client","IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"10.0.0.0/16"}]}]},
 {"GroupId":"sg-node","IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}
]}"#;

fn harness(mode: &str, ports: (u16, u16)) -> Harness {
    let mut cfg = node_config();
    cfg.node.enforcing_mode = Some(serde_yaml::from_str(mode).unwrap());
    cfg.node.node_groups = vec!["sg-node".into()];
    cfg.node.primary_interface = Some("lo".into());
    cfg.node.primary_ipv4 = Some(NODE.parse().unwrap());
    cfg.node.snat_ports =
        serde_yaml::from_str(&format!("{{min: {}, max: {}}}", ports.0, ports.1)).unwrap();
    cfg.node.snat_probes = 4;
    let mut h = Harness::with_config(cfg);
    let p = h.apply(GROUPS, &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

/// The client pod and the policy giving it `sg-client`.
fn k8s() -> String {
    format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-client]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    )
}

fn from_pod(src: &str, dst: &str, l4: L4) -> Frame {
    Frame::new(CLIENT.mac, HOST_MAC, src, dst, l4)
}

/// The client's TCP SYN to the internet host, as its host interface receives it.
fn syn_out(sport: u16, dport: u16) -> Vec<u8> {
    from_pod(CLIENT.ipv4, INET, L4::Syn { sport, dport }).bytes()
}

/// As the internet host's frame arrives on the primary ENI.
fn from_inet(dst: &str, l4: L4) -> Frame {
    Frame::new(GW_MAC, HOST_MAC, INET, dst, l4)
}

/// As the pod receives it (MACs rewritten for its link).
fn to_pod(l4: L4) -> Frame {
    Frame::new(HOST_MAC, CLIENT.mac, INET, CLIENT.ipv4, l4)
}

/// The NAT port of a translated frame (TCP/UDP source port, ICMP echo identifier).
fn nat_port(frame: &[u8]) -> u16 {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    match p.transport.unwrap() {
        etherparse::TransportSlice::Tcp(t) => t.source_port(),
        etherparse::TransportSlice::Udp(u) => u.source_port(),
        etherparse::TransportSlice::Icmpv4(i) => {
            u16::from_be_bytes([i.bytes5to8()[0], i.bytes5to8()[1]])
        }
        other => panic!("{other:?}"),
    }
}

/// The pod-side port of an L4 header.
fn pod_port(l4: L4) -> u16 {
    match l4 {
        L4::Syn { sport, .. } | L4::Udp { sport, .. } => sport,
        L4::EchoRequest { id } => id,
        other => panic!("{other:?}"),
    }
}

/// The same L4 with the pod-side port (source port / echo id) replaced by `port`.
fn with_port(l4: L4, port: u16) -> L4 {
    match l4 {
        L4::Syn { dport, .. } => L4::Syn { sport: port, dport },
        L4::Udp { dport, .. } => L4::Udp { sport: port, dport },
        L4::EchoRequest { .. } => L4::EchoRequest { id: port },
        other => panic!("{other:?}"),
    }
}

#[test]
fn outbound_rewrites_are_byte_exact() {
    let mut h = harness("standard", (61000, 65535));
    let slot = h.slot("client");
    // (what the pod sends, whether its port is kept: inside the NAT range and free)
    let cases = [
        (
            L4::Syn {
                sport: 40000,
                dport: 443,
            },
            false,
        ),
        (
            L4::Syn {
                sport: 61234,
                dport: 443,
            },
            true,
        ),
        (
            L4::Udp {
                sport: 5000,
                dport: 53,
            },
            false,
        ),
        (
            L4::Udp {
                sport: 62000,
                dport: 53,
            },
            true,
        ),
        (L4::EchoRequest { id: 77 }, false),
    ];
    for (l4, kept) in cases {
        let sent = from_pod(CLIENT.ipv4, INET, l4).bytes();
        let (ret, out) = h.run(POD_EGRESS, &sent);
        assert_eq!(ret, TC_ACT_REDIRECT, "{l4:?}: out of the primary ENI");
        let port = nat_port(&out);
        assert!(
            (61000..=65535).contains(&port),
            "{l4:?}: port {port} in range"
        );
        if kept {
            assert_eq!(port, pod_port(l4), "{l4:?}: its own port kept");
        }
        // Built from scratch with the node's address and the NAT port: every byte,
        // checksums included, must match.
        let want = from_pod(NODE, INET, with_port(l4, port)).bytes();
        assert_eq!(out, want, "{l4:?}: translated frame");
        // The next packet of the flow uses the same mapping.
        let (_, again) = h.run(POD_EGRESS, &sent);
        assert_eq!(again, want, "{l4:?}: established flow, same translation");
    }
    assert_eq!(h.counter(slot, Reason::AllowPolicy), 5);
    assert_eq!(h.counter(slot, Reason::AllowFlow), 5);
    assert_eq!(
        h.dp.snat_mappings().unwrap().len(),
        5,
        "one mapping per flow"
    );
}

#[test]
fn replies_and_icmp_errors_are_translated_back_to_the_pod() {
    let mut h = harness("standard", (61000, 65535));
    let slot = h.slot("client");
    let syn = from_pod(
        CLIENT.ipv4,
        INET,
        L4::Syn {
            sport: 40000,
            dport: 443,
        },
    );
    let (_, out) = h.run(POD_EGRESS, &syn.bytes());
    let p = nat_port(&out);
    let reply = from_inet(
        NODE,
        L4::SynAck {
            sport: 443,
            dport: p,
        },
    )
    .bytes();
    let (ret, back) = h.run(PRIMARY_INGRESS, &reply);
    assert_eq!(ret, TC_ACT_REDIRECT, "the reply goes into the pod");
    assert_eq!(
        back,
        to_pod(L4::SynAck {
            sport: 443,
            dport: 40000
        })
        .bytes(),
        "reply, byte-exact"
    );
    assert_eq!(
        h.counter(slot, Reason::AllowFlow),
        1,
        "judged by the pod's flow"
    );

    // An echo reply finds its request's flow by the translated identifier.
    let (_, out) = h.run(
        POD_EGRESS,
        &from_pod(CLIENT.ipv4, INET, L4::EchoRequest { id: 9 }).bytes(),
    );
    let id = nat_port(&out);
    let (ret, back) = h.run(
        PRIMARY_INGRESS,
        &from_inet(NODE, L4::EchoReply { id }).bytes(),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(
        back,
        to_pod(L4::EchoReply { id: 9 }).bytes(),
        "echo reply, byte-exact"
    );

    // Port unreachable quoting the translated UDP datagram: the quote is translated
    // back too (address, port, its IP and UDP checksums), as the pod sent it.
    let udp = from_pod(
        CLIENT.ipv4,
        INET,
        L4::Udp {
            sport: 5000,
            dport: 7001,
        },
    );
    let (_, out) = h.run(POD_EGRESS, &udp.bytes());
    let q = from_pod(
        NODE,
        INET,
        L4::Udp {
            sport: nat_port(&out),
            dport: 7001,
        },
    );
    let err = from_inet(NODE, L4::PortUnreachable)
        .quoting(q.ip_packet())
        .bytes();
    let (ret, back) = h.run(PRIMARY_INGRESS, &err);
    assert_eq!(ret, TC_ACT_REDIRECT, "the error goes to the pod");
    let want = to_pod(L4::PortUnreachable).quoting(udp.ip_packet()).bytes();
    assert_eq!(back, want, "ICMP error, quote and all, byte-exact");
    assert_eq!(h.counter(slot, Reason::AllowRelated), 1);

    // Nothing mapped: the node's own traffic, untouched.
    let stray = from_inet(
        NODE,
        L4::Syn {
            sport: 443,
            dport: 61999,
        },
    )
    .bytes();
    assert_eq!(
        h.run(PRIMARY_INGRESS, &stray),
        (TC_ACT_OK, stray.clone()),
        "not ours"
    );
    // Another remote port to the same NAT port: no mapping (endpoint-dependent), so
    // a stranger never reaches the pod through it.
    let stranger = from_inet(
        NODE,
        L4::Syn {
            sport: 444,
            dport: p,
        },
    )
    .bytes();
    assert_eq!(
        h.run(PRIMARY_INGRESS, &stranger).0,
        TC_ACT_OK,
        "the node's, not the pod's"
    );
    // A mapping whose flow is gone lets nothing in: only state does.
    let flows: Vec<_> = h.dp.flows().unwrap().into_iter().map(|(k, _)| k).collect();
    let mut m: aya::maps::HashMap<_, enforcer_common::FlowKey, enforcer_common::FlowValue> =
        h.dp.ebpf().map_mut("FLOWS").unwrap().try_into().unwrap();
    for k in flows {
        m.remove(&k).unwrap();
    }
    // Written behind the datapath's back: end the programs' copies, as the daemon does.
    h.dp.new_cache_epoch().unwrap();
    h.expect(
        slot,
        PRIMARY_INGRESS,
        &reply,
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "a reply with no flow",
    );
}

#[test]
fn collisions_probe_and_exhaustion_drops() {
    // One NAT port: a mapping per remote end (endpoint-dependent), then nothing.
    let mut h = harness("standard", (61000, 61000));
    let slot = h.slot("client");
    let first = syn_out(40000, 443);
    assert_eq!(h.run(POD_EGRESS, &first).0, TC_ACT_REDIRECT);
    let other_remote = syn_out(40001, 80);
    assert_eq!(
        h.run(POD_EGRESS, &other_remote).0,
        TC_ACT_REDIRECT,
        "same port, another remote end"
    );
    let collide = syn_out(40002, 443);
    h.expect(
        slot,
        POD_EGRESS,
        &collide,
        TC_ACT_SHOT,
        Reason::DropSnatExhausted,
        "no port left toward 443",
    );
    assert_eq!(h.flow_count(), 2, "the refused flow left no state");
    assert_eq!(h.dp.snat_mappings().unwrap().len(), 2, "nor a mapping");
}

#[test]
fn what_is_never_translated() {
    let mut h = harness("standard", (61000, 65535));
    let slot = h.slot("client");
    let syn = syn_out(40000, 443);
    let gre = with_ipv4_protocol(&syn, 14, 47);
    h.expect(
        slot,
        POD_EGRESS,
        &gre,
        TC_ACT_SHOT,
        Reason::DropNoSnat,
        "a protocol without ports",
    );
    let later = as_ipv4_fragment(&syn, 14, 7, 64, false);
    h.expect(
        slot,
        POD_EGRESS,
        &later,
        TC_ACT_SHOT,
        Reason::DropNoSnat,
        "a later fragment",
    );
    let reply = from_pod(CLIENT.ipv4, INET, L4::EchoReply { id: 5 }).bytes();
    h.expect(
        slot,
        POD_EGRESS,
        &reply,
        TC_ACT_SHOT,
        Reason::DropNoSnat,
        "an echo reply",
    );
    // Inside the VPC: not translated, the pod's groups and the node's, through the trunk.
    let vpc = from_pod(
        CLIENT.ipv4,
        "10.0.2.5",
        L4::Syn {
            sport: 40000,
            dport: 443,
        },
    )
    .bytes();
    let (ret, out) = h.run(POD_EGRESS, &vpc);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(&out[26..30], &[10, 0, 1, 10], "source untouched");
    assert_eq!(h.dp.snat_mappings().unwrap().len(), 0);

    // Strict mode never translates: the pod's own groups decide (nothing off-VPC here).
    let mut h = harness("strict", (61000, 65535));
    let slot = h.slot("client");
    h.expect(
        slot,
        POD_EGRESS,
        &syn,
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "strict: the pod's groups",
    );
    assert_eq!(h.dp.snat_mappings().unwrap().len(), 0);
}

#[test]
fn a_mapping_goes_with_its_pod() {
    let mut h = harness("standard", (61000, 65535));
    let syn = syn_out(40000, 443);
    assert_eq!(h.run(POD_EGRESS, &syn).0, TC_ACT_REDIRECT);
    assert_eq!(h.dp.snat_mappings().unwrap().len(), 1);
    h.apply(GROUPS, "");
    let node = enforcer::datapath::kernel::kernel_node_config(&h.cfg, 1, 1);
    h.dp.sweep_flows(&node).unwrap();
    assert_eq!(h.flow_count(), 0, "the pod's flows swept");
    assert_eq!(h.dp.snat_mappings().unwrap().len(), 0, "and their mappings");
}

#[test]
fn a_mapping_expires_with_its_flow() {
    let mut h = harness("standard", (61000, 65535));
    let syn = syn_out(40000, 443);
    assert_eq!(h.run(POD_EGRESS, &syn).0, TC_ACT_REDIRECT);
    // Half-open TCP idle past a (zero) timeout: the sweep removes flow and mapping.
    h.cfg.node.timeouts.tcp_syn_sent = 0;
    let node = enforcer::datapath::kernel::kernel_node_config(&h.cfg, 1, 1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    h.dp.sweep_flows(&node).unwrap();
    assert_eq!(h.flow_count(), 0, "the idle flow swept");
    assert_eq!(
        h.dp.snat_mappings().unwrap().len(),
        0,
        "its mapping with it"
    );
}

#[test]
fn always_allowed_destinations_work_through_source_nat() {
    // The node's groups allow nothing here: IMDS is reached because it is always
    // allowed, translated like any off-VPC flow (its reply must find the pod).
    let groups = GROUPS.replace(
        r#"[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]"#,
        "[]",
    );
    let mut h = harness("standard", (61000, 65535));
    h.apply(&groups, &k8s());
    let slot = h.slot("client");
    let imds = from_pod(
        CLIENT.ipv4,
        "169.254.169.254",
        L4::Syn {
            sport: 40000,
            dport: 80,
        },
    );
    let before = h.counter(slot, Reason::AllowAlways);
    let (ret, out) = h.run(POD_EGRESS, &imds.bytes());
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(h.counter(slot, Reason::AllowAlways), before + 1);
    let port = nat_port(&out);
    assert_eq!(
        out,
        from_pod(
            NODE,
            "169.254.169.254",
            L4::Syn {
                sport: port,
                dport: 80
            }
        )
        .bytes(),
        "translated"
    );
    let reply = Frame::new(
        GW_MAC,
        HOST_MAC,
        "169.254.169.254",
        NODE,
        L4::SynAck {
            sport: 80,
            dport: port,
        },
    );
    assert_eq!(
        h.run(PRIMARY_INGRESS, &reply.bytes()).0,
        TC_ACT_REDIRECT,
        "its reply comes back"
    );
    // Elsewhere off-VPC, the node's groups (which allow nothing) decide.
    let other = syn_out(40001, 80);
    h.expect(
        slot,
        POD_EGRESS,
        &other,
        TC_ACT_SHOT,
        Reason::DropNoNodeRule,
        "the node's groups",
    );
}
