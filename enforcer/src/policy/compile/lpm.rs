//! Flat rules -> the two LPM stages (see the module comment of `compile`).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::flatten::{FlatRule, is_v4};
use crate::model::group::Direction;

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
    // The rules covering a prefix are those on one of its ancestors. Indexed by prefix,
    // with the prefix lengths in use per direction and family, finding them is a few
    // look-ups per prefix rather than a scan of every rule (which made a re-plan
    // quadratic in a pod's rule count).
    let mut by_net: HashMap<(Direction, IpNet), Vec<&FlatRule>> = HashMap::new();
    let mut lengths: BTreeMap<(Direction, bool), BTreeSet<u8>> = BTreeMap::new();
    for r in rules {
        by_net.entry((r.dir, r.net)).or_default().push(r);
        lengths
            .entry((r.dir, is_v4(&r.net)))
            .or_default()
            .insert(r.net.prefix_len());
    }
    let prefixes: BTreeSet<(Direction, IpNet)> = by_net.keys().copied().collect();
    for (dir, p) in prefixes {
        let mut class = ClassContent::default();
        let mut covering: Vec<&FlatRule> = Vec::new();
        for &len in &lengths[&(dir, is_v4(&p))] {
            if len > p.prefix_len() {
                break;
            }
            let ancestor = IpNet::new(p.addr(), len).expect("a shorter length").trunc();
            if let Some(on) = by_net.get(&(dir, ancestor)) {
                covering.extend(on);
            }
        }
        // The first rule in cookie order wins a shared block: attribution is
        // deterministic.
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
