//! The trunk's XDP pre-filter (`trunk_xdp`, test_run on crafted frames with the tag in
//! the bytes, as ENA delivers them): what it drops, what it leaves to `trunk_ingress`,
//! and that it never drops a frame TC would pass — each frame goes through both.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4, as_ipv4_fragment, icmp, with_vlan};
use integration_tests::harness::*;
use integration_tests::scenario::*;

/// Where the IPv4 header starts in a tagged frame.
const L3_TAGGED: usize = 18;

fn syn(dport: u16) -> L4 {
    L4::Syn {
        sport: 50000,
        dport,
    }
}

/// A tagged frame to `dst` on the client's VLAN, from `src`.
fn to(src: &str, dst: &str, l4: L4) -> Frame {
    Frame::new(GW_MAC, CLIENT.mac, src, dst, l4).tagged(CLIENT.vlan)
}

/// The client opens a flow to 10.0.2.5:443 and fd00:10:2::5:443 (outbound rules):
/// their replies (source port 443, destination 40000) have no inbound rule, only state.
fn open_client_flows(h: &mut Harness) {
    for dst in ["10.0.2.5", "fd00:10:2::5"] {
        let open = out(
            dst,
            L4::Syn {
                sport: 40000,
                dport: 443,
            },
        );
        assert_eq!(h.run(POD_EGRESS, &open.bytes()).0, TC_ACT_REDIRECT, "{dst}");
    }
}

/// (what it proves, frame, XDP's verdict, what TC then does, the reason counted on
/// which slot when XDP drops)
type Case = (
    &'static str,
    Vec<u8>,
    u32,
    Option<u32>,
    Option<(u32, Reason)>,
);

#[test]
fn xdp_drops_what_tc_would_and_passes_the_rest() {
    let mut h = setup();
    let slot = h.slot("client");
    open_client_flows(&mut h);
    let reply = |src| {
        into(
            src,
            L4::SynAck {
                sport: 443,
                dport: 40000,
            },
        )
        .bytes()
    };
    let mut arp = into("10.0.3.5", syn(8080)).bytes();
    arp[16..18].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut truncated = into("10.0.3.5", syn(8080)).bytes();
    truncated.truncate(L3_TAGGED + 10);
    let fragment = as_ipv4_fragment(&into("10.0.4.5", syn(8080)).bytes(), L3_TAGGED, 7, 8, false);
    let solicit = with_vlan(
        &icmp(
            GW_MAC,
            CLIENT.mac,
            "fe80::1",
            "ff02::1:ff00:10",
            255,
            135,
            0,
            [0; 4],
            &[0; 20],
        ),
        CLIENT.vlan,
    );
    let unknown = Frame::new(GW_MAC, CLIENT.mac, "10.0.3.5", CLIENT.ipv4, syn(8080))
        .tagged(99)
        .bytes();
    let untagged = Frame::new(GW_MAC, CLIENT.mac, "10.0.3.5", "10.0.0.10", syn(22)).bytes();

    let drop = |s: u32, r: Reason| Some((s, r));
    let table: Vec<Case> = vec![
        (
            "an allowed new flow (v4) passes on",
            into("10.0.3.5", syn(8080)).bytes(),
            XDP_PASS,
            Some(TC_ACT_REDIRECT),
            None,
        ),
        (
            "an allowed new flow (v6) passes on",
            into("fd00:10:3::5", syn(8080)).bytes(),
            XDP_PASS,
            Some(TC_ACT_REDIRECT),
            None,
        ),
        (
            "a reply to the pod's own flow (v4) passes on: state, not rules",
            reply("10.0.2.5"),
            XDP_PASS,
            Some(TC_ACT_REDIRECT),
            None,
        ),
        (
            "a reply to the pod's own flow (v6) passes on",
            reply("fd00:10:2::5"),
            XDP_PASS,
            Some(TC_ACT_REDIRECT),
            None,
        ),
        (
            "a peer no rule allows (v4) is dropped early",
            into("10.0.4.5", syn(8080)).bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropNoRule),
        ),
        (
            "a port no rule allows (v6) is dropped early",
            into("fd00:10:3::5", syn(8081)).bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropNoRule),
        ),
        (
            "a reply-shaped frame with no flow behind it is no reply",
            into(
                "10.0.2.5",
                L4::SynAck {
                    sport: 443,
                    dport: 40001,
                },
            )
            .bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropNoRule),
        ),
        (
            "UDP no rule allows",
            into(
                "10.0.3.5",
                L4::Udp {
                    sport: 53,
                    dport: 8080,
                },
            )
            .bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropNoRule),
        ),
        (
            "an unknown VLAN",
            unknown,
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(0, Reason::DropUnknownVlan),
        ),
        (
            "allowed by the rules but addressed to another IPv4 address",
            to("10.0.3.5", "10.0.1.99", syn(8080)).bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropSpoofIp),
        ),
        (
            "allowed by the rules but addressed to another IPv6 address",
            to("fd00:10:3::5", "fd00:10:1::99", syn(8080)).bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropSpoofIp),
        ),
        (
            "addressed to the server pod on the client's VLAN",
            to("10.0.3.5", SERVER.ipv4, syn(8080)).bytes(),
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropSpoofIp),
        ),
        (
            "not IP inside the pod's VLAN",
            arp,
            XDP_DROP,
            Some(TC_ACT_SHOT),
            drop(slot, Reason::DropEthertype),
        ),
        (
            "cut short: left to TC, which can pull (and drops it)",
            truncated,
            XDP_PASS,
            Some(TC_ACT_SHOT),
            None,
        ),
        (
            "a later fragment: its first fragment's verdict is TC's to apply",
            fragment,
            XDP_PASS,
            Some(TC_ACT_SHOT),
            None,
        ),
        (
            "neighbour discovery to a link-scope group is left to TC",
            solicit,
            XDP_PASS,
            None,
            None,
        ),
        (
            "untagged: the node's own traffic",
            untagged,
            XDP_PASS,
            Some(TC_ACT_OK),
            None,
        ),
    ];
    for (what, frame, xdp, tc, counted) in table {
        match counted {
            Some((s, reason)) => h.expect(s, TRUNK_XDP, &frame, xdp, reason, what),
            None => assert_eq!(h.run(TRUNK_XDP, &frame).0, xdp, "{what}: XDP"),
        }
        let before = counted.map(|(s, r)| h.counter(s, r));
        let (ret, _) = h.run(TRUNK_INGRESS, &frame);
        if let Some(tc) = tc {
            assert_eq!(ret, tc, "{what}: TC");
        }
        if let (Some((s, r)), Some(n)) = (counted, before) {
            // TC would have dropped it for the same reason: XDP only moved the drop.
            assert_eq!(h.counter(s, r), n + 1, "{what}: TC's reason");
        }
    }
}

/// Every combination of peer, port, protocol, destination, VLAN and family, each frame
/// first through XDP then through TC (TC's allowed frames open flows that later frames
/// may be replies of): XDP never drops what TC passes.
#[test]
fn xdp_never_drops_a_frame_tc_passes() {
    let mut h = setup();
    open_client_flows(&mut h);
    let (mut dropped, mut passed) = (0, 0);
    for (v6, peers, dsts) in [
        (
            false,
            ["10.0.3.5", "10.0.4.5", "10.0.2.5", CLIENT.ipv4],
            [CLIENT.ipv4, SERVER.ipv4, "10.0.1.99"],
        ),
        (
            true,
            ["fd00:10:3::5", "fd00:10:4::5", "fd00:10:2::5", CLIENT.ipv6],
            [CLIENT.ipv6, SERVER.ipv6, "fd00:10:1::99"],
        ),
    ] {
        for peer in peers {
            for dst in dsts {
                for vlan in [CLIENT.vlan, SERVER.vlan, 99] {
                    for l4 in [
                        syn(8080),
                        syn(80),
                        syn(8081),
                        L4::SynAck {
                            sport: 443,
                            dport: 40000,
                        },
                        L4::Udp {
                            sport: 53,
                            dport: 8080,
                        },
                        if v6 {
                            L4::EchoRequest { id: 3 }
                        } else {
                            L4::EchoReply { id: 3 }
                        },
                    ] {
                        let frame = Frame::new(GW_MAC, CLIENT.mac, peer, dst, l4)
                            .tagged(vlan)
                            .bytes();
                        let xdp = h.run(TRUNK_XDP, &frame).0;
                        let tc = h.run(TRUNK_INGRESS, &frame).0;
                        let what = format!("{peer} -> {dst} on VLAN {vlan}, {l4:?}");
                        match xdp {
                            XDP_DROP => {
                                assert_eq!(tc, TC_ACT_SHOT, "{what}: XDP dropped what TC passes");
                                dropped += 1;
                            }
                            XDP_PASS => passed += 1,
                            other => panic!("{what}: XDP returned {other}"),
                        }
                    }
                }
            }
        }
    }
    // Both sides were exercised. What passes, per family: the allowed new flow, the
    // reply to the client's flow and the client's connection to the server.
    assert!(dropped > 400, "dropped {dropped}");
    assert_eq!(passed, 6, "passed");
}

/// What only TC may decide stays TC's: a pod in audit passes what its rules deny (TC
/// tracks and reports it), and a fail-closed pod's traffic is judged by the
/// always-allowed list. XDP leaves both to TC, and drops nothing TC would pass.
#[test]
fn audit_and_fail_closed_pods_are_left_to_tc() {
    let mut cfg = node_config();
    cfg.node.enforcement = enforcer::config::Enforcement::Audit;
    let mut h = Harness::with_config(cfg);
    h.apply(GROUPS, &k8s());
    let denied = into("10.0.4.5", syn(8080)).bytes();
    assert_eq!(h.run(TRUNK_XDP, &denied).0, XDP_PASS, "audit: left to TC");
    assert_eq!(
        h.run(TRUNK_INGRESS, &denied).0,
        TC_ACT_REDIRECT,
        "audit: TC lets it pass"
    );
    // Spoofing stays enforced in audit, in XDP as in TC.
    let misaddressed = to("10.0.3.5", "10.0.1.99", syn(8080)).bytes();
    assert_eq!(h.run(TRUNK_XDP, &misaddressed).0, XDP_DROP);
    assert_eq!(h.run(TRUNK_INGRESS, &misaddressed).0, TC_ACT_SHOT);

    // The client's only group does not exist: fail-closed.
    let k = format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: c, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-missing]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    );
    let mut h = Harness::new();
    assert!(h.apply(GROUPS, &k).pods[0].error.is_some());
    for (what, frame) in [
        (
            "from the VPC resolver (always allowed)",
            into(
                "10.0.0.2",
                L4::Udp {
                    sport: 53,
                    dport: 5000,
                },
            )
            .bytes(),
        ),
        ("from a peer", into("10.0.3.5", syn(8080)).bytes()),
        (
            "to another address",
            to("10.0.3.5", "10.0.1.99", syn(8080)).bytes(),
        ),
    ] {
        let xdp = h.run(TRUNK_XDP, &frame).0;
        let tc = h.run(TRUNK_INGRESS, &frame).0;
        assert!(
            xdp == XDP_PASS || tc == TC_ACT_SHOT,
            "fail-closed, {what}: XDP dropped what TC passes"
        );
        if what.contains("always") {
            assert_eq!(
                (xdp, tc),
                (XDP_PASS, TC_ACT_REDIRECT),
                "fail-closed, {what}"
            );
        }
    }
}
