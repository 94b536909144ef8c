//! Where the rule tables' entries live in the kernel. Stage A (peer prefixes) of a
//! family is either a hash per prefix length in use, which the programs try longest
//! first (`PEER_HASH_V4`/`_V6`, lengths in `PEER_LENS`), or the LPM trie (`PEER_V4`/
//! `_V6`) when the family uses more lengths than it pays to try: a trie's cost grows
//! with its number of prefixes, the hash's with the number of lengths. Stage B keeps
//! single ports in a hash (`PORT_EXACT`: the longest prefix there is, so a hit ends the
//! search) ahead of the trie, which holds ranges, "all ports" and ICMP types.
//!
//! The daemon's tables stay one logical LPM table each (`KernelState`); this module
//! places them. Every step keeps a packet's view the one the LPM table would give at
//! the same step of [`super::writer`]'s order:
//! - hash to hash: before any entry goes in, `PEER_LENS` lists the old lengths and the
//!   new (a listed length without entries only misses); after the removals, the new;
//! - hash to trie: the trie gets the old entries and the new, then `PEER_LENS` flips to
//!   it (the state a trie-to-trie change has before its removals), then the removals;
//! - trie to hash: the trie changes as trie to trie until the pods have flipped, then
//!   the hash gets the new entries, `PEER_LENS` flips to it, and the trie is emptied.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use anyhow::Result;
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use enforcer_common::*;

use crate::datapath::kernel::{map_err, map_mut, map_ref};
use crate::datapath::writer::{Phase, changes, lpm_changes};

/// A family's peer key: the trie's and the hash's forms, and their maps.
pub(super) trait PeerFamily: Pod + Eq + Hash {
    type Hashed: Pod + Eq + Hash;
    const TRIE: &'static str;
    const HASH: &'static str;
    /// Its entry in `PEER_LENS`.
    const INDEX: u32;
    fn hashed(plen: u32, k: &Self) -> Self::Hashed;
    fn unhashed(h: &Self::Hashed) -> (u32, Self);
    /// The key with its address cut to its first `len` bits.
    fn masked(&self, len: u32) -> Self;
}

/// Zeroes the bits of `a` past the first `len`.
fn mask(a: &mut [u8], len: u32) {
    for (i, b) in a.iter_mut().enumerate() {
        let keep = len.saturating_sub(8 * i as u32).min(8);
        *b &= !(0xffu16 >> keep) as u8;
    }
}

/// The two families differ only in their key types, maps and `PEER_LENS` entry.
macro_rules! peer_family {
    ($key:ident, $hashed:ident, $trie:ident, $hash:ident, $index:ident) => {
        impl PeerFamily for $key {
            type Hashed = $hashed;
            const TRIE: &'static str = map_names::$trie;
            const HASH: &'static str = map_names::$hash;
            const INDEX: u32 = $index;
            fn hashed(plen: u32, k: &Self) -> $hashed {
                $hashed {
                    scope: k.scope,
                    len: plen - PEER_SCOPE_BITS,
                    addr: k.addr,
                }
            }
            fn unhashed(h: &$hashed) -> (u32, Self) {
                let k = $key {
                    scope: h.scope,
                    addr: h.addr,
                };
                (PEER_SCOPE_BITS + h.len, k)
            }
            fn masked(&self, len: u32) -> Self {
                let mut k = *self;
                mask(&mut k.addr, len);
                k
            }
        }
    };
}
peer_family!(
    PeerKeyV4,
    PeerHashKeyV4,
    PEER_V4,
    PEER_HASH_V4,
    PEER_LENS_V4
);
peer_family!(
    PeerKeyV6,
    PeerHashKeyV6,
    PEER_V6,
    PEER_HASH_V6,
    PEER_LENS_V6
);

type Table<K> = HashMap<(u32, K), PeerClass>;

/// Where a family's peers are: the hash under these lengths (longest first), or the trie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Hash(Vec<u8>),
    Trie,
}

impl Place {
    fn from_kernel(l: &PeerLens) -> Place {
        if l.count == PEER_LENS_TRIE {
            return Place::Trie;
        }
        let n = (l.count as usize).min(PEER_LENS_SLOTS);
        Place::Hash(l.lens[..n].to_vec())
    }

    fn to_kernel(&self) -> PeerLens {
        match self {
            Place::Trie => PeerLens::trie(),
            Place::Hash(lens) => PeerLens::hashed(lens),
        }
    }
}

/// How many prefixes of each length (0..=128) a family's table holds: where its
/// entries go, kept up to date from the keys an apply touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LenCounts([u32; 129]);

impl Default for LenCounts {
    fn default() -> LenCounts {
        LenCounts([0; 129])
    }
}

impl LenCounts {
    pub fn of<K>(t: &Table<K>) -> LenCounts {
        let mut c = LenCounts::default();
        for (plen, _) in t.keys() {
            c.0[len_of(*plen)] += 1;
        }
        c
    }

    /// These counts (of `old`) brought to `new`: at `keys` only, when given.
    pub fn next<K: Eq + Hash>(
        &self,
        old: &Table<K>,
        new: &Table<K>,
        keys: Option<&HashSet<(u32, K)>>,
    ) -> LenCounts {
        let Some(keys) = keys else {
            return LenCounts::of(new);
        };
        let mut c = self.clone();
        for k in keys {
            let l = len_of(k.0);
            if old.contains_key(k) {
                c.0[l] = c.0[l].saturating_sub(1);
            }
            if new.contains_key(k) {
                c.0[l] += 1;
            }
        }
        c
    }

    /// Where the entries belong: the hash unless they use too many lengths.
    pub fn place(&self) -> Place {
        let lens: Vec<u8> = (0..=128u8)
            .rev()
            .filter(|l| self.0[*l as usize] > 0)
            .collect();
        match lens.len() <= PEER_HASH_MAX_LENS {
            true => Place::Hash(lens),
            false => Place::Trie,
        }
    }
}

/// A peer key's prefix length without the scope's bits.
fn len_of(plen: u32) -> usize {
    plen.saturating_sub(PEER_SCOPE_BITS).min(128) as usize
}

/// The lengths of both lists, longest first, if they fit `PEER_LENS`.
fn union(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let all: BTreeSet<u8> = a.iter().chain(b).copied().collect();
    (all.len() <= PEER_LENS_SLOTS).then(|| all.into_iter().rev().collect())
}

/// Where the kernel's programs look for this family's peers now.
pub(super) fn place_in_kernel<K: PeerFamily>(ebpf: &Ebpf) -> Result<Place> {
    let m: Array<&MapData, PeerLens> = map_ref(ebpf, map_names::PEER_LENS)?.try_into()?;
    let l = m
        .get(&K::INDEX, 0)
        .map_err(|e| map_err(map_names::PEER_LENS, e))?;
    Ok(Place::from_kernel(&l))
}

fn set_place<K: PeerFamily>(ebpf: &mut Ebpf, p: &Place) -> Result<()> {
    let name = map_names::PEER_LENS;
    let mut m: Array<&mut MapData, PeerLens> = map_mut(ebpf, name)?.try_into()?;
    m.set(K::INDEX, p.to_kernel(), 0)
        .map_err(|e| map_err(name, e))
}

fn hash_map<K: PeerFamily>(
    ebpf: &mut Ebpf,
) -> Result<BpfHashMap<&mut MapData, K::Hashed, PeerClass>> {
    map_mut(ebpf, K::HASH)?
        .try_into()
        .map_err(|e| map_err(K::HASH, e))
}

fn trie_map<K: PeerFamily>(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, K, PeerClass>> {
    map_mut(ebpf, K::TRIE)?
        .try_into()
        .map_err(|e| map_err(K::TRIE, e))
}

/// Writes `entries` (in the order given) into the hash, or removes them.
fn hash_write<K: PeerFamily>(
    ebpf: &mut Ebpf,
    entries: &[&(u32, K)],
    values: &Table<K>,
    phase: Phase,
) -> Result<()> {
    let mut m = hash_map::<K>(ebpf)?;
    for (plen, k) in entries {
        let hk = K::hashed(*plen, k);
        match phase {
            Phase::Upsert => m
                .insert(hk, values[&(*plen, *k)], 0)
                .map_err(|e| map_err(K::HASH, e))?,
            Phase::Remove => {
                // Already gone is fine: removal is the goal.
                let _ = m.remove(&hk);
            }
        }
    }
    Ok(())
}

/// The same for the trie.
fn trie_write<K: PeerFamily>(
    ebpf: &mut Ebpf,
    entries: &[&(u32, K)],
    values: &Table<K>,
    phase: Phase,
) -> Result<()> {
    let mut m = trie_map::<K>(ebpf)?;
    for (plen, k) in entries {
        let key = Key::new(*plen, *k);
        match phase {
            Phase::Upsert => m
                .insert(&key, values[&(*plen, *k)], 0)
                .map_err(|e| map_err(K::TRIE, e))?,
            Phase::Remove => {
                let _ = m.remove(&key);
            }
        }
    }
    Ok(())
}

/// Removes from the hash every entry whose key `keep` does not hold (nothing should be
/// there but what the daemon wrote; this also clears what a failed write left).
fn hash_clear<K: PeerFamily>(ebpf: &mut Ebpf, keep: &Table<K>) -> Result<()> {
    let mut m = hash_map::<K>(ebpf)?;
    let stale: Vec<K::Hashed> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|h| !keep.contains_key(&K::unhashed(h)))
        .collect();
    for h in stale {
        let _ = m.remove(&h);
    }
    Ok(())
}

fn trie_clear<K: PeerFamily>(ebpf: &mut Ebpf, keep: &Table<K>) -> Result<()> {
    let mut m = trie_map::<K>(ebpf)?;
    let stale: Vec<Key<K>> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !keep.contains_key(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// One phase of bringing a family's peers from `old` to `new` (see the module comment).
/// `wanted` is where `new`'s entries belong ([`LenCounts::place`]).
pub(super) fn diff_peers<K: PeerFamily>(
    ebpf: &mut Ebpf,
    old: &Table<K>,
    new: &Table<K>,
    keys: Option<&HashSet<(u32, K)>>,
    phase: Phase,
    wanted: &Place,
) -> Result<()> {
    let now = place_in_kernel::<K>(ebpf)?;
    match (phase, &now, wanted) {
        (Phase::Upsert, Place::Hash(l), Place::Hash(n)) => match union(l, n) {
            Some(both) => {
                if both != *l {
                    set_place::<K>(ebpf, &Place::Hash(both))?;
                }
                let todo = lpm_changes(old, new, keys, phase);
                hash_write(ebpf, &todo, new, phase)
            }
            // Only after a failed write left more lengths listed than the new ones
            // would add to: through the trie, back to the hash on a later change.
            None => hash_to_trie(ebpf, old, new),
        },
        (Phase::Upsert, Place::Hash(_), Place::Trie) => hash_to_trie(ebpf, old, new),
        (Phase::Upsert, Place::Trie, _) => {
            let todo = lpm_changes(old, new, keys, phase);
            trie_write(ebpf, &todo, new, phase)
        }
        (Phase::Remove, Place::Hash(_), Place::Hash(n)) => {
            let todo = lpm_changes(old, new, keys, phase);
            hash_write(ebpf, &todo, old, phase)?;
            set_place::<K>(ebpf, &Place::Hash(n.clone()))
        }
        (Phase::Remove, Place::Hash(_), Place::Trie) => {
            // The upsert phase failed to flip: the apply stopped there already.
            hash_to_trie(ebpf, old, new)?;
            diff_peers(ebpf, old, new, None, phase, wanted)
        }
        (Phase::Remove, Place::Trie, Place::Trie) => {
            let todo = lpm_changes(old, new, keys, phase);
            trie_write(ebpf, &todo, old, phase)?;
            // What the hash held before a flip to the trie.
            hash_clear::<K>(ebpf, &Table::new())
        }
        (Phase::Remove, Place::Trie, Place::Hash(_)) => {
            hash_clear(ebpf, new)?;
            let none = Table::new();
            let all = changes(&none, new, None, Phase::Upsert);
            hash_write(ebpf, &all, new, Phase::Upsert)?;
            set_place::<K>(ebpf, wanted)?;
            trie_clear::<K>(ebpf, &Table::new())
        }
    }
}

/// The trie gets the old entries and the new (new values win), then becomes the place.
fn hash_to_trie<K: PeerFamily>(ebpf: &mut Ebpf, old: &Table<K>, new: &Table<K>) -> Result<()> {
    let mut both: Table<K> = old.clone();
    both.extend(new.iter().map(|(k, v)| (*k, *v)));
    trie_clear(ebpf, &both)?;
    let none = Table::new();
    let all = lpm_changes(&none, &both, None, Phase::Upsert);
    trie_write(ebpf, &all, &both, Phase::Upsert)?;
    set_place::<K>(ebpf, &Place::Trie)
}

/// A family's peers as the kernel holds them, from wherever they are.
pub(super) fn read_peers<K: PeerFamily>(ebpf: &Ebpf) -> Result<Table<K>> {
    match place_in_kernel::<K>(ebpf)? {
        Place::Trie => {
            let m: LpmTrie<&MapData, K, PeerClass> = map_ref(ebpf, K::TRIE)?.try_into()?;
            m.iter()
                .map(|r| {
                    let (k, v) = r.map_err(|e| map_err(K::TRIE, e))?;
                    Ok(((k.prefix_len(), k.data()), v))
                })
                .collect()
        }
        Place::Hash(_) => {
            let m: BpfHashMap<&MapData, K::Hashed, PeerClass> =
                map_ref(ebpf, K::HASH)?.try_into()?;
            m.iter()
                .map(|r| {
                    let (h, v) = r.map_err(|e| map_err(K::HASH, e))?;
                    Ok((K::unhashed(&h), v))
                })
                .collect()
        }
    }
}

/// The class the programs find for `addr` (a full-length key) under `scope`, looked up
/// the way they do.
pub(super) fn lookup<K: PeerFamily>(ebpf: &Ebpf, full: u32, key: K) -> Result<Option<PeerClass>> {
    match place_in_kernel::<K>(ebpf)? {
        Place::Trie => {
            let m: LpmTrie<&MapData, K, PeerClass> = map_ref(ebpf, K::TRIE)?.try_into()?;
            Ok(m.get(&Key::new(full, key), 0).ok())
        }
        Place::Hash(lens) => {
            let m: BpfHashMap<&MapData, K::Hashed, PeerClass> =
                map_ref(ebpf, K::HASH)?.try_into()?;
            for len in lens {
                let plen = PEER_SCOPE_BITS + len as u32;
                if let Ok(c) = m.get(&K::hashed(plen, &key.masked(len as u32)), 0) {
                    return Ok(Some(c));
                }
            }
            Ok(None)
        }
    }
}

/// Stage B: single ports to the hash, the rest to the trie, in the order given.
pub(super) fn diff_ports(
    ebpf: &mut Ebpf,
    old: &HashMap<(u32, PortKey), PortRule>,
    new: &HashMap<(u32, PortKey), PortRule>,
    keys: Option<&HashSet<(u32, PortKey)>>,
    phase: Phase,
) -> Result<()> {
    let todo = lpm_changes(old, new, keys, phase);
    let values = match phase {
        Phase::Upsert => new,
        Phase::Remove => old,
    };
    // Both maps opened once for the whole batch.
    let [exact, trie] = ebpf.maps_disjoint_mut([map_names::PORT_EXACT, map_names::PORT_RULES]);
    let missing = |name| anyhow::anyhow!("map {name} missing from the object");
    let mut exact: BpfHashMap<&mut MapData, PortKey, PortRule> = exact
        .ok_or_else(|| missing(map_names::PORT_EXACT))?
        .try_into()?;
    let mut trie: LpmTrie<&mut MapData, PortKey, PortRule> = trie
        .ok_or_else(|| missing(map_names::PORT_RULES))?
        .try_into()?;
    for (plen, k) in todo {
        let value = values[&(*plen, *k)];
        if *plen == PORT_EXACT_BITS {
            let name = map_names::PORT_EXACT;
            match phase {
                Phase::Upsert => exact.insert(k, value, 0).map_err(|e| map_err(name, e))?,
                Phase::Remove => {
                    let _ = exact.remove(k);
                }
            }
        } else {
            let name = map_names::PORT_RULES;
            let key = Key::new(*plen, *k);
            match phase {
                Phase::Upsert => trie.insert(&key, value, 0).map_err(|e| map_err(name, e))?,
                Phase::Remove => {
                    let _ = trie.remove(&key);
                }
            }
        }
    }
    Ok(())
}

/// Stage B as the kernel holds it: both maps.
pub(super) fn read_ports(ebpf: &Ebpf) -> Result<HashMap<(u32, PortKey), PortRule>> {
    let exact: BpfHashMap<&MapData, PortKey, PortRule> =
        map_ref(ebpf, map_names::PORT_EXACT)?.try_into()?;
    let trie: LpmTrie<&MapData, PortKey, PortRule> =
        map_ref(ebpf, map_names::PORT_RULES)?.try_into()?;
    let mut out = HashMap::new();
    for r in exact.iter() {
        let (k, v) = r.map_err(|e| map_err(map_names::PORT_EXACT, e))?;
        out.insert((PORT_EXACT_BITS, k), v);
    }
    for r in trie.iter() {
        let (k, v) = r.map_err(|e| map_err(map_names::PORT_RULES, e))?;
        out.insert((k.prefix_len(), k.data()), v);
    }
    Ok(out)
}

/// The rule the programs find for `key` (a single port), the way they look.
pub(super) fn lookup_port(ebpf: &Ebpf, key: PortKey) -> Result<Option<PortRule>> {
    let exact: BpfHashMap<&MapData, PortKey, PortRule> =
        map_ref(ebpf, map_names::PORT_EXACT)?.try_into()?;
    if let Ok(r) = exact.get(&key, 0) {
        return Ok(Some(r));
    }
    let trie: LpmTrie<&MapData, PortKey, PortRule> =
        map_ref(ebpf, map_names::PORT_RULES)?.try_into()?;
    Ok(trie.get(&Key::new(PORT_EXACT_BITS, key), 0).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lens: &[u32]) -> Table<PeerKeyV4> {
        lens.iter()
            .enumerate()
            .map(|(i, l)| {
                let k = PeerKeyV4 {
                    scope: i as u32,
                    addr: [0; 4],
                };
                ((PEER_SCOPE_BITS + l, k), PeerClass::default())
            })
            .collect()
    }

    #[test]
    fn the_hash_takes_a_family_with_few_lengths_longest_first() {
        let wanted = |t: &Table<PeerKeyV4>| LenCounts::of(t).place();
        assert_eq!(wanted(&table(&[])), Place::Hash(vec![]));
        assert_eq!(
            wanted(&table(&[24, 0, 32, 24])),
            Place::Hash(vec![32, 24, 0])
        );
        let eight: Vec<u32> = (20..28).collect();
        assert!(matches!(wanted(&table(&eight)), Place::Hash(l) if l.len() == 8));
        let nine: Vec<u32> = (20..29).collect();
        assert_eq!(wanted(&table(&nine)), Place::Trie);
    }

    #[test]
    fn counts_follow_the_touched_keys_as_a_recount_would() {
        let old = table(&[24, 24, 16]);
        let mut new = old.clone();
        let gone = *old
            .keys()
            .find(|(p, _)| *p == PEER_SCOPE_BITS + 16)
            .unwrap();
        new.remove(&gone);
        let added = (
            PEER_SCOPE_BITS + 32,
            PeerKeyV4 {
                scope: 99,
                addr: [1; 4],
            },
        );
        new.insert(added, PeerClass::default());
        let touched: HashSet<_> = [gone, added].into();
        let c = LenCounts::of(&old).next(&old, &new, Some(&touched));
        assert_eq!(c, LenCounts::of(&new));
        assert_eq!(c.place(), Place::Hash(vec![32, 24]));
    }

    #[test]
    fn a_key_is_cut_to_its_length() {
        let k = PeerKeyV4 {
            scope: 7,
            addr: [10, 1, 0xff, 0xff],
        };
        assert_eq!(k.masked(32).addr, [10, 1, 0xff, 0xff]);
        assert_eq!(k.masked(20).addr, [10, 1, 0xf0, 0]);
        assert_eq!(k.masked(0).addr, [0; 4]);
        assert_eq!(k.masked(20).scope, 7, "the scope is never cut");
    }

    #[test]
    fn the_kernel_form_round_trips_and_the_union_fits_or_says_not() {
        for p in [
            Place::Trie,
            Place::Hash(vec![]),
            Place::Hash(vec![32, 16, 0]),
        ] {
            assert_eq!(Place::from_kernel(&p.to_kernel()), p);
        }
        assert_eq!(union(&[32, 24], &[24, 16]), Some(vec![32, 24, 16]));
        let a: Vec<u8> = (0..8).collect();
        let b: Vec<u8> = (8..16).collect();
        assert_eq!(union(&a, &b).map(|u| u.len()), Some(16));
        assert_eq!(union(&a, &(8..17).collect::<Vec<u8>>()), None);
    }
}
