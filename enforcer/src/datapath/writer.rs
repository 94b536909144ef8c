//! Writing a desired state into the maps: per table, upserts then removals, in an order
//! that keeps every packet's view consistent.
use std::collections::HashMap;
use std::hash::Hash;

use anyhow::Result;
use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use enforcer_common::map_names;

use crate::datapath::kernel::{Datapath, map_err, map_mut};
use crate::datapath::state::KernelState;

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

/// The write order. New rule entries go in under fresh ids before any pod points at
/// them; the pods' entries (each pod's policy id: its atomic flip) next; then what
/// nothing points at any more goes, pods first, rules last. An address points at an
/// interface's entry: written after it, removed before it.
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
enum Phase {
    Upsert,
    Remove,
}

/// One phase of bringing a map from `old` to `new`: upserts (new or changed entries)
/// or removals (entries `new` no longer has).
fn diff<K: Eq + Hash, V: PartialEq>(
    name: &str,
    old: &HashMap<K, V>,
    new: &HashMap<K, V>,
    phase: Phase,
    mut insert: impl FnMut(&K, &V) -> Result<(), aya::maps::MapError>,
    mut remove: impl FnMut(&K),
) -> Result<()> {
    match phase {
        Phase::Upsert => {
            for (k, v) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
                insert(k, v).map_err(|e| map_err(name, e))?;
            }
        }
        Phase::Remove => old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .for_each(&mut remove),
    }
    Ok(())
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
    let m = std::cell::RefCell::new(m);
    diff(
        name,
        old,
        new,
        phase,
        |k, v| m.borrow_mut().insert(k, v, 0),
        |k| {
            // Already gone is fine: removal is the goal.
            let _ = m.borrow_mut().remove(k);
        },
    )
}

/// LPM keys are (prefix length, key data).
fn diff_lpm<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    old: &HashMap<(u32, K), V>,
    new: &HashMap<(u32, K), V>,
    phase: Phase,
) -> Result<()> {
    let m: LpmTrie<&mut MapData, K, V> = map_mut(ebpf, name)?
        .try_into()
        .map_err(|e| map_err(name, e))?;
    let m = std::cell::RefCell::new(m);
    diff(
        name,
        old,
        new,
        phase,
        |(plen, k), v| m.borrow_mut().insert(&Key::new(*plen, *k), v, 0),
        |(plen, k)| {
            let _ = m.borrow_mut().remove(&Key::new(*plen, *k));
        },
    )
}

impl Datapath {
    /// Brings the maps from the current state to `new` in the order of [`ORDER`]: rule
    /// tables first, then the pods' policy ids (the atomic flip), then removal of
    /// whatever nothing refers to any more.
    pub fn apply(&mut self, new: KernelState) -> Result<()> {
        let old = std::mem::take(&mut self.current);
        let e = &mut self.ebpf;
        let r = ORDER.iter().try_for_each(|(table, phase)| {
            let p = *phase;
            match table {
                Table::PortRules => diff_lpm(e, map_names::PORT_RULES, &old.ports, &new.ports, p),
                Table::PeerV4 => diff_lpm(e, map_names::PEER_V4, &old.peers_v4, &new.peers_v4, p),
                Table::PeerV6 => diff_lpm(e, map_names::PEER_V6, &old.peers_v6, &new.peers_v6, p),
                Table::AlwaysV4 => {
                    diff_lpm(e, map_names::ALWAYS_V4, &old.always_v4, &new.always_v4, p)
                }
                Table::AlwaysV6 => {
                    diff_lpm(e, map_names::ALWAYS_V6, &old.always_v6, &new.always_v6, p)
                }
                Table::DestV4 => diff_lpm(e, map_names::DEST_V4, &old.dest_v4, &new.dest_v4, p),
                Table::DestV6 => diff_lpm(e, map_names::DEST_V6, &old.dest_v6, &new.dest_v6, p),
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
        match r {
            Ok(()) => {
                self.current = new;
                Ok(())
            }
            Err(e) => {
                // Partly written: next apply must rewrite everything it wants.
                self.current = KernelState::default();
                Err(e)
            }
        }
    }
}
