//! The kernel's desired map contents, computed in plain Rust.
//!
//! Ids are content-addressed and never reused while the daemon runs: an id's entries
//! never change meaning, so a policy change writes the new policy's entries under fresh
//! ids, flips each pod's `policy_id` with one map update, and only then deletes what
//! nothing points to. A packet sees the old rule set or the new one, never a mix.
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

/// Whether adding `new` to `map` stays within half the kernel map's capacity. Rule
/// sets are swapped by writing the new entries beside the old ones before any pod
/// points at them, so a change touching every pod (a shared group's rule) needs room
/// for both at once: the desired state may fill half of each rule table, never more.
fn fits<K: Eq + std::hash::Hash, V>(
    map: &HashMap<K, V>,
    new: &[(K, V)],
    name: &'static str,
    capacity: u32,
) -> Result<(), CapacityError> {
    let needed = map.len() + new.iter().filter(|(k, _)| !map.contains_key(k)).count();
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

type PolicyShape = Vec<(Direction, IpNet, u32, Option<Allow>)>;

/// Allocates content-addressed ids; see the module comment.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ids {
    #[serde(with = "crate::memory::pairs")]
    classes: HashMap<ClassContent, u32>,
    #[serde(with = "crate::memory::pairs")]
    policies: HashMap<PolicyShape, u32>,
    next_class: u32,
    next_policy: u32,
}

impl Ids {
    fn class(&mut self, c: &ClassContent) -> u32 {
        if let Some(id) = self.classes.get(c) {
            return *id;
        }
        self.next_class += 1;
        self.classes.insert(c.clone(), self.next_class);
        self.next_class
    }

    fn policy(&mut self, shape: PolicyShape) -> u32 {
        if let Some(id) = self.policies.get(&shape) {
            return *id;
        }
        // policy ids are shifted left once in a scope; stay below 2^31.
        self.next_policy += 1;
        assert!(self.next_policy < (1 << 31), "policy id space exhausted");
        self.policies.insert(shape, self.next_policy);
        self.next_policy
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

    /// Forgets ids no longer in use. They are not handed out again.
    pub fn retain(&mut self, state: &KernelState) {
        let live_policies: std::collections::HashSet<u32> = state
            .pods_by_vlan
            .values()
            .chain(state.pods_by_ifindex.values())
            .map(|p| p.policy_id)
            .collect();
        self.policies.retain(|_, id| live_policies.contains(id));
        let live_classes: std::collections::HashSet<u32> = state
            .peers_v4
            .values()
            .chain(state.peers_v6.values())
            .map(|c| c.class_id)
            .collect();
        self.classes.retain(|_, id| live_classes.contains(id));
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

    /// Adds a compiled policy's entries and returns its id. Nothing is added when a map
    /// would overflow.
    pub fn add_policy(&mut self, ids: &mut Ids, p: &CompiledPolicy) -> Result<u32, CapacityError> {
        let mut shape = Vec::new();
        let mut classes = BTreeMap::new();
        for ((dir, net), content) in &p.peers {
            let cid = ids.class(content);
            classes.insert(cid, content);
            shape.push((*dir, *net, cid, content.all));
        }
        let pid = ids.policy(shape.clone());

        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (dir, net, cid, all) in &shape {
            let value = PeerClass {
                class_id: *cid,
                all_cookie: all.map(|a| a.cookie).unwrap_or(0),
                all_flags: all.as_ref().map(flags).unwrap_or(0),
            };
            let sc = scope(pid, kernel_direction(*dir));
            let plen = PEER_SCOPE_BITS + net.prefix_len() as u32;
            match net {
                IpNet::V4(n) => v4.push(((plen, PeerKeyV4::new(sc, n.network())), value)),
                IpNet::V6(n) => v6.push(((plen, PeerKeyV6::new(sc, n.network())), value)),
            }
        }
        let mut ports = Vec::new();
        for (cid, content) in classes {
            for ((proto, start, plen), a) in &content.ports {
                ports.push((
                    (
                        PORT_FIXED_BITS + *plen as u32,
                        PortKey::new(cid, *proto, *start),
                    ),
                    PortRule {
                        cookie: a.cookie,
                        flags: flags(a),
                    },
                ));
            }
        }
        fits(&self.peers_v4, &v4, map_names::PEER_V4, MAX_PEER_ENTRIES)?;
        fits(&self.peers_v6, &v6, map_names::PEER_V6, MAX_PEER_ENTRIES)?;
        fits(&self.ports, &ports, map_names::PORT_RULES, MAX_PORT_ENTRIES)?;
        self.peers_v4.extend(v4);
        self.peers_v6.extend(v6);
        self.ports.extend(ports);
        Ok(pid)
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
        let mut m: HashMap<u32, u32> = HashMap::new();
        assert!(fits(&m, &[(1, 0), (2, 0)], "T", 4).is_ok(), "half of 4");
        m.insert(1, 0);
        assert!(
            fits(&m, &[(1, 0), (2, 0)], "T", 4).is_ok(),
            "an entry already there is no more"
        );
        let e = fits(&m, &[(2, 0), (3, 0)], "T", 4).unwrap_err();
        assert_eq!((e.map, e.needed, e.capacity), ("T", 3, 2));
        assert!(e.to_string().contains("room to swap"), "{e}");
    }

    fn rule(net: &str, port: u16, cookie: u32) -> FlatRule {
        FlatRule {
            dir: Direction::Inbound,
            net: net.parse().unwrap(),
            proto: Some(6),
            lo: port,
            hi: port,
            cookie,
            untracked: false,
        }
    }

    #[test]
    fn same_content_same_ids_new_content_new_ids() {
        let mut ids = Ids::default();
        let a = compile(&[rule("10.0.0.0/8", 80, 1)]);
        let b = compile(&[rule("10.0.0.0/8", 443, 2)]);
        let mut s = KernelState::default();
        let pa = s.add_policy(&mut ids, &a).unwrap();
        let pa2 = s.add_policy(&mut ids, &a).unwrap();
        let pb = s.add_policy(&mut ids, &b).unwrap();
        assert_eq!(pa, pa2);
        assert_ne!(pa, pb);
        assert_eq!(s.peers_v4.len(), 2);
        assert_eq!(s.ports.len(), 2);
        // Dropping policy a and re-adding it later gets a fresh id.
        let mut only_b = KernelState::default();
        only_b.add_policy(&mut ids, &b).unwrap();
        only_b.add_pod(PodInfo {
            policy_id: pb,
            vlan: 1,
            ..Default::default()
        });
        ids.retain(&only_b);
        let pa3 = only_b.add_policy(&mut ids, &a).unwrap();
        assert!(pa3 > pb);
    }

    #[test]
    fn overflow_is_an_error_and_adds_nothing() {
        let mut ids = Ids::default();
        let mut s = KernelState::default();
        for i in 0..MAX_PORT_ENTRIES {
            s.ports.insert(
                (
                    64,
                    PortKey {
                        class_id: 9999,
                        proto: 6,
                        port_be: [0, 0],
                    },
                ),
                PortRule::default(),
            );
            s.ports.insert(
                (
                    64,
                    PortKey {
                        class_id: 10000 + i,
                        proto: 6,
                        port_be: [0, 0],
                    },
                ),
                PortRule::default(),
            );
        }
        let before = s.clone();
        let err = s
            .add_policy(&mut ids, &compile(&[rule("10.0.0.0/8", 80, 1)]))
            .unwrap_err();
        assert_eq!(err.map, "PORT_RULES");
        assert_eq!(s, before);
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
