//! The kernel's desired state, kept from one apply to the next and changed in place.
//!
//! Rule tables hold tens of thousands of entries on a busy node; rebuilding and
//! comparing them whole on every event cost most of a re-plan. Instead each policy's
//! entries are set when its group list is (re)compiled, changing only the entries that
//! differ, and released when no pod uses the list; every key that changed is noted for
//! the writer, which then touches only those. The small tables (pods, always-allowed, destinations) are
//! rebuilt on every apply and compared whole.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use std::hash::Hash;

use enforcer_common::{
    MAX_PEER_ENTRIES, MAX_PORT_ENTRIES, PeerKeyV4, PeerKeyV6, PortKey, map_names,
};

use crate::datapath::state::{CapacityError, KernelState, PolicyEntries, PortEntry, check_room};

#[derive(Debug, Default)]
pub struct Desired {
    pub state: KernelState,
    /// Each policy in `state`, and its entries.
    policies: HashMap<u32, Arc<PolicyEntries>>,
    /// Each class in `state`: how many of those policies use it.
    classes: HashMap<u32, usize>,
    /// Rule-table keys changed since the writer last wrote.
    pub touched: Touched,
    /// Classes that left the tables since the last [`Desired::take_released`]: their
    /// ids may be forgotten once written.
    released: Vec<u32>,
}

/// Keys of the rule tables that changed; `all`: the writer must compare the tables
/// whole (nothing written yet by this daemon, or the last write failed part-way).
#[derive(Debug)]
pub struct Touched {
    pub all: bool,
    pub peers_v4: HashSet<(u32, PeerKeyV4)>,
    pub peers_v6: HashSet<(u32, PeerKeyV6)>,
    pub ports: HashSet<(u32, PortKey)>,
}

impl Default for Touched {
    fn default() -> Self {
        Touched {
            all: true,
            peers_v4: HashSet::new(),
            peers_v6: HashSet::new(),
            ports: HashSet::new(),
        }
    }
}

impl Touched {
    /// Everything noted is in the kernel now.
    pub fn written(&mut self) {
        self.all = false;
        self.peers_v4.clear();
        self.peers_v6.clear();
        self.ports.clear();
        self.peers_v4.shrink_to(64);
        self.peers_v6.shrink_to(64);
        self.ports.shrink_to(64);
    }
}

/// How one table changes when a policy's entries are replaced.
struct Delta<K, V> {
    upserts: Vec<(K, V)>,
    removals: Vec<K>,
    /// Upserts whose key the table does not have yet.
    added: usize,
}

impl<K: Copy + Eq + Hash, V: Copy + PartialEq> Delta<K, V> {
    fn of(table: &HashMap<K, V>, old: &[(K, V)], new: &[(K, V)]) -> Self {
        let before: HashMap<K, V> = old.iter().copied().collect();
        let after: HashSet<K> = new.iter().map(|(k, _)| *k).collect();
        let upserts: Vec<(K, V)> = new
            .iter()
            .filter(|(k, v)| before.get(k) != Some(v))
            .copied()
            .collect();
        let added = upserts
            .iter()
            .filter(|(k, _)| !table.contains_key(k))
            .count();
        let removals = old
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !after.contains(k))
            .collect();
        Delta {
            upserts,
            removals,
            added,
        }
    }

    fn check(
        &self,
        table: &HashMap<K, V>,
        name: &'static str,
        size: u32,
    ) -> Result<(), CapacityError> {
        check_room(name, table.len() + self.added - self.removals.len(), size)
    }

    fn apply(self, table: &mut HashMap<K, V>, touched: &mut HashSet<K>) {
        for (k, v) in self.upserts {
            table.insert(k, v);
            touched.insert(k);
        }
        for k in self.removals {
            table.remove(&k);
            touched.insert(k);
        }
    }
}

impl Desired {
    /// Makes policy `pid`'s entries `e`, changing only what differs from its current
    /// ones. Nothing changes when a table would overflow (see `KernelState::fits`).
    pub fn set(&mut self, pid: u32, e: &Arc<PolicyEntries>) -> Result<(), CapacityError> {
        let none = Arc::new(PolicyEntries::default());
        let old = self.policies.get(&pid).cloned().unwrap_or(none);
        let s = &self.state;
        let v4 = Delta::of(&s.peers_v4, &old.v4, &e.v4);
        let v6 = Delta::of(&s.peers_v6, &old.v6, &e.v6);
        let was: HashSet<u32> = old.classes.iter().map(|(c, _)| *c).collect();
        let now: HashSet<u32> = e.classes.iter().map(|(c, _)| *c).collect();
        let users = |c: &u32| self.classes.get(c).copied().unwrap_or(0);
        let coming: Vec<&(u32, Vec<PortEntry>)> = e
            .classes
            .iter()
            .filter(|(c, _)| !was.contains(c) && users(c) == 0)
            .collect();
        let going: usize = old
            .classes
            .iter()
            .filter(|(c, _)| !now.contains(c) && users(c) == 1)
            .map(|(_, p)| p.len())
            .sum();
        let ports = s.ports.len() + coming.iter().map(|(_, p)| p.len()).sum::<usize>() - going;
        v4.check(&s.peers_v4, map_names::PEER_V4, MAX_PEER_ENTRIES)?;
        v6.check(&s.peers_v6, map_names::PEER_V6, MAX_PEER_ENTRIES)?;
        check_room(map_names::PORT_RULES, ports, MAX_PORT_ENTRIES)?;

        v4.apply(&mut self.state.peers_v4, &mut self.touched.peers_v4);
        v6.apply(&mut self.state.peers_v6, &mut self.touched.peers_v6);
        for (cid, ports) in e.classes.iter().filter(|(c, _)| !was.contains(c)) {
            self.hold_class(*cid, ports);
        }
        for (cid, ports) in old.classes.iter().filter(|(c, _)| !now.contains(c)) {
            self.release_class(*cid, ports);
        }
        self.policies.insert(pid, e.clone());
        Ok(())
    }

    fn hold_class(&mut self, cid: u32, ports: &[PortEntry]) {
        let n = self.classes.entry(cid).or_insert(0);
        if *n == 0 {
            for (k, v) in ports {
                self.state.ports.insert(*k, *v);
                self.touched.ports.insert(*k);
            }
        }
        *n += 1;
    }

    fn release_class(&mut self, cid: u32, ports: &[PortEntry]) {
        let Some(n) = self.classes.get_mut(&cid) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.classes.remove(&cid);
            self.released.push(cid);
            for (k, _) in ports {
                self.state.ports.remove(k);
                self.touched.ports.insert(*k);
            }
        }
    }

    /// Takes policy `pid`'s entries (and those of classes no other policy uses) away.
    pub fn release(&mut self, pid: u32) {
        let Some(e) = self.policies.remove(&pid) else {
            return;
        };
        let (s, t) = (&mut self.state, &mut self.touched);
        for (k, _) in &e.v4 {
            s.peers_v4.remove(k);
            t.peers_v4.insert(*k);
        }
        for (k, _) in &e.v6 {
            s.peers_v6.remove(k);
            t.peers_v6.insert(*k);
        }
        for (cid, ports) in &e.classes {
            self.release_class(*cid, ports);
        }
    }

    /// Classes released since the last call that are still not in the tables (one
    /// released and used again within the apply keeps its id).
    pub fn take_released(&mut self) -> Vec<u32> {
        let mut c = std::mem::take(&mut self.released);
        c.retain(|id| !self.classes.contains_key(id));
        c
    }

    /// Replaces the tables rebuilt on every apply with `fresh`'s.
    pub fn set_small_tables(&mut self, fresh: KernelState) {
        let s = &mut self.state;
        s.always_v4 = fresh.always_v4;
        s.always_v6 = fresh.always_v6;
        s.dest_v4 = fresh.dest_v4;
        s.dest_v6 = fresh.dest_v6;
        s.pods_by_vlan = fresh.pods_by_vlan;
        s.pods_by_ifindex = fresh.pods_by_ifindex;
        s.pods_by_ipv4 = fresh.pods_by_ipv4;
        s.pods_by_ipv6 = fresh.pods_by_ipv6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::state::Ids;
    use crate::policy::compile::{FlatRule, compile};

    fn tcp(net: &str, port: u16) -> FlatRule {
        FlatRule::tcp_in(net, port, 1)
    }

    fn entries(ids: &mut Ids, pid: u32, rules: &[FlatRule]) -> Arc<PolicyEntries> {
        Arc::new(PolicyEntries::of(ids, pid, &compile(rules)))
    }

    #[test]
    fn a_changed_policy_changes_only_what_differs() {
        let mut ids = Ids::default();
        let mut d = Desired::default();
        let a = [tcp("10.0.0.0/8", 80), tcp("192.168.0.0/16", 22)];
        d.set(1, &entries(&mut ids, 1, &a)).unwrap();
        assert_eq!((d.state.peers_v4.len(), d.state.ports.len()), (2, 2));
        d.touched.written();
        // One rule's port moves: one peer entry now points at a new class.
        let b = [tcp("10.0.0.0/8", 8080), tcp("192.168.0.0/16", 22)];
        d.set(1, &entries(&mut ids, 1, &b)).unwrap();
        assert_eq!(d.touched.peers_v4.len(), 1, "the other prefix is untouched");
        assert_eq!(
            d.touched.ports.len(),
            2,
            "the new class in, the old one out"
        );
        assert_eq!((d.state.peers_v4.len(), d.state.ports.len()), (2, 2));
        assert_eq!(d.take_released().len(), 1, "the old class's id may go");
        d.release(1);
        assert!(d.state.peers_v4.is_empty() && d.state.ports.is_empty());
    }

    #[test]
    fn a_class_two_policies_share_leaves_with_the_last() {
        let mut ids = Ids::default();
        let mut d = Desired::default();
        // Same ports from another prefix: another policy, the same class.
        let ea = entries(&mut ids, 1, &[tcp("10.0.0.0/8", 80)]);
        let eb = entries(&mut ids, 2, &[tcp("192.168.0.0/16", 80)]);
        assert_eq!(ea.classes[0].0, eb.classes[0].0, "shared class");
        d.set(1, &ea).unwrap();
        d.set(2, &eb).unwrap();
        d.release(1);
        assert_eq!(d.state.ports.len(), 1, "policy 2 still needs the class");
        assert!(d.take_released().is_empty());
        d.release(2);
        assert!(d.state.ports.is_empty());
    }

    #[test]
    fn a_change_that_would_overflow_changes_nothing() {
        let mut ids = Ids::default();
        let mut d = Desired::default();
        d.set(1, &entries(&mut ids, 1, &[tcp("10.0.0.0/8", 80)]))
            .unwrap();
        let before = d.state.clone();
        // One class with one port entry more than half the map.
        let ports = (0..=MAX_PORT_ENTRIES / 2)
            .map(|i| {
                let k = PortKey::new(99, (i >> 16) as u8, i as u16);
                ((64, k), enforcer_common::PortRule::default())
            })
            .collect();
        let big = PolicyEntries {
            classes: vec![(99, ports)],
            ..PolicyEntries::default()
        };
        let e = d.set(1, &Arc::new(big)).unwrap_err();
        assert_eq!(e.map, map_names::PORT_RULES);
        assert_eq!(d.state, before);
    }
}
