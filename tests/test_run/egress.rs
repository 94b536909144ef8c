//! Crafted frames out of the client pod through `pod_egress` (test_run): verdicts,
//! bytes out and counters for allowed, denied, spoofed and malformed frames.
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4, with_ipv4_options};
use integration_tests::harness::*;
use integration_tests::scenario::*;

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
