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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Quotas;
use crate::model::group::{Direction, GroupCatalog, Peer, Protocol, Rule};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("security group {group}: {dir:?} rule {index}: {problem}")]
    BadRule {
        group: String,
        dir: Direction,
        index: usize,
        problem: String,
    },
    #[error(
        "security group {group}: {count} {dir:?} {family} rules exceed the quota of {limit} per group"
    )]
    GroupQuota {
        group: String,
        dir: Direction,
        family: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("{count} rules across the pod's groups exceed the quota of {limit} per pod")]
    PodQuota { count: usize, limit: usize },
}

/// Where a cookie points: one rule of one group.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RuleRef {
    pub group: String,
    pub direction: Direction,
    pub index: usize,
}

/// Cookie <-> rule. Cookies start at 1 (0 means "no rule") and are stable for the life
/// of the daemon, so a flow's cookie keeps naming its rule.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct CookieTable {
    #[serde(with = "crate::memory::pairs")]
    by_ref: HashMap<RuleRef, u32>,
    refs: Vec<RuleRef>,
}

impl CookieTable {
    pub fn cookie(&mut self, r: RuleRef) -> u32 {
        if let Some(c) = self.by_ref.get(&r) {
            return *c;
        }
        self.refs.push(r.clone());
        let c = self.refs.len() as u32;
        self.by_ref.insert(r, c);
        c
    }
    pub fn rule(&self, cookie: u32) -> Option<&RuleRef> {
        self.refs.get((cookie as usize).checked_sub(1)?)
    }
}

/// One rule with one concrete peer prefix: what both evaluators work on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlatRule {
    pub dir: Direction,
    pub net: IpNet,
    /// `None`: every protocol and port.
    pub proto: Option<u8>,
    /// Inclusive range of destination ports, or ICMP `type << 8 | code`.
    pub lo: u16,
    pub hi: u16,
    pub cookie: u32,
    /// EC2 untracked flow (SPEC §4): no state, so revoking the rule cuts the flow.
    pub untracked: bool,
}

fn port_range(rule: &Rule) -> Result<(Option<u8>, u16, u16), String> {
    let (from, to) = (rule.from_port, rule.to_port);
    match rule.protocol {
        Protocol::All => Ok((None, 0, 0xffff)),
        Protocol::Other(n) => Ok((Some(n), 0, 0xffff)),
        Protocol::Tcp | Protocol::Udp => {
            let n = rule.protocol.number();
            match (from, to) {
                (None, None) | (Some(-1), Some(-1)) | (Some(-1), None) => Ok((n, 0, 0xffff)),
                (Some(f), Some(t))
                    if (0..=65535).contains(&f) && (0..=65535).contains(&t) && f <= t =>
                {
                    Ok((n, f as u16, t as u16))
                }
                _ => Err(format!(
                    "port range {}..{} is not within 0..65535 with FromPort <= ToPort",
                    port_text(from),
                    port_text(to)
                )),
            }
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            let n = rule.protocol.number();
            let ty = from.unwrap_or(-1);
            let code = to.unwrap_or(-1);
            match (ty, code) {
                (-1, _) => Ok((n, 0, 0xffff)),
                (t, -1) if (0..=255).contains(&t) => {
                    Ok((n, (t as u16) << 8, ((t as u16) << 8) | 0xff))
                }
                (t, c) if (0..=255).contains(&t) && (0..=255).contains(&c) => {
                    let v = ((t as u16) << 8) | c as u16;
                    Ok((n, v, v))
                }
                _ => Err(format!("ICMP type {ty} / code {code} is not -1 or 0..255")),
            }
        }
    }
}

/// A port as EC2 shows it: the number, or "unset".
fn port_text(p: Option<i32>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "unset".into())
}

fn peer_nets(peer: &Peer, catalog: &GroupCatalog) -> Result<Vec<IpNet>, String> {
    Ok(match peer {
        Peer::Cidr(n) => vec![*n],
        Peer::PrefixList(id) => match catalog.prefix_lists.get(id) {
            Some(nets) => nets.clone(),
            None => {
                return Err(match catalog.invalid_prefix_lists.get(id) {
                    Some(why) => format!("prefix list {id} is unusable: {why}"),
                    None => {
                        format!("prefix list {id} is not known (no entries were provided for it)")
                    }
                });
            }
        },
        Peer::Group(g) => {
            let mut v: Vec<IpNet> = catalog
                .members
                .get(g)
                .map(|ips| ips.iter().map(|ip| IpNet::from(*ip)).collect())
                .unwrap_or_default();
            v.sort();
            v.dedup();
            v
        }
    })
}

fn is_v4(n: &IpNet) -> bool {
    matches!(n, IpNet::V4(_))
}

/// Expands a pod's groups into flat rules, enforcing the quotas (SPEC §3) with an error
/// rather than truncation.
pub fn flatten(
    groups: &[String],
    catalog: &GroupCatalog,
    quotas: &Quotas,
    cookies: &mut CookieTable,
) -> Result<Vec<FlatRule>, CompileError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for gid in groups {
        let Some(group) = catalog.groups.get(gid) else {
            continue; // the resolver reports unknown groups
        };
        for dir in [Direction::Inbound, Direction::Outbound] {
            let (mut n4, mut n6) = (0usize, 0usize);
            for (index, rule) in group.rules(dir).iter().enumerate() {
                let bad = |problem: String| CompileError::BadRule {
                    group: gid.clone(),
                    dir,
                    index,
                    problem,
                };
                let (proto, lo, hi) = port_range(rule).map_err(bad)?;
                let nets = peer_nets(&rule.peer, catalog).map_err(bad)?;
                match &rule.peer {
                    Peer::Group(_) => {
                        n4 += 1;
                        n6 += 1;
                        total += 1;
                    }
                    _ => {
                        for n in &nets {
                            if is_v4(n) { n4 += 1 } else { n6 += 1 }
                        }
                        total += nets.len();
                    }
                }
                let cookie = cookies.cookie(RuleRef {
                    group: gid.clone(),
                    direction: dir,
                    index,
                });
                for net in nets {
                    out.push(FlatRule {
                        dir,
                        net: net.trunc(),
                        proto,
                        lo,
                        hi,
                        cookie,
                        untracked: false,
                    });
                }
            }
            for (family, count) in [("IPv4", n4), ("IPv6", n6)] {
                if count > quotas.rules_per_group_per_family {
                    return Err(CompileError::GroupQuota {
                        group: gid.clone(),
                        dir,
                        family,
                        count,
                        limit: quotas.rules_per_group_per_family,
                    });
                }
            }
        }
    }
    if total > quotas.rules_per_pod {
        return Err(CompileError::PodQuota {
            count: total,
            limit: quotas.rules_per_pod,
        });
    }
    mark_untracked(&mut out);
    out.sort();
    out.dedup();
    Ok(out)
}

/// EC2: a TCP/UDP flow allowed by a rule for 0.0.0.0/0 (or ::/0), when the other
/// direction allows all traffic for all ports from/to 0/0 too, is not tracked.
fn mark_untracked(rules: &mut [FlatRule]) {
    let open: BTreeSet<(Direction, bool, Option<u8>)> = rules
        .iter()
        .filter(|r| r.net.prefix_len() == 0 && r.lo == 0 && r.hi == 0xffff)
        .map(|r| (r.dir, is_v4(&r.net), r.proto))
        .collect();
    for r in rules.iter_mut() {
        if r.net.prefix_len() != 0 || !matches!(r.proto, None | Some(6) | Some(17)) {
            continue;
        }
        let back = r.dir.reverse();
        let v4 = is_v4(&r.net);
        r.untracked = open.contains(&(back, v4, None)) || open.contains(&(back, v4, r.proto));
    }
}

/// The obviously-correct evaluator: a loop over every rule.
pub fn reference_verdict(
    rules: &[FlatRule],
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    rules.iter().any(|r| {
        r.dir == dir
            && r.net.contains(&remote)
            && match r.proto {
                None => true,
                Some(p) => p == proto && (r.lo..=r.hi).contains(&port),
            }
    })
}

/// A verdict's reason: which rule, and whether it is tracked.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Allow {
    pub cookie: u32,
    pub untracked: bool,
}

/// Stage B content of one class. Content-addressed: equal contents share a class id.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ClassContent {
    /// A rule covering every protocol and port.
    pub all: Option<Allow>,
    /// (protocol, port block start, block prefix length) -> rule.
    #[serde(with = "crate::memory::pairs")]
    pub ports: BTreeMap<(u8, u16, u8), Allow>,
}

/// Stage A content of a compiled policy: (direction, remote prefix) -> class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub peers: BTreeMap<(Direction, IpNet), ClassContent>,
    pub rule_count: usize,
    pub inbound_rules: usize,
    pub outbound_rules: usize,
}

/// Splits an inclusive 16-bit range into aligned prefix blocks (at most 30).
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (lo as u32, hi as u32);
    let mut out = Vec::new();
    while lo <= hi {
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

pub fn compile(rules: &[FlatRule]) -> CompiledPolicy {
    let mut peers = BTreeMap::new();
    let prefixes: BTreeSet<(Direction, IpNet)> = rules.iter().map(|r| (r.dir, r.net)).collect();
    for (dir, p) in prefixes {
        let mut class = ClassContent::default();
        // Rules are sorted by cookie within equal keys' insertion, so the first rule in
        // cookie order wins a shared block: attribution is deterministic.
        let mut covering: Vec<&FlatRule> = rules
            .iter()
            .filter(|r| r.dir == dir && r.net.contains(&p))
            .collect();
        covering.sort_by_key(|r| r.cookie);
        for r in covering {
            let allow = Allow {
                cookie: r.cookie,
                untracked: r.untracked,
            };
            match r.proto {
                None => {
                    class.all.get_or_insert(allow);
                }
                Some(proto) => {
                    for (start, plen) in port_blocks(r.lo, r.hi) {
                        class.ports.entry((proto, start, plen)).or_insert(allow);
                    }
                }
            }
        }
        if class.all.is_some() {
            class.ports.clear();
        }
        peers.insert((dir, p), class);
    }
    let count = |d| {
        rules
            .iter()
            .filter(|r| r.dir == d)
            .map(|r| r.cookie)
            .collect::<BTreeSet<_>>()
            .len()
    };
    CompiledPolicy {
        peers,
        rule_count: rules.len(),
        inbound_rules: count(Direction::Inbound),
        outbound_rules: count(Direction::Outbound),
    }
}

impl CompiledPolicy {
    /// The compiled form's verdict, with longest-prefix-match semantics exactly as the
    /// kernel's LPM tries apply them.
    pub fn lookup(&self, dir: Direction, remote: IpAddr, proto: u8, port: u16) -> Option<Allow> {
        let class = self
            .peers
            .iter()
            .filter(|((d, n), _)| *d == dir && n.contains(&remote))
            .max_by_key(|((_, n), _)| n.prefix_len())
            .map(|(_, c)| c)?;
        if let Some(a) = class.all {
            return Some(a);
        }
        class
            .ports
            .iter()
            .filter(|((p, start, plen), _)| {
                let mask: u16 = if *plen == 0 {
                    0
                } else {
                    u16::MAX << (16 - *plen)
                };
                *p == proto && port & mask == *start
            })
            .max_by_key(|((_, _, plen), _)| *plen)
            .map(|(_, a)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::group::SecurityGroup;

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
            c.groups.insert(g.id.clone(), g);
        }
        c
    }

    fn sg(id: &str, inbound: Vec<Rule>, outbound: Vec<Rule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            inbound,
            outbound,
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
