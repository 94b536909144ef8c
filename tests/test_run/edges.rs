//! Crafted frames at the edges of the groups, through the real programs (test_run):
//! link-scope IPv6 from a pod, neighbour discovery and MLD validity, ICMPv6 types carried
//! in IPv4, ICMP queries other than echo, ICMP errors whose quote does not parse, and
//! each pod's share of the flow table. Each case tries to get traffic around a pod's
//! groups, and says what it proves.
//!
//! Topology (see `harness`): the client pod's host interface is `lo` (test_run runs skbs
//! there), so `pod_egress` sees the client's frames; `trunk_ingress` sees frames tagged
//! with a pod's VLAN as the VPC sends them.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4, icmp, with_ipv4_protocol, with_vlan};
use integration_tests::harness::*;

/// The client may reach TCP 443 and ICMP echo/timestamp in 10.0.2.0/24, and ICMPv6 echo
/// and node information in fd00:10:2::/64; inbound it admits TCP 8080 only. Nothing
/// allows ICMPv6 neighbour discovery, MLD or anything to fe80::/10 or ff00::/8.
const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.3.0/24"}]}],
  "IpPermissionsEgress":[
    {"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.0/24"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},
    {"IpProtocol":"icmp","FromPort":8,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmp","FromPort":13,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmpv6","FromPort":128,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},
    {"IpProtocol":"icmpv6","FromPort":139,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]}]},
 {"GroupId":"sg-server",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"IpRanges":[{"CidrIp":"10.0.0.0/16"}]}],
  "IpPermissionsEgress":[]},
 {"GroupId":"sg-icmp-errors",
  "IpPermissions":[
    {"IpProtocol":"icmp","FromPort":3,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmpv6","FromPort":1,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]}],
  "IpPermissionsEgress":[]}
]}"#;

/// The node's primary IPv6 lies in the client's allowed fd00:10:2::/64.
const NODE_IPV6: &str = "fd00:10:2::1";
/// The client's link-local address: the EUI-64 of its MAC, as Linux forms it.
const CLIENT_LL: &str = "fe80::ff:fe00:a01";

fn k8s(client_groups: &str) -> String {
    format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: client, namespace: test}}\nspec: {{podSelector: {{matchLabels: {{app: client}}}}, securityGroups: {{groupIds: [{client_groups}]}}}}\n\
         ---\nkind: SecurityGroupPolicy\nmetadata: {{name: server, namespace: test}}\nspec: {{podSelector: {{matchLabels: {{app: server}}}}, securityGroups: {{groupIds: [sg-server]}}}}\n{}{}",
        pod_yaml(&CLIENT, "{app: client}"),
        pod_yaml(&SERVER, "{app: server}")
    )
}

fn harness_with(client_groups: &str, node: &str) -> Harness {
    let mut cfg = node_config();
    let extra: enforcer::config::NodeSettings = serde_yaml::from_str(&format!(
        "{{trunkInterface: lo, gatewayMac: '02:fa:00:00:00:01', vpcCidrs: [10.0.0.0/16], primaryIPv6: '{NODE_IPV6}'{node}}}"
    ))
    .unwrap();
    cfg.node = enforcer::config::NodeSettings {
        host_veth_prefix: cfg.node.host_veth_prefix.clone(),
        ..extra
    };
    let mut h = Harness::with_config(cfg);
    let p = h.apply(GROUPS, &k8s(client_groups));
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

fn harness() -> Harness {
    harness_with("sg-client", "")
}

/// From the client pod (its host interface receives it).
fn from_client(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    Frame::new(CLIENT.mac, HOST_MAC, src, dst, l4).bytes()
}

/// ICMP/ICMPv6 from the client pod.
fn client_icmp(src: &str, dst: &str, hop: u8, ty: u8, rest: [u8; 4]) -> Vec<u8> {
    icmp(CLIENT.mac, HOST_MAC, src, dst, hop, ty, 0, rest, &[0; 16])
}

/// ICMP/ICMPv6 from the VPC to the client, tagged with its VLAN.
fn to_client(
    src: &str,
    dst: &str,
    hop: u8,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    with_vlan(
        &icmp(GW_MAC, CLIENT.mac, src, dst, hop, ty, code, rest, body),
        CLIENT.vlan,
    )
}

/// Identifier and sequence number of an ICMP query.
fn id(n: u16) -> [u8; 4] {
    let b = n.to_be_bytes();
    [b[0], b[1], 0, 1]
}

type Case = (&'static str, &'static str, Vec<u8>, u32, Reason);

/// Runs a table of (what it proves, program, frame, verdict, counted reason).
fn run_table(h: &mut Harness, cases: Vec<Case>) {
    let slot = h.slot("client");
    for (what, prog, frame, want, reason) in cases {
        h.expect(slot, prog, &frame, want, reason, what);
    }
}

#[test]
fn link_scope_ipv6_from_a_pod_meets_its_rules() {
    let mut h = harness();
    let syn = |dport| L4::Syn {
        sport: 40000,
        dport,
    };
    run_table(
        &mut h,
        vec![
            (
                "the node's link-local address counts as the node: TCP 22 is not allowed",
                POD_EGRESS,
                from_client(CLIENT_LL, "fe80::1", syn(22)),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "TCP 443 to the node is allowed, and stays on the node (not the trunk)",
                POD_EGRESS,
                from_client(CLIENT_LL, "fe80::1", syn(443)),
                TC_ACT_OK,
                Reason::AllowPolicy,
            ),
            (
                "link-local multicast is judged too: no rule allows mDNS",
                POD_EGRESS,
                from_client(
                    CLIENT_LL,
                    "ff02::fb",
                    L4::Udp {
                        sport: 5353,
                        dport: 5353,
                    },
                ),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "a link-local source that is not the pod's own is spoofed",
                POD_EGRESS,
                from_client("fe80::bad", "fe80::1", syn(443)),
                TC_ACT_SHOT,
                Reason::DropSpoofIp,
            ),
            (
                "the pod's link-local source is for link-scope destinations only",
                POD_EGRESS,
                from_client(CLIENT_LL, "fd00:10:2::5", syn(443)),
                TC_ACT_SHOT,
                Reason::DropSpoofIp,
            ),
            (
                "the pod's global address toward a link-local one is judged as well",
                POD_EGRESS,
                from_client(CLIENT.ipv6, "fe80::1", syn(22)),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
        ],
    );
}

#[test]
fn only_valid_neighbour_discovery_and_mld_stay_on_the_node() {
    let mut h = harness();
    let sol = "ff02::1:ff00:1";
    run_table(
        &mut h,
        vec![
            (
                "neighbour solicitation from the pod's link-local, hop limit 255: plumbing",
                POD_EGRESS,
                client_icmp(CLIENT_LL, sol, 255, 135, [0; 4]),
                TC_ACT_OK,
                Reason::PassLocal,
            ),
            (
                "DAD solicitation from the unspecified address: plumbing",
                POD_EGRESS,
                client_icmp("::", sol, 255, 135, [0; 4]),
                TC_ACT_OK,
                Reason::PassLocal,
            ),
            (
                "MLDv2 report from the pod's link-local, hop limit 1: plumbing",
                POD_EGRESS,
                client_icmp(CLIENT_LL, "ff02::16", 1, 143, [0; 4]),
                TC_ACT_OK,
                Reason::PassLocal,
            ),
            (
                "a solicitation with hop limit 64 is invalid ND (RFC 4861): the rules decide",
                POD_EGRESS,
                client_icmp(CLIENT_LL, sol, 64, 135, [0; 4]),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "an advertisement may not come from the unspecified address",
                POD_EGRESS,
                client_icmp("::", sol, 255, 136, [0; 4]),
                TC_ACT_SHOT,
                Reason::DropSpoofIp,
            ),
            (
                "ND from another link-local source is spoofed",
                POD_EGRESS,
                client_icmp("fe80::1:1", sol, 255, 135, [0; 4]),
                TC_ACT_SHOT,
                Reason::DropSpoofIp,
            ),
            (
                "ND-typed message from the pod's global address to a VPC peer: the rules",
                POD_EGRESS,
                client_icmp(CLIENT.ipv6, "fd00:10:2::5", 255, 135, [0; 4]),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "an MLD report with hop limit 255 is not MLD: the rules",
                POD_EGRESS,
                client_icmp(CLIENT_LL, "ff02::16", 255, 143, [0; 4]),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "ND from the VPC is not the pod's link plumbing: its inbound rules decide",
                TRUNK_INGRESS,
                to_client("fe80::99", CLIENT.ipv6, 255, 136, 0, [0; 4], &[0; 16]),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "ND-typed message from a VPC peer to the pod: inbound rules",
                TRUNK_INGRESS,
                to_client("fd00:10:2::5", CLIENT.ipv6, 255, 135, 0, [0; 4], &[0; 16]),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
        ],
    );
    assert_eq!(h.flow_count(), 0, "plumbing creates no flow state");
}

#[test]
fn icmpv6_types_carried_in_ipv4_are_not_neighbour_discovery() {
    let mut h = harness();
    let v4_icmp = |frame: Vec<u8>, l3| with_ipv4_protocol(&frame, l3, 58);
    run_table(
        &mut h,
        vec![
            (
                "IPv4 protocol 58 type 135 out of the pod: no rule allows protocol 58",
                POD_EGRESS,
                v4_icmp(client_icmp(CLIENT.ipv4, "10.0.2.5", 255, 135, [0; 4]), 14),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "IPv4 protocol 58 type 135 into the pod from a VPC peer: no inbound rule",
                TRUNK_INGRESS,
                v4_icmp(
                    to_client("10.0.2.5", CLIENT.ipv4, 255, 135, 0, [0; 4], &[0; 16]),
                    18,
                ),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
        ],
    );
}

#[test]
fn icmpv4_nd_lookalike_reaches_no_fail_closed_pod() {
    // sg-missing does not exist: the client is fail-closed.
    let mut h = Harness::new();
    let p = h.apply(GROUPS, &k8s("sg-missing"));
    assert!(p.pods.iter().any(|p| p.error.is_some()));
    run_table(
        &mut h,
        vec![(
            "protocol 58 type 135 in IPv4 passes no fail-closed pod",
            TRUNK_INGRESS,
            with_ipv4_protocol(
                &to_client("10.0.2.5", CLIENT.ipv4, 255, 135, 0, [0; 4], &[0; 16]),
                18,
                58,
            ),
            TC_ACT_SHOT,
            Reason::DropFailClosed,
        )],
    );
}

#[test]
fn icmp_queries_pass_back_only_as_the_matching_reply() {
    let mut h = harness();
    let peer = "10.0.2.7";
    let peer6 = "fd00:10:2::7";
    let reply_in = |ty, ident| to_client(peer, CLIENT.ipv4, 64, ty, 0, id(ident), &[0; 12]);
    let reply6_in = |ty, ident| to_client(peer6, CLIENT.ipv6, 64, ty, 0, id(ident), &[0; 12]);
    run_table(
        &mut h,
        vec![
            (
                "timestamp request out: allowed by the type-13 rule",
                POD_EGRESS,
                client_icmp(CLIENT.ipv4, peer, 64, 13, id(7)),
                TC_ACT_REDIRECT,
                Reason::AllowPolicy,
            ),
            (
                "its timestamp reply, same identifier: by state",
                TRUNK_INGRESS,
                reply_in(14, 7),
                TC_ACT_REDIRECT,
                Reason::AllowFlow,
            ),
            (
                "a timestamp reply with another identifier: no state, no rule",
                TRUNK_INGRESS,
                reply_in(14, 8),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "a router advertisement (type 9) from the same peer: no state, no rule",
                TRUNK_INGRESS,
                reply_in(9, 0),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "a new timestamp request from the peer, same identifier: not a reply",
                TRUNK_INGRESS,
                reply_in(13, 7),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "an echo reply with the timestamp's identifier: another query's reply",
                TRUNK_INGRESS,
                reply_in(0, 7),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "address mask reply (18) to nothing the pod asked",
                TRUNK_INGRESS,
                reply_in(18, 7),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "ICMPv6 node information query out: allowed by the type-139 rule",
                POD_EGRESS,
                client_icmp(CLIENT.ipv6, peer6, 64, 139, id(5)),
                TC_ACT_REDIRECT,
                Reason::AllowPolicy,
            ),
            (
                "its node information response: by state",
                TRUNK_INGRESS,
                reply6_in(140, 5),
                TC_ACT_REDIRECT,
                Reason::AllowFlow,
            ),
            (
                "an echo reply with that identifier: another query's reply",
                TRUNK_INGRESS,
                reply6_in(129, 5),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "an echo reply the pod sends unasked: judged by its rules (no type-0 rule)",
                POD_EGRESS,
                client_icmp(CLIENT.ipv4, peer, 64, 0, id(9)),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
        ],
    );
}

#[test]
fn icmp_errors_with_unparseable_quotes_meet_the_rules() {
    // A 16-byte body that is no IP header: related to no flow, so the rules decide.
    let junk = [0xabu8; 16];
    let unreach = |src, dst| to_client(src, dst, 64, 3, 3, [0; 4], &junk);
    let unreach6 = |src, dst| to_client(src, dst, 64, 1, 4, [0; 4], &junk);
    let mut h = harness();
    run_table(
        &mut h,
        vec![
            (
                "v4 port unreachable quoting junk, no inbound ICMP rule: no rule (not malformed)",
                TRUNK_INGRESS,
                unreach("10.0.2.5", CLIENT.ipv4),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
            (
                "v6 port unreachable quoting junk: no rule",
                TRUNK_INGRESS,
                unreach6("fd00:10:2::5", CLIENT.ipv6),
                TC_ACT_SHOT,
                Reason::DropNoRule,
            ),
        ],
    );
    let mut h = harness_with("sg-client, sg-icmp-errors", "");
    run_table(
        &mut h,
        vec![
            (
                "v4 port unreachable quoting junk, inbound ICMP type 3 allowed: delivered",
                TRUNK_INGRESS,
                unreach("10.0.2.5", CLIENT.ipv4),
                TC_ACT_REDIRECT,
                Reason::AllowPolicy,
            ),
            (
                "v6 destination unreachable quoting junk, type 1 allowed: delivered",
                TRUNK_INGRESS,
                unreach6("fd00:10:2::5", CLIENT.ipv6),
                TC_ACT_REDIRECT,
                Reason::AllowPolicy,
            ),
        ],
    );
    assert_eq!(h.flow_count(), 0, "errors create no state");
}

#[test]
fn one_pod_cannot_take_the_whole_flow_table() {
    // A share of 8 entries; half-open entries under pressure go after 1 s.
    let mut h = harness_with(
        "sg-client",
        ", flowsPerPod: 8, timeouts: {tcpSynSent: 60, tcpEstablished: 432000, tcpClosing: 60, udp: 30, udpStream: 180, icmp: 30, other: 600, tcpSynSentUnderPressure: 1}",
    );
    let client = h.slot("client");
    let server = h.slot("server");
    let syn = |sport| from_client(CLIENT.ipv4, "10.0.2.5", L4::Syn { sport, dport: 443 });
    for sport in 1000..1008 {
        assert_eq!(
            h.run(POD_EGRESS, &syn(sport)).0,
            TC_ACT_REDIRECT,
            "within the share"
        );
    }
    for sport in 1008..1020 {
        assert_eq!(
            h.run(POD_EGRESS, &syn(sport)).0,
            TC_ACT_SHOT,
            "past the share"
        );
    }
    assert_eq!(
        h.counter(client, Reason::DropPodFlowLimit),
        12,
        "refusals counted on the pod"
    );
    assert_eq!(
        h.counter(client, Reason::DropFlowTableFull),
        0,
        "the node's table is not full"
    );
    assert_eq!(h.flow_count(), 8);
    // The flooding pod's existing flows keep working.
    let ack = from_client(
        CLIENT.ipv4,
        "10.0.2.5",
        L4::Ack {
            sport: 1000,
            dport: 443,
        },
    );
    assert_eq!(h.run(POD_EGRESS, &ack).0, TC_ACT_REDIRECT, "existing flow");
    // Another pod still opens new flows: a VPC host reaches the server's port 80.
    let to_server = Frame::new(
        GW_MAC,
        SERVER.mac,
        "10.0.2.5",
        SERVER.ipv4,
        L4::Syn {
            sport: 5555,
            dport: 80,
        },
    )
    .tagged(SERVER.vlan)
    .bytes();
    assert_eq!(
        h.run(TRUNK_INGRESS, &to_server).0,
        TC_ACT_REDIRECT,
        "other pod's new flow"
    );
    assert_eq!(h.counter(server, Reason::AllowPolicy), 1);
    assert_eq!(h.dp.flow_counts().unwrap()[client as usize], 8);
    assert_eq!(h.dp.flow_counts().unwrap()[server as usize], 1);

    // Under pressure, half-open entries are short-lived: after the 1 s pressure timeout
    // the sweep removes all eight (an ACK from the side that sent the SYN leaves an entry
    // half-open) and gives the share back.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let node = enforcer::datapath::kernel::kernel_node_config(&h.cfg, 1, 1);
    let swept = h.dp.sweep_flows(&node).unwrap();
    assert_eq!(swept, 8, "half-open entries of the flooding pod swept");
    assert_eq!(h.dp.flow_counts().unwrap()[client as usize], 0);
    assert_eq!(
        h.dp.flow_counts().unwrap()[server as usize],
        1,
        "the other pod's entry stays"
    );
    assert_eq!(
        h.run(POD_EGRESS, &syn(2000)).0,
        TC_ACT_REDIRECT,
        "share given back"
    );
}
