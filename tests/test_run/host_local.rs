//! Host-local delivery between two pods of the node (test_run): delivered by redirect to
//! the receiver's host interface, never through the VPC; the sender's outbound and the
//! receiver's inbound rules both decide in strict mode, and a drop is counted on the pod
//! that refused; standard mode bypasses groups for it (SPEC §5).
//!
//! Topology: the client pod on `lo` (test_run runs skbs there); the server pod's host
//! interface is a made-up index (1000), which the redirect names.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

/// client may send TCP 80 and 81 to the pods' /24; server admits TCP 80 from it only.
const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client","IpPermissionsEgress":[
   {"IpProtocol":"tcp","FromPort":80,"ToPort":81,"IpRanges":[{"CidrIp":"10.0.1.0/24"}]}]},
 {"GroupId":"sg-server","IpPermissions":[
   {"IpProtocol":"tcp","FromPort":80,"ToPort":80,"IpRanges":[{"CidrIp":"10.0.1.0/24"}]}]}
]}"#;

fn harness(mode: &str) -> Harness {
    let mut h = Harness::with_config(config(mode));
    let p = h.apply(GROUPS, &k8s("sg-server"));
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

fn config(mode: &str) -> enforcer::config::Config {
    let mut cfg = node_config();
    cfg.node.enforcing_mode = Some(serde_yaml::from_str(mode).unwrap());
    cfg.node.node_groups = vec!["sg-server".into()];
    cfg
}

/// Both pods; the server's policy names `server_group`.
fn k8s(server_group: &str) -> String {
    format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{matchLabels: {{app: client}}}}, securityGroups: {{groupIds: [sg-client]}}}}\n---\nkind: SecurityGroupPolicy\nmetadata: {{name: s, namespace: test}}\nspec: {{podSelector: {{matchLabels: {{app: server}}}}, securityGroups: {{groupIds: [{server_group}]}}}}\n{}{}",
        pod_yaml(&CLIENT, "{app: client}"),
        pod_yaml(&SERVER, "{app: server}")
    )
}

fn to_server(dport: u16) -> Vec<u8> {
    Frame::new(
        CLIENT.mac,
        HOST_MAC,
        CLIENT.ipv4,
        SERVER.ipv4,
        L4::Syn {
            sport: 40000,
            dport,
        },
    )
    .bytes()
}

#[test]
fn strict_pods_on_one_node_are_each_judged_by_their_own_rules() {
    let mut h = harness("strict");
    let (client, server) = (h.slot("client"), h.slot("server"));
    let (before_c, before_s) = (
        h.counter(client, Reason::AllowPolicy),
        h.counter(server, Reason::AllowPolicy),
    );
    let (ret, bytes) = h.run(POD_EGRESS, &to_server(80));
    assert_eq!(ret, TC_ACT_REDIRECT, "both sides allow: delivered");
    assert_eq!(&bytes[..6], &SERVER.mac, "addressed to the server pod");
    assert_eq!(&bytes[6..12], &HOST_MAC, "from its host-side interface");
    assert_eq!(
        bytes.len(),
        to_server(80).len(),
        "no VLAN tag: not toward the VPC"
    );
    assert_eq!(
        h.counter(client, Reason::AllowPolicy),
        before_c + 1,
        "sender's verdict"
    );
    assert_eq!(
        h.counter(server, Reason::AllowPolicy),
        before_s + 1,
        "receiver's verdict"
    );
    assert_eq!(
        h.flow_count(),
        2,
        "one flow entry per side, as each ENI tracks its own"
    );
    assert!(
        h.dp.flows()
            .unwrap()
            .iter()
            .all(|(_, v)| v.path == enforcer_common::PATH_POD),
        "both entries know the flow stays on the node"
    );
    // Each entry names the other side's host interface (the sender's is lo, 1).
    let server_if =
        h.dp.current().pods_by_ipv4[&SERVER.ipv4.parse::<std::net::Ipv4Addr>().unwrap().octets()];
    let mut peers: Vec<u32> =
        h.dp.flows()
            .unwrap()
            .iter()
            .map(|(_, v)| v.peer_ifindex)
            .collect();
    peers.sort();
    assert_eq!(peers, vec![1, server_if], "each side's flow names its peer");
    // The flow's next packet: by state on both sides, and still delivered on the node
    // (the entries' host-local mark, not another look-up, says where it goes).
    let ack = Frame::new(
        CLIENT.mac,
        HOST_MAC,
        CLIENT.ipv4,
        SERVER.ipv4,
        L4::Ack {
            sport: 40000,
            dport: 80,
        },
    )
    .bytes();
    let before = h.counter(server, Reason::AllowFlow);
    h.expect(
        client,
        POD_EGRESS,
        &ack,
        TC_ACT_REDIRECT,
        Reason::AllowFlow,
        "established, sender",
    );
    assert_eq!(
        h.counter(server, Reason::AllowFlow),
        before + 1,
        "established, receiver"
    );
    h.expect(
        server,
        POD_EGRESS,
        &to_server(81),
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "the sender allows 81, the receiver does not: counted on the receiver",
    );
    h.expect(
        client,
        POD_EGRESS,
        &to_server(82),
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "the sender does not allow 82: counted on the sender",
    );
}

#[test]
fn standard_mode_bypasses_groups_between_pods_of_the_node() {
    let mut h = harness("standard");
    let (client, server) = (h.slot("client"), h.slot("server"));
    let before = h.counter(server, Reason::AllowHostLocal);
    h.expect(
        client,
        POD_EGRESS,
        &to_server(82),
        TC_ACT_REDIRECT,
        Reason::AllowHostLocal,
        "no rule on either side allows 82: standard mode bypasses both",
    );
    assert_eq!(h.counter(server, Reason::AllowHostLocal), before + 1);
    assert_eq!(h.flow_count(), 0, "bypassed traffic creates no state");
}

#[test]
fn a_receivers_refusal_covers_the_rest_of_the_datagram() {
    use integration_tests::frames::as_ipv4_fragment;
    let mut h = harness("strict");
    let (client, server) = (h.slot("client"), h.slot("server"));
    // The sender allows port 81, the receiver does not: the first fragment is dropped on
    // the receiver, and so must be the rest, although the sender allowed the datagram.
    let first = as_ipv4_fragment(&to_server(81), 14, 0x77, 0, true);
    let later = as_ipv4_fragment(&to_server(81), 14, 0x77, 1, false);
    h.expect(
        server,
        POD_EGRESS,
        &first,
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "first fragment",
    );
    h.expect(
        server,
        POD_EGRESS,
        &later,
        TC_ACT_SHOT,
        Reason::DropFragment,
        "a later fragment follows the receiver's verdict, not the sender's",
    );
    // Both allow port 80: later fragments pass on both sides.
    let first = as_ipv4_fragment(&to_server(80), 14, 0x78, 0, true);
    let later = as_ipv4_fragment(&to_server(80), 14, 0x78, 1, false);
    assert_eq!(h.run(POD_EGRESS, &first).0, TC_ACT_REDIRECT);
    h.expect(
        client,
        POD_EGRESS,
        &later,
        TC_ACT_REDIRECT,
        Reason::AllowFragment,
        "sender",
    );
    assert_eq!(h.counter(server, Reason::AllowFragment), 1, "receiver");
}

#[test]
fn a_standard_senders_bypass_never_opens_a_strict_or_fail_closed_receiver() {
    // The client is first seen in standard mode, the server later in strict mode.
    let mut h = Harness::with_config(config("standard"));
    let only_client = k8s("sg-server").replace(&pod_yaml(&SERVER, "{app: server}"), "");
    h.apply(GROUPS, &only_client);
    h.cfg = config("strict");
    let p = h.apply(GROUPS, &k8s("sg-server"));
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    let (client, server) = (h.slot("client"), h.slot("server"));
    h.expect(
        server,
        POD_EGRESS,
        &to_server(82),
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "the sender bypasses its groups, the strict receiver's inbound still decides",
    );
    h.expect(
        client,
        POD_EGRESS,
        &to_server(80),
        TC_ACT_REDIRECT,
        Reason::AllowHostLocal,
        "allowed by the receiver: delivered",
    );
    // The server's group vanishes: it is fail-closed, and no bypass reaches it.
    let p = h.apply(GROUPS, &k8s("sg-gone"));
    assert!(
        p.pods
            .iter()
            .any(|p| p.name == "server" && p.error.is_some())
    );
    h.expect(
        server,
        POD_EGRESS,
        &to_server(80),
        TC_ACT_SHOT,
        Reason::DropFailClosed,
        "a fail-closed receiver drops even host-local traffic",
    );
}

/// Each tail call's slot emptied (a loader bug, or another process writing the pinned
/// map): the packet it would have judged is dropped as an internal error, never passed.
#[test]
fn an_empty_tail_call_slot_drops_and_never_passes() {
    use enforcer_common::tail;
    // (slot emptied, counted on, what it proves)
    let rows = [
        (
            tail::HOST_LOCAL,
            Some("client"),
            "no host-local program: the host-local packet is dropped",
        ),
        (
            tail::EGRESS_FULL,
            None,
            "no full egress program: a packet the fast path does not forward is dropped \
             (counted on slot 0: the fast path names no pod)",
        ),
    ];
    for (emptied, counted_on, what) in rows {
        let mut h = harness("strict");
        let slot = counted_on.map_or(0, |p| h.slot(p));
        let mut calls: aya::maps::ProgramArray<_> =
            h.dp.ebpf()
                .map_mut(enforcer_common::map_names::TAIL_CALLS)
                .unwrap()
                .try_into()
                .unwrap();
        calls.clear_index(&emptied).unwrap();
        h.expect(
            slot,
            POD_EGRESS,
            &to_server(80),
            TC_ACT_SHOT,
            Reason::DropInternal,
            what,
        );
    }
}

#[test]
fn a_remembered_peer_interface_never_misdelivers() {
    // The sender's flow entry remembers the receiver's host interface. Should that
    // interface number come to belong to another pod (the receiver's sandbox re-created,
    // the number reused), the packet is dropped, never delivered to a pod it is not
    // addressed to.
    let mut h = harness("strict");
    let client = h.slot("client");
    assert_eq!(h.run(POD_EGRESS, &to_server(80)).0, TC_ACT_REDIRECT);
    let flows = h.dp.flows().unwrap();
    let (key, mut value) = flows
        .into_iter()
        .find(|(_, v)| v.peer_ifindex != 1)
        .expect("the client's entry");
    value.peer_ifindex = 1; // lo: the client's own interface, another pod than the server
    let mut m: aya::maps::HashMap<_, enforcer_common::FlowKey, enforcer_common::FlowValue> =
        h.dp.ebpf().map_mut("FLOWS").unwrap().try_into().unwrap();
    m.insert(key, value, 0).unwrap();
    // Written behind the datapath's back: end the programs' copies, as the daemon does.
    h.dp.new_cache_epoch().unwrap();
    h.expect(
        client,
        POD_EGRESS,
        &to_server(80),
        TC_ACT_SHOT,
        Reason::DropUnknownPod,
        "the remembered interface is not the destination's",
    );
}
