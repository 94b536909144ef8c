//! Compiled policies kept between applies, so an event recompiles only the group lists
//! whose inputs changed.
//!
//! A pod's policy is a function of its group list's rules, of what each group or prefix
//! list those rules name expands to, and of the quotas. Each entry remembers those
//! inputs (group contents by version, expansions by value). An apply first evicts the
//! entries no pod wants any more (releasing their entries from the desired state, so
//! what is added is counted against capacity without them) and marks stale those whose
//! inputs changed; a stale list is recompiled under its id, and only its entries that
//! differ change. Unchanged lists cost no compile and no map write.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::Quotas;
use crate::datapath::state::{Ids, PolicyEntries};
use crate::model::group::{Direction, Peer, SecurityGroup};
use crate::plan::PodError;
use crate::plan::desired::Desired;
use crate::policy::compile::{CompileError, CookieTable, Peers, compile, flatten_with};

/// A policy as pods use it: its id and rule counts.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub id: u32,
    pub inbound_rules: usize,
    pub outbound_rules: usize,
}

#[derive(Debug, Default)]
pub struct PolicyCache {
    entries: HashMap<Vec<String>, Cached>,
    /// Each group as last seen, with a version that changes with its content.
    groups: HashMap<String, Seen>,
    next_version: u64,
}

#[derive(Debug)]
struct Seen {
    version: u64,
    group: Option<Arc<SecurityGroup>>,
    /// The groups and prefix lists its rules name.
    names: Vec<Peer>,
}

#[derive(Debug)]
struct Cached {
    inputs: Inputs,
    /// A compile error is kept too: the pod stays failed without recompiling.
    outcome: Result<Compiled, CompileError>,
    used: bool,
    /// Its inputs changed: recompiled when next asked for.
    stale: bool,
}

/// What a group or prefix list named by a rule stands for, or why it can't be used.
type Expansion = Arc<Result<Vec<IpNet>, String>>;

#[derive(Debug, PartialEq)]
struct Inputs {
    versions: Vec<u64>,
    expanded: Vec<(Peer, Expansion)>,
    quotas: Quotas,
}

/// What one apply has looked up already: each group's version and each named peer's
/// expansion, once per apply however many pods share them.
#[derive(Default)]
pub struct Round {
    versions: HashMap<String, u64>,
    expanded: HashMap<Peer, Expansion>,
}

impl PolicyCache {
    fn version(&mut self, round: &mut Round, peers: &Peers, gid: &str) -> u64 {
        let now = peers.catalog.groups.get(gid);
        // The same parse as last time (the usual case: only pods changed): no compare,
        // nothing to remember for the round.
        if let Some(seen) = self.groups.get(gid)
            && let (Some(a), Some(b)) = (&seen.group, now)
            && Arc::ptr_eq(a, b)
        {
            return seen.version;
        }
        if let Some(v) = round.versions.get(gid) {
            return *v;
        }
        let same = |seen: &Seen| match (&seen.group, now) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        let v = match self.groups.get_mut(gid) {
            Some(seen) if same(seen) => {
                // The same content: keep this copy, so the next look is a pointer compare.
                seen.group = now.cloned();
                seen.version
            }
            _ => {
                self.next_version += 1;
                let names = now.map(|g| named_peers(g)).unwrap_or_default();
                let seen = Seen {
                    version: self.next_version,
                    group: now.cloned(),
                    names,
                };
                self.groups.insert(gid.to_string(), seen);
                self.next_version
            }
        };
        round.versions.insert(gid.to_string(), v);
        v
    }

    fn inputs(
        &mut self,
        round: &mut Round,
        peers: &Peers,
        quotas: &Quotas,
        groups: &[String],
    ) -> Inputs {
        let versions = groups
            .iter()
            .map(|g| self.version(round, peers, g))
            .collect();
        let mut expanded = Vec::new();
        for g in groups {
            for p in self.groups.get(g).map(|s| &s.names[..]).unwrap_or_default() {
                let e = round
                    .expanded
                    .entry(p.clone())
                    .or_insert_with(|| Arc::new(peers.expand(p)));
                expanded.push((p.clone(), e.clone()));
            }
        }
        Inputs {
            versions,
            expanded,
            quotas: quotas.clone(),
        }
    }

    /// Starts an apply: evicts the entries no pod wants (`wanted`: every group list
    /// some pod may need) and marks stale those whose inputs changed.
    pub fn begin(
        &mut self,
        peers: &Peers,
        quotas: &Quotas,
        wanted: &HashSet<Vec<String>>,
        ids: &mut Ids,
        desired: &mut Desired,
    ) -> Round {
        let mut round = Round::default();
        let keys: Vec<Vec<String>> = self.entries.keys().cloned().collect();
        for key in keys {
            if !wanted.contains(&key) {
                self.evict(&key, ids, desired);
                continue;
            }
            let now = self.inputs(&mut round, peers, quotas, &key);
            if let Some(c) = self.entries.get_mut(&key) {
                c.stale = c.inputs != now;
            }
        }
        // Groups no pod names any more need not be remembered.
        let named: HashSet<&String> = wanted.iter().flatten().collect();
        self.groups.retain(|g, _| named.contains(g));
        round
    }

    /// Group list `groups`'s policy, its entries set in `desired` for as long as it is
    /// cached.
    #[expect(clippy::too_many_arguments, reason = "the parts of one apply it reads")]
    pub fn get(
        &mut self,
        round: &mut Round,
        peers: &Peers,
        quotas: &Quotas,
        groups: &[String],
        cookies: &mut CookieTable,
        ids: &mut Ids,
        desired: &mut Desired,
    ) -> Result<Compiled, PodError> {
        if let Some(c) = self.entries.get_mut(groups).filter(|c| !c.stale) {
            c.used = true;
            return c.outcome.clone().map_err(PodError::Compile);
        }
        let inputs = self.inputs(round, peers, quotas, groups);
        let outcome = match flatten_with(groups, peers, quotas, cookies) {
            Ok(flat) => {
                let p = compile(&flat);
                let id = ids.policy(groups);
                let e = Arc::new(PolicyEntries::of(ids, id, &p));
                if let Err(full) = desired.set(id, &e) {
                    // Not cached: it is tried again next time. What it had goes.
                    self.evict(groups, ids, desired);
                    return Err(full.into());
                }
                Ok(Compiled {
                    id,
                    inbound_rules: p.inbound_rules,
                    outbound_rules: p.outbound_rules,
                })
            }
            Err(e) => {
                self.evict(groups, ids, desired);
                Err(e)
            }
        };
        let cached = Cached {
            inputs,
            outcome: outcome.clone(),
            used: true,
            stale: false,
        };
        self.entries.insert(groups.to_vec(), cached);
        outcome.map_err(PodError::Compile)
    }

    /// Ends an apply: entries no pod asked for are evicted, and ids of lists not
    /// cached (remembered from a previous run, say) forgotten.
    pub fn end(&mut self, ids: &mut Ids, desired: &mut Desired) {
        let unused: Vec<Vec<String>> = self
            .entries
            .iter()
            .filter(|(_, c)| !c.used)
            .map(|(k, _)| k.clone())
            .collect();
        for k in unused {
            self.evict(&k, ids, desired);
        }
        for c in self.entries.values_mut() {
            c.used = false;
        }
        let entries = &self.entries;
        ids.retain_policies(&|l| entries.get(l).is_some_and(|c| c.outcome.is_ok()));
    }

    /// Drops list `key`: its entries leave the desired state and its id is forgotten.
    fn evict(&mut self, key: &[String], ids: &mut Ids, desired: &mut Desired) {
        self.entries.remove(key);
        // The id may be held even when the entry is not cached (a failed recompile).
        if let Some(id) = ids.known_policy(key) {
            desired.release(id);
            ids.forget_policy(key);
        }
    }
}

/// The groups and prefix lists a group's rules name, once each.
fn named_peers(g: &SecurityGroup) -> Vec<Peer> {
    let mut v: Vec<Peer> = [Direction::Inbound, Direction::Outbound]
        .into_iter()
        .flat_map(|d| g.rules(d))
        .filter(|r| !matches!(r.peer, Peer::Cidr(_)))
        .map(|r| r.peer.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}
