//! Security groups -> map entries whose lookup cost does not depend on the rule count.
//!
//! Rules only allow and combine by union (SPEC §3), so there is no precedence to keep:
//! - Stage A, per (policy, direction, family): an LPM over every distinct remote prefix.
//!   The value of prefix P names the *class* of rules whose prefix contains P. This is
//!   exact for longest-prefix match: the prefixes containing an address form a chain,
//!   so every rule covering the address also covers the longest such prefix.
//! - Stage B, per class: an LPM over (protocol, port prefix) built from each rule's port
//!   range split into aligned blocks; any hit means some rule of the class allows it.
//!
//! Each entry carries a cookie naming the group and rule that allowed, for attribution.
mod cookies;
mod flatten;
mod lpm;
mod reference;
mod untracked;

pub use cookies::{CookieTable, RuleRef};
pub use flatten::{CompileError, FlatRule, Peers, flatten, flatten_with};
pub use lpm::{Allow, ClassContent, CompiledPolicy, compile, port_blocks};
pub use reference::reference_verdict;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Quotas;
    use crate::model::group::SecurityGroup;
    use crate::model::group::{Direction, GroupCatalog, Peer, Protocol, Rule};
    use std::net::IpAddr;

    fn rule(proto: Protocol, from: Option<i32>, to: Option<i32>, peer: &str) -> Rule {
        let peer = if peer.starts_with("sg-") {
            Peer::Group(peer.into())
        } else if peer.starts_with("pl-") {
            Peer::PrefixList(peer.into())
        } else {
            Peer::Cidr(peer.parse().unwrap())
        };
        Rule {
            protocol: proto,
            from_port: from,
            to_port: to,
            peer,
            description: None,
        }
    }

    fn catalog(groups: Vec<SecurityGroup>) -> GroupCatalog {
        let mut c = GroupCatalog::default();
        for g in groups {
            c.groups.insert(g.id.clone(), std::sync::Arc::new(g));
        }
        c
    }

    fn sg(id: &str, inbound: Vec<Rule>, outbound: Vec<Rule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            inbound,
            outbound,
            tags: Default::default(),
        }
    }

    #[test]
    fn port_blocks_cover_exactly() {
        for (lo, hi) in [
            (0u16, 65535u16),
            (80, 80),
            (1, 65535),
            (1024, 2047),
            (53, 1000),
            (65535, 65535),
        ] {
            let blocks = port_blocks(lo, hi);
            assert!(blocks.len() <= 30, "{lo}-{hi}: {}", blocks.len());
            let covered: u32 = blocks.iter().map(|(_, p)| 1u32 << (16 - *p as u32)).sum();
            assert_eq!(covered, hi as u32 - lo as u32 + 1);
        }
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn union_across_overlapping_prefixes() {
        let c = catalog(vec![sg(
            "sg-1",
            vec![
                rule(Protocol::Tcp, Some(80), Some(80), "10.0.0.0/8"),
                rule(Protocol::Udp, Some(53), Some(53), "10.1.0.0/16"),
            ],
            vec![],
        )]);
        let rules = flatten(
            &["sg-1".into()],
            &c,
            &Quotas::default(),
            &mut CookieTable::default(),
        )
        .unwrap();
        let p = compile(&rules);
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        // The /16 is the longest match, yet the /8 rule still applies.
        assert!(p.lookup(Direction::Inbound, a, 6, 80).is_some());
        assert!(p.lookup(Direction::Inbound, a, 17, 53).is_some());
        assert!(
            p.lookup(Direction::Inbound, "10.2.0.1".parse().unwrap(), 17, 53)
                .is_none()
        );
        assert!(p.lookup(Direction::Outbound, a, 6, 80).is_none());
    }

    #[test]
    fn icmp_type_and_code() {
        let c = catalog(vec![sg(
            "sg-1",
            vec![
                rule(Protocol::Icmp, Some(8), Some(-1), "0.0.0.0/0"),
                rule(Protocol::Icmpv6, Some(128), Some(0), "::/0"),
            ],
            vec![],
        )]);
        let rules = flatten(
            &["sg-1".into()],
            &c,
            &Quotas::default(),
            &mut CookieTable::default(),
        )
        .unwrap();
        let p = compile(&rules);
        let v4: IpAddr = "1.2.3.4".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(p.lookup(Direction::Inbound, v4, 1, 8 << 8 | 3).is_some());
        assert!(p.lookup(Direction::Inbound, v4, 1, 0).is_none());
        assert!(p.lookup(Direction::Inbound, v6, 58, 128 << 8).is_some());
        assert!(p.lookup(Direction::Inbound, v6, 58, 128 << 8 | 1).is_none());
        // A v4 rule never matches v6 and vice versa.
        assert!(p.lookup(Direction::Inbound, v6, 1, 8 << 8).is_none());
    }

    #[test]
    fn referenced_groups_and_prefix_lists_expand() {
        let mut c = catalog(vec![sg(
            "sg-1",
            vec![
                rule(Protocol::All, None, None, "sg-1"),
                rule(Protocol::Tcp, Some(443), Some(443), "pl-1"),
            ],
            vec![],
        )]);
        c.members.insert(
            "sg-1".into(),
            vec!["10.0.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        );
        c.prefix_lists
            .insert("pl-1".into(), vec!["192.168.0.0/24".parse().unwrap()]);
        let rules = flatten(
            &["sg-1".into()],
            &c,
            &Quotas::default(),
            &mut CookieTable::default(),
        )
        .unwrap();
        let p = compile(&rules);
        assert!(
            p.lookup(Direction::Inbound, "10.0.1.5".parse().unwrap(), 17, 9)
                .is_some()
        );
        assert!(
            p.lookup(Direction::Inbound, "fd00::5".parse().unwrap(), 6, 1)
                .is_some()
        );
        assert!(
            p.lookup(Direction::Inbound, "10.0.1.6".parse().unwrap(), 17, 9)
                .is_none()
        );
        assert!(
            p.lookup(Direction::Inbound, "192.168.0.9".parse().unwrap(), 6, 443)
                .is_some()
        );
        let e = flatten(
            &["sg-1".into()],
            &GroupCatalog {
                prefix_lists: Default::default(),
                ..c
            },
            &Quotas::default(),
            &mut CookieTable::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("pl-1"), "{e}");
    }

    #[test]
    fn quotas_are_errors_not_truncation() {
        let many: Vec<Rule> = (0..61)
            .map(|i| rule(Protocol::Tcp, Some(i), Some(i), "10.0.0.0/8"))
            .collect();
        let c = catalog(vec![sg("sg-big", many, vec![])]);
        let e = flatten(
            &["sg-big".into()],
            &c,
            &Quotas::default(),
            &mut CookieTable::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                CompileError::GroupQuota {
                    count: 61,
                    limit: 60,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("sg-big"));
    }

    #[test]
    fn untracked_only_with_open_reverse_direction() {
        let c = catalog(vec![
            sg(
                "sg-open",
                vec![rule(Protocol::Tcp, Some(22), Some(22), "0.0.0.0/0")],
                vec![rule(Protocol::All, None, None, "0.0.0.0/0")],
            ),
            sg(
                "sg-narrow",
                vec![rule(Protocol::Tcp, Some(22), Some(22), "0.0.0.0/0")],
                vec![rule(Protocol::Tcp, Some(443), Some(443), "0.0.0.0/0")],
            ),
        ]);
        let q = Quotas::default();
        let open = flatten(&["sg-open".into()], &c, &q, &mut CookieTable::default()).unwrap();
        // Inbound 22 from 0/0 with outbound open to all: untracked. The outbound rule is
        // tracked, since inbound is not open to all traffic.
        assert!(
            open.iter()
                .any(|r| r.dir == Direction::Inbound && r.untracked),
            "{open:?}"
        );
        assert!(
            open.iter()
                .any(|r| r.dir == Direction::Outbound && !r.untracked),
            "{open:?}"
        );
        let narrow = flatten(&["sg-narrow".into()], &c, &q, &mut CookieTable::default()).unwrap();
        assert!(narrow.iter().all(|r| !r.untracked));
    }
}
