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
            peers_v4: lpm(e, map_names::PEER_V4)?,
            peers_v6: lpm(e, map_names::PEER_V6)?,
            ports: lpm(e, map_names::PORT_RULES)?,
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
