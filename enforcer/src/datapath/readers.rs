//! Reading the kernel's maps back: what the tables hold (when adopting pins), counters,
//! flows, flow shares, fill levels.
use std::collections::HashMap;
use std::hash::Hash;

use anyhow::Result;
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray},
};
use enforcer_common::*;

use crate::datapath::kernel::{Datapath, map_err, map_ref};
use crate::datapath::peers;
use crate::datapath::state::KernelState;

impl Datapath {
    /// What the rule and pod tables hold now, read back from the kernel.
    pub(super) fn read_state(&self) -> Result<KernelState> {
        fn lpm<K: Pod + Eq + Hash, V: Pod>(
            ebpf: &Ebpf,
            name: &str,
        ) -> Result<HashMap<(u32, K), V>> {
            let m: LpmTrie<&MapData, K, V> = map_ref(ebpf, name)?.try_into()?;
            m.iter()
                .map(|r| {
                    let (k, v) = r.map_err(|e| map_err(name, e))?;
                    Ok(((k.prefix_len(), k.data()), v))
                })
                .collect()
        }
        fn hash<K: Pod + Eq + Hash, V: Pod>(ebpf: &Ebpf, name: &str) -> Result<HashMap<K, V>> {
            let m: BpfHashMap<&MapData, K, V> = map_ref(ebpf, name)?.try_into()?;
            m.iter().map(|r| r.map_err(|e| map_err(name, e))).collect()
        }
        let e = &self.ebpf;
        Ok(KernelState {
            peers_v4: peers::read_peers(e)?,
            peers_v6: peers::read_peers(e)?,
            ports: peers::read_ports(e)?,
            always_v4: lpm(e, map_names::ALWAYS_V4)?,
            always_v6: lpm(e, map_names::ALWAYS_V6)?,
            dest_v4: lpm(e, map_names::DEST_V4)?,
            dest_v6: lpm(e, map_names::DEST_V6)?,
            pods_by_vlan: hash(e, map_names::POD_BY_VLAN)?,
            pods_by_ifindex: hash(e, map_names::POD_BY_IFINDEX)?,
            pods_by_ipv4: hash(e, map_names::POD_BY_IPV4)?,
            pods_by_ipv6: hash(e, map_names::POD_BY_IPV6)?,
        })
    }

    /// Sum over CPUs of one pod slot's counters, by reason.
    pub fn counters(&self, slot: u32) -> Result<Vec<(Reason, Counter)>> {
        let c: PerCpuArray<&MapData, Counter> =
            map_ref(&self.ebpf, map_names::COUNTERS)?.try_into()?;
        let mut out = Vec::new();
        for r in Reason::ALL {
            let v = c.get(&counter_index(slot, r), 0)?;
            let sum = v.iter().fold(Counter::default(), |a, b| Counter {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
            });
            if sum.packets != 0 {
                out.push((r, sum));
            }
        }
        Ok(out)
    }

    /// Flows each rule admitted, by cookie (summed over CPUs).
    pub fn rule_hits(&self) -> Result<HashMap<u32, u64>> {
        let m: aya::maps::PerCpuHashMap<&MapData, u32, u64> =
            map_ref(&self.ebpf, map_names::RULE_HITS)?.try_into()?;
        m.iter()
            .map(|r| {
                let (k, v) = r.map_err(|e| map_err(map_names::RULE_HITS, e))?;
                Ok((k, v.iter().sum()))
            })
            .collect()
    }

    /// A per-pod, per-CPU u64 count of `slot`, summed over CPUs.
    fn per_cpu_count(&self, map: &str, slot: u32) -> Result<u64> {
        let m: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, map)?.try_into()?;
        Ok(m.get(&slot, 0).map_err(|e| map_err(map, e))?.iter().sum())
    }

    /// Audit mode: packets of `slot`'s pod its rules denied that passed.
    pub fn would_drop(&self, slot: u32) -> Result<u64> {
        self.per_cpu_count(map_names::WOULD_DROP, slot)
    }

    /// Flow events of `slot`'s pod not sent (over its budget, or the buffer full).
    pub fn events_lost(&self, slot: u32) -> Result<u64> {
        self.per_cpu_count(map_names::EVENTS_LOST, slot)
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let m: BpfHashMap<&MapData, FlowKey, FlowValue> =
            map_ref(&self.ebpf, map_names::FLOWS)?.try_into()?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    /// Source-NAT mappings (the programs make them with their flows).
    pub fn snat_mappings(&self) -> Result<Vec<(SnatKey, SnatValue)>> {
        let m: BpfHashMap<&MapData, SnatKey, SnatValue> =
            map_ref(&self.ebpf, map_names::SNAT_REV)?.try_into()?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    /// Live flow entries of each pod slot, as the programs count them.
    pub fn flow_counts(&self) -> Result<Vec<u64>> {
        let added: Array<&MapData, u64> = map_ref(&self.ebpf, map_names::FLOW_COUNT)?.try_into()?;
        let swept: Array<&MapData, u64> = map_ref(&self.ebpf, map_names::FLOW_SWEPT)?.try_into()?;
        (0..MAX_PODS)
            .map(|i| Ok(added.get(&i, 0)?.saturating_sub(swept.get(&i, 0)?)))
            .collect()
    }

    /// Entries in use and capacity of each table the daemon fills, and of the flow table.
    pub fn fill_levels(&self, flows: usize) -> std::collections::BTreeMap<String, [usize; 2]> {
        let mut levels = self.current.fill_levels(flows);
        let mappings = self.snat_mappings().map_or(0, |m| m.len());
        levels.insert(
            map_names::SNAT_REV.to_string(),
            [mappings, MAX_SNAT as usize],
        );
        levels
    }
}

impl Datapath {
    /// The live maps' verdict for the packet of `e` (the programs' look-ups, made from
    /// here): the pod's entry by VLAN, the always-allowed tries, then the two rule
    /// look-ups under its policy (and its node policy in standard mode). `None` when
    /// the kernel has no entry for the pod, or the packet never meets the rules
    /// (host-local delivery).
    pub fn kernel_view(
        &self,
        pod: &crate::status::PodStatus,
        e: &crate::explain::Explanation,
        cookies: &crate::policy::compile::CookieTable,
    ) -> Result<Option<crate::explain::KernelView>> {
        use crate::explain::{KernelView, Verdict};
        use aya::maps::lpm_trie::Key;
        let Some(vlan) = pod.vlan else {
            return Ok(None);
        };
        if e.reason == "allow_host_local" {
            return Ok(None);
        }
        let pods: BpfHashMap<&MapData, u32, PodInfo> =
            map_ref(&self.ebpf, map_names::POD_BY_VLAN)?.try_into()?;
        let Ok(info) = pods.get(&u32::from(vlan), 0) else {
            return Ok(None);
        };
        let q = &e.query;
        let always = match q.remote {
            std::net::IpAddr::V4(a) => {
                let m: LpmTrie<&MapData, [u8; 4], AlwaysAllow> =
                    map_ref(&self.ebpf, map_names::ALWAYS_V4)?.try_into()?;
                m.get(&Key::new(32, a.octets()), 0).is_ok()
            }
            std::net::IpAddr::V6(a) => {
                let m: LpmTrie<&MapData, [u8; 16], AlwaysAllow> =
                    map_ref(&self.ebpf, map_names::ALWAYS_V6)?.try_into()?;
                m.get(&Key::new(128, a.octets()), 0).is_ok()
            }
        };
        let dir = match q.direction {
            crate::model::group::Direction::Inbound => Direction::Ingress,
            crate::model::group::Direction::Outbound => Direction::Egress,
        };
        // ICMP: the programs key rules by type << 8 | code.
        let port = if matches!(q.proto, 1 | 58) {
            q.port << 8
        } else {
            q.port
        };
        let rule = |policy_id: u32| -> Result<Option<u32>> {
            let sc = scope(policy_id, dir);
            let class = match q.remote {
                std::net::IpAddr::V4(a) => {
                    peers::lookup(&self.ebpf, PEER_SCOPE_BITS + 32, PeerKeyV4::new(sc, a))?
                }
                std::net::IpAddr::V6(a) => {
                    peers::lookup(&self.ebpf, PEER_SCOPE_BITS + 128, PeerKeyV6::new(sc, a))?
                }
            };
            let Some(class) = class else { return Ok(None) };
            if class.all_cookie != 0 {
                return Ok(Some(class.all_cookie));
            }
            let key = PortKey::new(class.class_id, q.proto, port);
            Ok(peers::lookup_port(&self.ebpf, key)?.map(|r| r.cookie))
        };
        let name = |cookie: u32| {
            cookies
                .rule(cookie)
                .map_or(format!("cookie {cookie}"), |r| {
                    format!("{} {:?} rule #{}", r.group, r.direction, r.index).to_lowercase()
                })
        };
        let (verdict, by) = if always {
            (Verdict::Allow, Some("always allowed".to_string()))
        } else {
            match rule(info.policy_id)? {
                None => (Verdict::Drop, None),
                Some(c) if info.node_policy_id == 0 => (Verdict::Allow, Some(name(c))),
                Some(c) => match rule(info.node_policy_id)? {
                    Some(n) => (
                        Verdict::Allow,
                        Some(format!("{}; node groups: {}", name(c), name(n))),
                    ),
                    None => (
                        Verdict::Drop,
                        Some(format!("{}; no node group rule", name(c))),
                    ),
                },
            }
        };
        Ok(Some(KernelView {
            verdict,
            by,
            agrees: verdict == e.verdict,
        }))
    }
}
