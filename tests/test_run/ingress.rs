//! Crafted frames from the VPC through `trunk_ingress` (test_run): the VLAN picks the
//! pod, its inbound rules decide, the tag goes and the MACs are rewritten.
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;
use integration_tests::scenario::*;

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
