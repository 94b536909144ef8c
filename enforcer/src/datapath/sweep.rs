//! Removing flows the programs will not: idle ones they never hit again, and those of
//! pods that are gone. Each removal that succeeds gives the pod's share back.
use std::collections::HashMap;

use anyhow::Result;
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use enforcer_common::*;

use crate::datapath::kernel::{Datapath, map_mut};

/// CLOCK_MONOTONIC_COARSE, the clock `bpf_ktime_get_coarse_ns` reads.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Datapath {
    /// Removes idle flows (the programs only notice the ones they hit), and flows whose
    /// pod is gone (slot free, or the address no longer that pod's). Half-open TCP of a
    /// pod holding more than half its share goes after the short pressure timeout.
    pub fn sweep_flows(&mut self, cfg: &NodeConfig) -> Result<usize> {
        let now = coarse_now_ns();
        let mut owned: HashMap<u32, Vec<[u8; 16]>> = HashMap::new();
        for p in self
            .current
            .pods_by_vlan
            .values()
            .chain(self.current.pods_by_ifindex.values())
        {
            let mut v4 = [0u8; 16];
            v4[..4].copy_from_slice(&p.ipv4);
            owned
                .entry(p.slot)
                .or_default()
                .extend([v4, p.ipv6, p.ipv6_ll]);
        }
        let counts = self.flow_counts()?;
        let dead: Vec<(FlowKey, FlowValue)> = self
            .flows()?
            .into_iter()
            .filter(|(k, v)| {
                let live = counts.get(v.slot as usize).copied().unwrap_or(0);
                let timeout = enforcer_common::flow::idle_limit(cfg, v.state, live);
                now.saturating_sub(v.last_seen_ns) > timeout
                    || !owned.get(&v.slot).is_some_and(|a| a.contains(&k.local))
            })
            .collect();
        self.remove_flows(&dead)
    }

    /// `enforcer flows flush`: removes every flow of `slot`'s pod (its next packets are
    /// judged by the rules afresh). Returns how many went.
    pub fn flush_flows(&mut self, slot: u32) -> Result<usize> {
        let mine: Vec<(FlowKey, FlowValue)> = self
            .flows()?
            .into_iter()
            .filter(|(_, v)| v.slot == slot)
            .collect();
        self.remove_flows(&mine)
    }

    /// Removes `dead` (with their NAT mappings) and gives each pod's share back.
    fn remove_flows(&mut self, dead: &[(FlowKey, FlowValue)]) -> Result<usize> {
        let mut removed: HashMap<u32, u64> = HashMap::new();
        {
            let mut m: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
                map_mut(&mut self.ebpf, map_names::FLOWS)?.try_into()?;
            for (k, v) in dead {
                // Only a delete that succeeded gives the share back: a program may
                // have removed the entry first, and then it did.
                if m.remove(k).is_ok() {
                    *removed.entry(v.slot).or_default() += 1;
                }
            }
        }
        if !dead.is_empty() {
            self.new_cache_epoch()?;
        }
        self.release_mappings(dead)?;
        let mut swept: Array<&mut MapData, u64> =
            map_mut(&mut self.ebpf, map_names::FLOW_SWEPT)?.try_into()?;
        for (slot, n) in &removed {
            if *slot < MAX_PODS {
                let before = swept.get(slot, 0)?;
                swept.set(*slot, before + n, 0)?;
            }
        }
        Ok(removed.values().sum::<u64>() as usize)
    }

    /// NAT mappings of the removed flows, and any whose pod is gone (its interface no
    /// longer a pod's): a mapping lives exactly as long as its flow and its pod.
    fn release_mappings(&mut self, removed: &[(FlowKey, FlowValue)]) -> Result<()> {
        let pods = self.current.pods_by_ifindex.clone();
        let mut m: BpfHashMap<&mut MapData, SnatKey, SnatValue> =
            map_mut(&mut self.ebpf, map_names::SNAT_REV)?.try_into()?;
        for (k, v) in removed {
            if v.path == PATH_SNAT {
                let _ = m.remove(&SnatKey::of_flow(k, v.nat_port));
            }
        }
        let orphans: Vec<SnatKey> = m
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| !pods.contains_key(&v.pod_ifindex))
            .map(|(k, _)| k)
            .collect();
        for k in orphans {
            let _ = m.remove(&k);
        }
        Ok(())
    }
}
