//! ICMP through the real programs (test_run): errors about tracked flows, neighbour
//! discovery. (`edges.rs` has queries, invalid ND and unparseable quotes.)
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::L4;
use integration_tests::harness::*;
use integration_tests::scenario::*;

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
