//! Writing a desired state into the maps: per table, upserts then removals, in an order
//! that keeps every packet's view consistent.
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use anyhow::Result;
use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use enforcer_common::map_names;

use crate::datapath::kernel::{Datapath, map_err, map_mut};
use crate::datapath::peers;
use crate::datapath::state::KernelState;
use crate::plan::desired::Touched;

/// The tables the daemon writes.
#[derive(Clone, Copy, Debug)]
enum Table {
    PortRules,
    PeerV4,
    PeerV6,
    AlwaysV4,
    AlwaysV6,
    DestV4,
    DestV6,
    PodByVlan,
    PodByIfindex,
    PodByIpv4,
    PodByIpv6,
}

/// The write order. New classes' port entries go in before any peer entry points at
/// them, and a new group list's peer entries before any pod points at its id; the
/// pods' entries (each pod's policy id: its atomic flip) next; then what nothing points
/// at any more goes, pods first, rules last. Within a peer table, see [`lpm_changes`].
/// An address points at an interface's entry: written after it, removed before it.
const ORDER: [(Table, Phase); 22] = [
    (Table::PortRules, Phase::Upsert),
    (Table::PeerV4, Phase::Upsert),
    (Table::PeerV6, Phase::Upsert),
    (Table::AlwaysV4, Phase::Upsert),
    (Table::AlwaysV6, Phase::Upsert),
    (Table::DestV4, Phase::Upsert),
    (Table::DestV6, Phase::Upsert),
    (Table::PodByVlan, Phase::Upsert),
    (Table::PodByIfindex, Phase::Upsert),
    (Table::PodByIpv4, Phase::Upsert),
    (Table::PodByIpv6, Phase::Upsert),
    (Table::PodByIpv4, Phase::Remove),
    (Table::PodByIpv6, Phase::Remove),
    (Table::PodByVlan, Phase::Remove),
    (Table::PodByIfindex, Phase::Remove),
    (Table::AlwaysV4, Phase::Remove),
    (Table::AlwaysV6, Phase::Remove),
    (Table::DestV4, Phase::Remove),
    (Table::DestV6, Phase::Remove),
    (Table::PeerV4, Phase::Remove),
    (Table::PeerV6, Phase::Remove),
    (Table::PortRules, Phase::Remove),
];

#[derive(Clone, Copy)]
pub(super) enum Phase {
    Upsert,
    Remove,
}

/// The keys one phase writes or removes: upserts (new or changed entries) or removals
/// (entries `new` no longer has), among `keys` when given (the keys that may differ),
/// else among all.
pub(super) fn changes<'a, K: Eq + Hash, V: PartialEq>(
    old: &'a HashMap<K, V>,
    new: &'a HashMap<K, V>,
    keys: Option<&'a HashSet<K>>,
    phase: Phase,
) -> Vec<&'a K> {
    let candidates: Box<dyn Iterator<Item = &'a K>> = match (phase, keys) {
        (_, Some(keys)) => Box::new(keys.iter()),
        (Phase::Upsert, None) => Box::new(new.keys()),
        (Phase::Remove, None) => Box::new(old.keys()),
    };
    candidates
        .filter(|k| match phase {
            Phase::Upsert => new.get(*k).is_some_and(|v| old.get(*k) != Some(v)),
            Phase::Remove => old.contains_key(*k) && !new.contains_key(*k),
        })
        .collect()
}

fn diff_hash<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    old: &HashMap<K, V>,
    new: &HashMap<K, V>,
    phase: Phase,
) -> Result<()> {
    let m: BpfHashMap<&mut MapData, K, V> = map_mut(ebpf, name)?
        .try_into()
        .map_err(|e| map_err(name, e))?;
    let mut m = m;
    for k in changes(old, new, None, phase) {
        match phase {
            Phase::Upsert => m.insert(k, new[k], 0).map_err(|e| map_err(name, e))?,
            Phase::Remove => {
                // Already gone is fine: removal is the goal.
                let _ = m.remove(k);
            }
        }
    }
    Ok(())
}

/// [`changes`] of an LPM table in the order they must reach the kernel: upserts longest
/// prefix first, removals shortest first. The table then holds the old prefixes and
/// the new ones until the removals, and a prefix's new value is written only once every
/// longer new prefix is in, so the longest match of any address is always its longest
/// match under the old entries (with the old value) or under the new ones (with the
/// new value): a packet never sees a mix.
pub(super) fn lpm_changes<'a, K: Eq + Hash, V: PartialEq>(
    old: &'a HashMap<(u32, K), V>,
    new: &'a HashMap<(u32, K), V>,
    keys: Option<&'a HashSet<(u32, K)>>,
    phase: Phase,
) -> Vec<&'a (u32, K)> {
    let mut todo = changes(old, new, keys, phase);
    match phase {
        Phase::Upsert => todo.sort_by_key(|(plen, _)| std::cmp::Reverse(*plen)),
        Phase::Remove => todo.sort_by_key(|(plen, _)| *plen),
    }
    todo
}

/// LPM keys are (prefix length, key data).
fn diff_lpm<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    old: &HashMap<(u32, K), V>,
    new: &HashMap<(u32, K), V>,
    keys: Option<&HashSet<(u32, K)>>,
    phase: Phase,
) -> Result<()> {
    let m: LpmTrie<&mut MapData, K, V> = map_mut(ebpf, name)?
        .try_into()
        .map_err(|e| map_err(name, e))?;
    let mut m = m;
    for key in lpm_changes(old, new, keys, phase) {
        let (plen, k) = key;
        match phase {
            Phase::Upsert => m
                .insert(&Key::new(*plen, *k), new[key], 0)
                .map_err(|e| map_err(name, e))?,
            Phase::Remove => {
                let _ = m.remove(&Key::new(*plen, *k));
            }
        }
    }
    Ok(())
}

/// `current` brought to `new` at `keys`.
fn sync_keys<K: Eq + Hash + Copy, V: Copy>(
    current: &mut HashMap<K, V>,
    new: &HashMap<K, V>,
    keys: &HashSet<K>,
) {
    for k in keys {
        match new.get(k) {
            Some(v) => current.insert(*k, *v),
            None => current.remove(k),
        };
    }
}

impl Datapath {
    /// Brings the maps from the current state to `new` in the order of [`ORDER`]: rule
    /// tables first, then the pods' policy ids (the atomic flip), then removal of
    /// whatever nothing refers to any more. The rule tables are compared at the keys
    /// `touched` names only, unless it says all; the small tables always whole.
    pub fn apply(&mut self, new: &KernelState, touched: &Touched) -> Result<()> {
        let old = &self.current;
        let e = &mut self.ebpf;
        let (t4, t6, tp) = match touched.all {
            true => (None, None, None),
            false => (
                Some(&touched.peers_v4),
                Some(&touched.peers_v6),
                Some(&touched.ports),
            ),
        };
        let lens = [
            self.lens[0].next(&old.peers_v4, &new.peers_v4, t4),
            self.lens[1].next(&old.peers_v6, &new.peers_v6, t6),
        ];
        let (w4, w6) = (lens[0].place(), lens[1].place());
        let r = ORDER.iter().try_for_each(|(table, phase)| {
            let p = *phase;
            match table {
                Table::PortRules => peers::diff_ports(e, &old.ports, &new.ports, tp, p),
                Table::PeerV4 => peers::diff_peers(e, &old.peers_v4, &new.peers_v4, t4, p, &w4),
                Table::PeerV6 => peers::diff_peers(e, &old.peers_v6, &new.peers_v6, t6, p, &w6),
                Table::AlwaysV4 => diff_lpm(
                    e,
                    map_names::ALWAYS_V4,
                    &old.always_v4,
                    &new.always_v4,
                    None,
                    p,
                ),
                Table::AlwaysV6 => diff_lpm(
                    e,
                    map_names::ALWAYS_V6,
                    &old.always_v6,
                    &new.always_v6,
                    None,
                    p,
                ),
                Table::DestV4 => {
                    diff_lpm(e, map_names::DEST_V4, &old.dest_v4, &new.dest_v4, None, p)
                }
                Table::DestV6 => {
                    diff_lpm(e, map_names::DEST_V6, &old.dest_v6, &new.dest_v6, None, p)
                }
                Table::PodByVlan => diff_hash(
                    e,
                    map_names::POD_BY_VLAN,
                    &old.pods_by_vlan,
                    &new.pods_by_vlan,
                    p,
                ),
                Table::PodByIfindex => diff_hash(
                    e,
                    map_names::POD_BY_IFINDEX,
                    &old.pods_by_ifindex,
                    &new.pods_by_ifindex,
                    p,
                ),
                Table::PodByIpv4 => diff_hash(
                    e,
                    map_names::POD_BY_IPV4,
                    &old.pods_by_ipv4,
                    &new.pods_by_ipv4,
                    p,
                ),
                Table::PodByIpv6 => diff_hash(
                    e,
                    map_names::POD_BY_IPV6,
                    &old.pods_by_ipv6,
                    &new.pods_by_ipv6,
                    p,
                ),
            }
        });
        // Also after a partial write: what was written must not be hidden by copies.
        let epoch = self.new_cache_epoch();
        if let Err(e) = r {
            // Partly written: the next apply must rewrite everything it wants.
            self.current = KernelState::default();
            self.lens = Default::default();
            return Err(e);
        }
        epoch?;
        self.lens = lens;
        if touched.all {
            self.current = new.clone();
            return Ok(());
        }
        let c = &mut self.current;
        sync_keys(&mut c.peers_v4, &new.peers_v4, &touched.peers_v4);
        sync_keys(&mut c.peers_v6, &new.peers_v6, &touched.peers_v6);
        sync_keys(&mut c.ports, &new.ports, &touched.ports);
        c.always_v4.clone_from(&new.always_v4);
        c.always_v6.clone_from(&new.always_v6);
        c.dest_v4.clone_from(&new.dest_v4);
        c.dest_v6.clone_from(&new.dest_v6);
        c.pods_by_vlan.clone_from(&new.pods_by_vlan);
        c.pods_by_ifindex.clone_from(&new.pods_by_ifindex);
        c.pods_by_ipv4.clone_from(&new.pods_by_ipv4);
        c.pods_by_ipv6.clone_from(&new.pods_by_ipv6);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::state::{Ids, PolicyEntries};
    use crate::model::group::Direction;
    use crate::policy::compile::{FlatRule, compile};
    use enforcer_common::{PEER_SCOPE_BITS, PeerClass, PeerKeyV4};
    use proptest::prelude::*;

    type Table = HashMap<(u32, PeerKeyV4), PeerClass>;

    /// Prefixes of a small space, so that they nest often.
    fn rule() -> impl Strategy<Value = FlatRule> {
        (
            0u32..8,
            prop_oneof![Just(8u8), Just(16), Just(24), Just(32)],
            prop_oneof![Just(80u16), Just(443)],
        )
            .prop_map(|(bits, plen, port)| FlatRule {
                dir: Direction::Inbound,
                net: ipnet::IpNet::new(addr(bits).into(), plen).unwrap().trunc(),
                proto: Some(6),
                lo: port,
                hi: port,
                cookie: port as u32,
                untracked: false,
            })
    }

    /// 10.a.b.c with a, b, c each 0 or 1.
    fn addr(bits: u32) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(
            10,
            (bits >> 2 & 1) as u8,
            (bits >> 1 & 1) as u8,
            (bits & 1) as u8,
        )
    }

    /// The class of the longest prefix holding `a`, as the kernel's LPM finds it.
    fn lookup(t: &Table, a: std::net::Ipv4Addr) -> Option<u32> {
        t.iter()
            .filter(|((plen, k), _)| {
                let bits = plen - PEER_SCOPE_BITS;
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from_be_bytes(k.addr) & mask == u32::from(a) & mask
            })
            .max_by_key(|((plen, _), _)| *plen)
            .map(|(_, c)| c.class_id)
    }

    fn table(ids: &mut Ids, rules: &[FlatRule]) -> Table {
        PolicyEntries::of(ids, 1, &compile(rules))
            .v4
            .into_iter()
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// One policy's rules changed in place, step by step as the writer goes: at
        /// every step every address finds its old class or its new one.
        #[test]
        fn a_packet_sees_the_old_rules_or_the_new_never_a_mix(
            before in proptest::collection::vec(rule(), 0..10),
            after in proptest::collection::vec(rule(), 0..10),
        ) {
            let mut ids = Ids::default();
            let (old, new) = (table(&mut ids, &before), table(&mut ids, &after));
            let mut t = old.clone();
            let check = |t: &Table| {
                for a in (0..8).map(addr).chain([std::net::Ipv4Addr::new(11, 0, 0, 0)]) {
                    let got = lookup(t, a);
                    prop_assert!(got == lookup(&old, a) || got == lookup(&new, a), "{a}");
                }
                Ok(())
            };
            for k in lpm_changes(&old, &new, None, Phase::Upsert) {
                t.insert(*k, new[k]);
                check(&t)?;
            }
            for k in lpm_changes(&old, &new, None, Phase::Remove) {
                t.remove(k);
                check(&t)?;
            }
            prop_assert_eq!(t, new);
        }
    }
}
