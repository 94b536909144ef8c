//! IPv6 extension headers and IPv4/IPv6 fragments through the real programs (test_run).
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{L4, as_ipv4_fragment, with_ipv6_ext};
use integration_tests::harness::*;
use integration_tests::scenario::*;

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
