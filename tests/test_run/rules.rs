//! Whose rules apply (test_run): referenced groups' members as peers, fail-closed pods.
//!
//! Topology: `integration_tests::scenario` — the client pod on `lo` (test_run runs skbs
//! there, so `pod_egress` finds it by ifindex 1), the server pod by its VLAN on the trunk.
use enforcer_common::{Reason, prog_names::*};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;
use integration_tests::scenario::*;

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

/// The client's groups with `extra` more outbound rules, rule i allowing TCP port 7000+i
/// to 172.16.0.0/(12+i) and fd00:ab::/(32+i): each a prefix length of its own.
fn groups_with_lengths(extra: u32) -> String {
    let rules: String = (0..extra)
        .map(|i| {
            format!(
                r#"{{"IpProtocol":"tcp","FromPort":{p},"ToPort":{p},"IpRanges":[{{"CidrIp":"172.16.0.0/{l4}"}}],"Ipv6Ranges":[{{"CidrIpv6":"fd00:ab::/{l6}"}}]}},"#,
                p = 7000 + i,
                l4 = 12 + i,
                l6 = 32 + i
            )
        })
        .collect();
    GROUPS.replacen(
        r#""IpPermissionsEgress":["#,
        &format!(r#""IpPermissionsEgress":[{rules}"#),
        1,
    )
}

/// Where the kernel looks for each family's peers: `Some(lengths)` for the hash,
/// `None` for the trie; and how many entries the trie and the hash of each family hold.
fn peer_place(h: &Harness) -> [(Option<Vec<u8>>, usize, usize); 2] {
    use aya::maps::{Array, HashMap, LpmTrie};
    use enforcer_common::*;
    let lens: Array<_, PeerLens> = Array::try_from(h.dp.map("PEER_LENS").unwrap()).unwrap();
    let place = |i| {
        let l = lens.get(&i, 0).unwrap();
        (l.count != PEER_LENS_TRIE).then(|| l.lens[..l.count as usize].to_vec())
    };
    let trie4: LpmTrie<_, PeerKeyV4, PeerClass> =
        LpmTrie::try_from(h.dp.map("PEER_V4").unwrap()).unwrap();
    let trie6: LpmTrie<_, PeerKeyV6, PeerClass> =
        LpmTrie::try_from(h.dp.map("PEER_V6").unwrap()).unwrap();
    let hash4: HashMap<_, PeerHashKeyV4, PeerClass> =
        HashMap::try_from(h.dp.map("PEER_HASH_V4").unwrap()).unwrap();
    let hash6: HashMap<_, PeerHashKeyV6, PeerClass> =
        HashMap::try_from(h.dp.map("PEER_HASH_V6").unwrap()).unwrap();
    [
        (
            place(PEER_LENS_V4),
            trie4.keys().count(),
            hash4.keys().count(),
        ),
        (
            place(PEER_LENS_V6),
            trie6.keys().count(),
            hash6.keys().count(),
        ),
    ]
}

/// Proves the peers' two homes give the verdicts an LPM table would, and that moving
/// between them (past 8 prefix lengths in a family and back) leaves the other one empty:
/// at each step, every rule's prefix admits its port, the neighbouring address and the
/// wrong port are refused, in both families.
#[test]
fn peers_move_between_hash_and_trie_and_keep_their_verdicts() {
    let mut h = setup();
    let mut sport = 1000;
    let mut check = |h: &mut Harness, extra: u32, step: &str| {
        let mut cases: Vec<(String, u16, u32)> = vec![
            ("10.0.2.5".into(), 443, TC_ACT_REDIRECT),
            ("10.0.2.5".into(), 444, TC_ACT_SHOT),
            ("10.0.3.5".into(), 443, TC_ACT_SHOT),
            ("fd00:10:2::5".into(), 443, TC_ACT_REDIRECT),
            ("fd00:10:3::5".into(), 443, TC_ACT_SHOT),
        ];
        for i in 0..extra {
            let port = 7000 + i as u16;
            // The last address of 172.16.0.0/(12+i), and the first past it.
            let last = u32::from(std::net::Ipv4Addr::new(172, 16, 0, 0)) + (1 << (20 - i)) - 1;
            let v4 = |a: u32| std::net::Ipv4Addr::from(a).to_string();
            cases.push((v4(last), port, TC_ACT_REDIRECT));
            cases.push((v4(last + 1), port, TC_ACT_SHOT));
            cases.push((v4(last), port + 100, TC_ACT_SHOT));
            let last6 = u128::from("fd00:ab::".parse::<std::net::Ipv6Addr>().unwrap())
                + (1u128 << (96 - i))
                - 1;
            let v6 = |a: u128| std::net::Ipv6Addr::from(a).to_string();
            cases.push((v6(last6), port, TC_ACT_REDIRECT));
            cases.push((v6(last6 + 1), port, TC_ACT_SHOT));
        }
        for (dst, dport, want) in cases {
            sport += 1; // a new flow each time: the rules judge, not the flow table
            let f = out(&dst, L4::Syn { sport, dport }).bytes();
            assert_eq!(h.run(POD_EGRESS, &f).0, want, "{step}: {dst} port {dport}");
        }
    };
    // The scenario's groups: /24, /32 and the server's /0 (v4); /64 and /128 (v6).
    let [(p4, trie4, _), (p6, trie6, _)] = peer_place(&h);
    assert_eq!(p4, Some(vec![32, 24, 0]), "few lengths: the hash");
    assert_eq!(p6, Some(vec![128, 64]));
    assert_eq!((trie4, trie6), (0, 0), "and the tries empty");
    check(&mut h, 0, "hash");

    let p = h.apply(&groups_with_lengths(9), &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    let [(p4, trie4, hash4), (p6, trie6, hash6)] = peer_place(&h);
    assert_eq!((p4, p6), (None, None), "12 and 11 lengths: the tries");
    assert_eq!((hash4, hash6), (0, 0), "the hashes emptied");
    assert!(trie4 > 9 && trie6 > 9);
    check(&mut h, 9, "trie");

    let p = h.apply(&groups_with_lengths(2), &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    let [(p4, trie4, _), (p6, trie6, _)] = peer_place(&h);
    assert_eq!(p4, Some(vec![32, 24, 13, 12, 0]), "back to the hash");
    assert_eq!(p6, Some(vec![128, 64, 33, 32]));
    assert_eq!((trie4, trie6), (0, 0), "the tries emptied");
    check(&mut h, 2, "hash again");
}
