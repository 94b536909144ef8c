//! The kernel's desired map contents, computed in plain Rust.
//!
//! Two kinds of id, neither reused while the daemon runs:
//! - A class id is content-addressed: its port entries never change meaning. A changed
//!   class is a new id, written before any peer entry points at it, removed after none
//!   does.
//! - A policy id names a group list (every pod with the same groups shares it) and
//!   stays while the list is in use, so a rule change rewrites only the peer entries
//!   whose class changed, in place. A packet makes one peer lookup and one port lookup,
//!   so it sees its prefix's old class or its new one; the writer orders the peer
//!   changes (new prefixes longest first, then changed values, then removals shortest
//!   first) so that the longest match in the table is always a prefix's longest match
//!   under the old rules or under the new ones: a packet never sees a mix.
//!   A pod whose groups change flips to another list's id with one map update.
use std::collections::{BTreeMap, HashMap};

use enforcer_common::*;
use ipnet::IpNet;

use crate::model::group::Direction;
use crate::policy::compile::{Allow, ClassContent, CompiledPolicy};

/// Everything the programs read, as key -> value. LPM keys carry their prefix length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub peers_v4: HashMap<(u32, PeerKeyV4), PeerClass>,
    pub peers_v6: HashMap<(u32, PeerKeyV6), PeerClass>,
    pub ports: HashMap<(u32, PortKey), PortRule>,
    pub always_v4: HashMap<(u32, [u8; 4]), AlwaysAllow>,
    pub always_v6: HashMap<(u32, [u8; 16]), AlwaysAllow>,
    /// Where destinations lie (the node, the VPC, SNAT exclusions).
    pub dest_v4: HashMap<(u32, [u8; 4]), DestClass>,
    pub dest_v6: HashMap<(u32, [u8; 16]), DestClass>,
    pub pods_by_vlan: HashMap<u32, PodInfo>,
    pub pods_by_ifindex: HashMap<u32, PodInfo>,
    /// A pod's address -> its host interface (same-node delivery).
    pub pods_by_ipv4: HashMap<[u8; 4], u32>,
    pub pods_by_ipv6: HashMap<[u8; 16], u32>,
}

/// A rule direction as the programs number it: inbound rules judge traffic toward the
/// pod (ingress), outbound rules traffic from it.
fn kernel_direction(d: Direction) -> enforcer_common::Direction {
    match d {
        Direction::Inbound => enforcer_common::Direction::Ingress,
        Direction::Outbound => enforcer_common::Direction::Egress,
    }
}

/// A map that would overflow: the pod that needed the room is failed, with this error.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "map {map} would need {needed} entries, more than the {capacity} it may hold (half its size: the other half is room to swap rule sets atomically)"
)]
pub struct CapacityError {
    pub map: &'static str,
    pub needed: usize,
    pub capacity: usize,
}

/// Whether a table of map `name` (of `capacity` entries) may hold `needed`.
pub fn check_room(name: &'static str, needed: usize, capacity: u32) -> Result<(), CapacityError> {
    let usable = capacity as usize / 2;
    if needed > usable {
        return Err(CapacityError {
            map: name,
            needed,
            capacity: usable,
        });
    }
    Ok(())
}

fn flags(a: &Allow) -> u32 {
    if a.untracked { RULE_UNTRACKED } else { 0 }
}

/// Content digest -> id and back. Content is known by a 128-bit digest (SHA-256,
/// truncated) rather than kept: a policy's content is hundreds of entries, and
/// memory.json (written on every apply) and the daemon's heap held every one.
#[derive(Default, Debug)]
pub struct Interned {
    by_digest: HashMap<u128, u32>,
    by_id: HashMap<u32, u128>,
}

impl Interned {
    fn insert(&mut self, digest: u128, id: u32) {
        self.by_digest.insert(digest, id);
        self.by_id.insert(id, digest);
    }

    fn forget(&mut self, id: u32) {
        if let Some(d) = self.by_id.remove(&id) {
            self.by_digest.remove(&d);
        }
    }
}

impl serde::Serialize for Interned {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.by_digest
                .iter()
                .map(|(d, id)| (format!("{d:032x}"), *id)),
        )
    }
}

impl<'de> serde::Deserialize<'de> for Interned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut i = Interned::default();
        for (hex, id) in Vec::<(String, u32)>::deserialize(d)? {
            let digest = u128::from_str_radix(&hex, 16).map_err(serde::de::Error::custom)?;
            i.insert(digest, id);
        }
        Ok(i)
    }
}

/// Feeds content into a SHA-256 digest, truncated to 128 bits.
struct Digester(sha2::Sha256);

impl Digester {
    fn new(kind: &[u8]) -> Digester {
        use sha2::Digest;
        Digester(sha2::Sha256::new_with_prefix(kind))
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        sha2::Digest::update(&mut self.0, b);
        self
    }

    fn allow(&mut self, a: Option<Allow>) -> &mut Self {
        match a {
            None => self.bytes(&[0]),
            Some(a) => self
                .bytes(&[1, a.untracked as u8])
                .bytes(&a.cookie.to_le_bytes()),
        }
    }

    fn finish(self) -> u128 {
        let out = sha2::Digest::finalize(self.0);
        let mut first = [0u8; 16];
        first.copy_from_slice(&out[..16]);
        u128::from_le_bytes(first)
    }
}

fn class_digest(c: &ClassContent) -> u128 {
    let mut d = Digester::new(b"class");
    d.allow(c.all);
    for ((proto, start, plen), a) in &c.ports {
        d.bytes(&[*proto, *plen])
            .bytes(&start.to_le_bytes())
            .allow(Some(*a));
    }
    d.finish()
}

/// A compiled policy as map entries: its peer prefixes (keyed by its id) and its
/// classes' port entries (keyed by class id; classes are shared between policies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntries {
    pub v4: Vec<PeerEntryV4>,
    pub v6: Vec<PeerEntryV6>,
    pub classes: Vec<(u32, Vec<PortEntry>)>,
}

pub type PeerEntryV4 = ((u32, PeerKeyV4), PeerClass);
pub type PeerEntryV6 = ((u32, PeerKeyV6), PeerClass);
pub type PortEntry = ((u32, PortKey), PortRule);

impl PolicyEntries {
    /// Policy `pid`'s entries (its classes get their content-addressed ids).
    pub fn of(ids: &mut Ids, pid: u32, p: &CompiledPolicy) -> PolicyEntries {
        let mut e = PolicyEntries::default();
        let mut classes = BTreeMap::new();
        for ((dir, net), content) in &p.peers {
            let cid = ids.class(content);
            classes.insert(cid, content);
            let value = PeerClass {
                class_id: cid,
                all_cookie: content.all.map(|a| a.cookie).unwrap_or(0),
                all_flags: content.all.as_ref().map(flags).unwrap_or(0),
            };
            let sc = scope(pid, kernel_direction(*dir));
            let plen = PEER_SCOPE_BITS + net.prefix_len() as u32;
            match net {
                IpNet::V4(n) => e.v4.push(((plen, PeerKeyV4::new(sc, n.network())), value)),
                IpNet::V6(n) => e.v6.push(((plen, PeerKeyV6::new(sc, n.network())), value)),
            }
        }
        for (cid, content) in classes {
            let ports = content
                .ports
                .iter()
                .map(|((proto, start, plen), a)| {
                    (
                        (
                            PORT_FIXED_BITS + *plen as u32,
                            PortKey::new(cid, *proto, *start),
                        ),
                        PortRule {
                            cookie: a.cookie,
                            flags: flags(a),
                        },
                    )
                })
                .collect();
            e.classes.push((cid, ports));
        }
        e
    }
}

/// Allocates ids; see the module comment.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ids {
    /// Saved apart (`Memory::save_tables`): it is most of the memory's size.
    #[serde(skip)]
    pub(crate) class_ids: Interned,
    /// Each group list's policy id.
    #[serde(default, with = "crate::memory::pairs")]
    lists: HashMap<Vec<String>, u32>,
    next_class: u32,
    next_policy: u32,
}

impl Ids {
    /// How many class ids are known and the next one: changes when classes come or go.
    pub fn class_fingerprint(&self) -> (usize, u32) {
        (self.class_ids.by_id.len(), self.next_class)
    }

    fn class(&mut self, c: &ClassContent) -> u32 {
        let d = class_digest(c);
        if let Some(id) = self.class_ids.by_digest.get(&d) {
            return *id;
        }
        self.next_class += 1;
        self.class_ids.insert(d, self.next_class);
        self.next_class
    }

    /// The policy id of group list `groups`, made on first use.
    pub fn policy(&mut self, groups: &[String]) -> u32 {
        if let Some(id) = self.lists.get(groups) {
            return *id;
        }
        // policy ids are shifted left once in a scope; stay below 2^31.
        self.next_policy += 1;
        assert!(self.next_policy < (1 << 31), "policy id space exhausted");
        self.lists.insert(groups.to_vec(), self.next_policy);
        self.next_policy
    }

    /// Group list `groups`'s policy id, if it has one.
    pub fn known_policy(&self, groups: &[String]) -> Option<u32> {
        self.lists.get(groups).copied()
    }

    /// Forgets group list `groups`'s id: it is not handed out again.
    pub fn forget_policy(&mut self, groups: &[String]) {
        self.lists.remove(groups);
    }

    /// Forgets every group list `keep` says no.
    pub fn retain_policies(&mut self, keep: &dyn Fn(&[String]) -> bool) {
        self.lists.retain(|l, _| keep(l));
    }

    /// Forgets class `id`: it is not handed out again.
    pub fn forget_class(&mut self, id: u32) {
        self.class_ids.forget(id);
    }

    /// Makes sure new ids lie above every id `state` uses (tables a previous daemon
    /// wrote and this one adopted): an id's entries never change meaning, even when
    /// the memory of what they meant was lost.
    pub fn reserve_past(&mut self, state: &KernelState) {
        let policies = state
            .pods_by_vlan
            .values()
            .chain(state.pods_by_ifindex.values())
            .map(|p| p.policy_id)
            .chain(state.peers_v4.keys().map(|(_, k)| k.scope >> 1))
            .chain(state.peers_v6.keys().map(|(_, k)| k.scope >> 1));
        self.next_policy = self.next_policy.max(policies.max().unwrap_or(0));
        let classes = state
            .peers_v4
            .values()
            .chain(state.peers_v6.values())
            .map(|c| c.class_id)
            .chain(state.ports.keys().map(|(_, k)| k.class_id));
        self.next_class = self.next_class.max(classes.max().unwrap_or(0));
    }
}

impl KernelState {
    /// Entries in use and capacity of each table the daemon fills, and of the flow
    /// table (whose entries the programs make: `flows`).
    pub fn fill_levels(&self, flows: usize) -> std::collections::BTreeMap<String, [usize; 2]> {
        use enforcer_common::map_names::*;
        [
            (POD_BY_VLAN, self.pods_by_vlan.len()),
            (POD_BY_IFINDEX, self.pods_by_ifindex.len()),
            (POD_BY_IPV4, self.pods_by_ipv4.len()),
            (POD_BY_IPV6, self.pods_by_ipv6.len()),
            (PEER_V4, self.peers_v4.len()),
            (PEER_V6, self.peers_v6.len()),
            (PORT_RULES, self.ports.len()),
            (ALWAYS_V4, self.always_v4.len()),
            (ALWAYS_V6, self.always_v6.len()),
            (DEST_V4, self.dest_v4.len()),
            (DEST_V6, self.dest_v6.len()),
            (FLOWS, flows),
        ]
        .into_iter()
        .map(|(n, used)| {
            let cap = enforcer_common::maps::spec_of(n).map_or(0, |s| s.capacity);
            (n.to_string(), [used, cap as usize])
        })
        .collect()
    }

    pub fn add_always(&mut self, nets: &[IpNet]) {
        for (i, n) in nets.iter().enumerate() {
            let v = AlwaysAllow { id: i as u32 + 1 };
            match n {
                IpNet::V4(n) => {
                    self.always_v4
                        .insert((n.prefix_len() as u32, n.network().octets()), v);
                }
                IpNet::V6(n) => {
                    self.always_v6
                        .insert((n.prefix_len() as u32, n.network().octets()), v);
                }
            }
        }
    }

    /// The destination classes (`Config::destinations`).
    pub fn add_destinations(&mut self, d: &crate::config::Destinations) {
        for (n, flags) in &d.0 {
            let v = DestClass { flags: *flags };
            match n {
                IpNet::V4(n) => {
                    self.dest_v4
                        .insert((n.prefix_len() as u32, n.network().octets()), v);
                }
                IpNet::V6(n) => {
                    self.dest_v6
                        .insert((n.prefix_len() as u32, n.network().octets()), v);
                }
            }
        }
    }

    pub fn add_pod(&mut self, info: PodInfo) {
        if info.vlan != 0 {
            self.pods_by_vlan.insert(info.vlan as u32, info);
        }
        if info.host_ifindex != 0 {
            self.pods_by_ifindex.insert(info.host_ifindex, info);
        }
        // Addresses only of a pod that holds them (a pod that clashes has no VLAN).
        if info.vlan != 0 && info.host_ifindex != 0 {
            if let Some(a) = info.ipv4() {
                self.pods_by_ipv4.insert(a.octets(), info.host_ifindex);
            }
            if let Some(a) = info.ipv6() {
                self.pods_by_ipv6.insert(a.octets(), info.host_ifindex);
            }
        }
    }
}

/// Counter slots per pod (1..MAX_PODS); slot 0 counts traffic of no known pod.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct Slots {
    by_pod: HashMap<String, u32>,
    next: u32,
    free: Vec<u32>,
}

impl Slots {
    /// The pod's slot and whether it is new (its counters must be zeroed).
    pub fn get(&mut self, pod: &str) -> Option<(u32, bool)> {
        if let Some(s) = self.by_pod.get(pod) {
            return Some((*s, false));
        }
        let s = match self.free.pop() {
            Some(s) => s,
            None if self.next + 1 < MAX_PODS => {
                self.next += 1;
                self.next
            }
            None => return None,
        };
        self.by_pod.insert(pod.to_string(), s);
        Some((s, true))
    }

    pub fn retain(&mut self, live: &dyn Fn(&str) -> bool) {
        let gone: Vec<String> = self.by_pod.keys().filter(|k| !live(k)).cloned().collect();
        for k in gone {
            if let Some(s) = self.by_pod.remove(&k) {
                self.free.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{FlatRule, compile};

    #[test]
    fn a_table_may_fill_half_its_map_leaving_room_for_a_swap() {
        assert!(check_room("T", 2, 4).is_ok(), "half of 4");
        let e = check_room("T", 3, 4).unwrap_err();
        assert_eq!((e.map, e.needed, e.capacity), ("T", 3, 2));
        assert!(e.to_string().contains("room to swap"), "{e}");
    }

    fn rule(net: &str, port: u16, cookie: u32) -> FlatRule {
        FlatRule::tcp_in(net, port, cookie)
    }

    #[test]
    fn a_group_list_keeps_its_id_and_classes_follow_content() {
        let mut ids = Ids::default();
        let list = |g: &str| vec![g.to_string()];
        let a = compile(&[rule("10.0.0.0/8", 80, 1)]);
        let b = compile(&[rule("10.0.0.0/8", 443, 2)]);
        let pa = ids.policy(&list("sg-a"));
        assert_eq!(ids.policy(&list("sg-a")), pa, "same list, same id");
        let pb = ids.policy(&list("sg-b"));
        assert_ne!(pa, pb);
        let ea = PolicyEntries::of(&mut ids, pa, &a);
        let ea2 = PolicyEntries::of(&mut ids, pb, &a);
        let eb = PolicyEntries::of(&mut ids, pa, &b);
        assert_eq!(
            ea.classes[0].0, ea2.classes[0].0,
            "same content, same class"
        );
        assert_ne!(ea.classes[0].0, eb.classes[0].0, "new content, new class");
        assert_eq!(
            ea.v4[0].0, eb.v4[0].0,
            "the same prefix of the same list: one key"
        );
        // A forgotten list gets a fresh id; a forgotten class too.
        ids.forget_policy(&list("sg-a"));
        assert!(ids.policy(&list("sg-a")) > pb);
        ids.forget_class(ea.classes[0].0);
        assert!(PolicyEntries::of(&mut ids, pa, &a).classes[0].0 > eb.classes[0].0);
    }

    #[test]
    fn slots_are_reused_only_after_release() {
        let mut slots = Slots::default();
        assert_eq!(slots.get("a"), Some((1, true)));
        assert_eq!(slots.get("a"), Some((1, false)));
        assert_eq!(slots.get("b"), Some((2, true)));
        slots.retain(&|k| k != "a");
        assert_eq!(slots.get("c"), Some((1, true)));
    }
}
