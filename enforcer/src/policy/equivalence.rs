//! Property: the compiled two-stage tables give the same verdict as the reference loop
//! over the rules, on random rule sets and random packets.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::compile::{FlatRule, compile, reference_verdict};
use crate::model::group::Direction;

// Small address and port spaces so that random packets actually hit random rules.
fn v4() -> impl Strategy<Value = Ipv4Addr> {
    (0u8..4, 0u8..4).prop_map(|(a, b)| Ipv4Addr::new(10, a, 0, b))
}
fn v6() -> impl Strategy<Value = Ipv6Addr> {
    (0u16..4, 0u16..4).prop_map(|(a, b)| Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, b))
}
fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![v4().prop_map(IpAddr::V4), v6().prop_map(IpAddr::V6)]
}
fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (
            v4(),
            prop_oneof![Just(0u8), Just(8), Just(16), Just(24), Just(30), Just(32)]
        )
            .prop_map(|(a, l)| IpNet::new(IpAddr::V4(a), l).unwrap().trunc()),
        (
            v6(),
            prop_oneof![
                Just(0u8),
                Just(16),
                Just(32),
                Just(112),
                Just(127),
                Just(128)
            ]
        )
            .prop_map(|(a, l)| IpNet::new(IpAddr::V6(a), l).unwrap().trunc()),
    ]
}
fn dir() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Inbound), Just(Direction::Outbound)]
}
fn proto() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![
        Just(None),
        Just(Some(6)),
        Just(Some(17)),
        Just(Some(1)),
        Just(Some(58)),
        Just(Some(47))
    ]
}
fn port() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..40, 65500u16..=65535, any::<u16>()]
}
fn rule() -> impl Strategy<Value = FlatRule> {
    (dir(), net(), proto(), port(), port(), 1u32..50).prop_map(|(dir, net, proto, a, b, cookie)| {
        let (lo, hi) = if proto.is_none() {
            (0, 0xffff)
        } else {
            (a.min(b), a.max(b))
        };
        FlatRule {
            dir,
            net,
            proto,
            lo,
            hi,
            cookie,
            untracked: false,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_matches_reference(
        rules in proptest::collection::vec(rule(), 0..40),
        packets in proptest::collection::vec((dir(), addr(), prop_oneof![Just(6u8), Just(17), Just(1), Just(58), Just(47)], port()), 1..60),
    ) {
        let compiled = compile(&rules);
        for (d, a, p, port) in packets {
            let want = reference_verdict(&rules, d, a, p, port);
            let got = compiled.lookup(d, a, p, port);
            prop_assert_eq!(want, got.is_some(), "dir {:?} addr {} proto {} port {}", d, a, p, port);
            if let Some(allow) = got {
                // Attribution names a rule that really allows the packet.
                let r: Vec<_> = rules.iter().filter(|r| r.cookie == allow.cookie).cloned().collect();
                prop_assert!(reference_verdict(&r, d, a, p, port));
            }
        }
    }
}
