//! The loaded programs and maps: load, pin, write state diffs, attach, read counters.
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key,
    },
    programs::SchedClassifier,
};
use enforcer_common::*;

use crate::datapath::links::{self, Attached, LinkKind, TcLink};
use crate::datapath::state::KernelState;

/// The eBPF object, built by `enforcer/build.rs` and embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

pub struct Datapath {
    ebpf: Ebpf,
    current: KernelState,
    pin_dir: Option<PathBuf>,
    trunk: Option<TcLink>,
    /// host interface name -> its link
    pod_links: HashMap<String, TcLink>,
    /// The maps were already pinned: a previous daemon's state is in them.
    adopted: bool,
}

fn map_err(map: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("map {map}: {e}")
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
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

#[derive(Clone, Copy)]
enum Phase {
    Upsert,
    Remove,
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Pins need a bpf filesystem above `dir`. A node that never mounted one (fresh VM,
/// minimal host) gets it mounted at the parent, as Cilium's agent does.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mount_at = dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let c = std::ffi::CString::new(mount_at.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs is plain C data; all zeroes is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs buffer, both alive for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(mount_at)
        .with_context(|| format!("creating {}", mount_at.display()))?;
    let fs = std::ffi::CString::new("bpf")?;
    // SAFETY: NUL-terminated strings alive for the call; no mount data.
    if unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(anyhow!(
            "{} is not a bpf filesystem and mounting one there failed: {} (mount -t bpf bpf {})",
            mount_at.display(),
            std::io::Error::last_os_error(),
            mount_at.display()
        ));
    }
    Ok(())
}

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
    /// Loads the programs into the kernel (not attached yet). With `pin_dir`, the maps
    /// are pinned there (for bpftool, and so they outlive the process); maps a previous
    /// daemon pinned are reused, entries and all, after checking they have this build's
    /// layout, and `current()` then describes what they hold.
    pub fn load(pin_dir: Option<&Path>) -> Result<Datapath> {
        let mut loader = EbpfLoader::new();
        let mut adopted = false;
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                ensure_bpffs(dir)?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating pin dir {}", dir.display()))?;
                map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            if path.exists() {
                check_layout(name, path)?;
                adopted = true;
            }
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the eBPF object into the kernel (are we root, with BPF enabled?)")?;
        for name in prog_names::ALL {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("verifier rejected program {name}"))?;
        }
        let mut dp = Datapath {
            ebpf,
            current: KernelState::default(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            trunk: None,
            pod_links: HashMap::new(),
            adopted,
        };
        if adopted {
            dp.current = dp.read_state()?;
        }
        Ok(dp)
    }

    /// Whether the maps were a previous daemon's (pinned), now adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// What the rule and pod tables hold now, read back from the kernel.
    fn read_state(&self) -> Result<KernelState> {
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
            pods_by_vlan: hash(e, map_names::POD_BY_VLAN)?,
            pods_by_ifindex: hash(e, map_names::POD_BY_IFINDEX)?,
        })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }

    pub fn set_node_config(&mut self, cfg: &NodeConfig) -> Result<()> {
        let mut a: Array<&mut MapData, NodeConfig> =
            map_mut(&mut self.ebpf, map_names::NODE_CONFIG)?.try_into()?;
        a.set(0, cfg, 0)
            .map_err(|e| map_err(map_names::NODE_CONFIG, e))
    }

    /// Brings the maps from the current state to `new`, in an order that keeps every
    /// packet's view consistent: rule tables first, then the pods' policy ids (the
    /// atomic flip), then removal of whatever nothing refers to any more.
    pub fn apply(&mut self, new: KernelState) -> Result<()> {
        let old = std::mem::take(&mut self.current);
        let e = &mut self.ebpf;
        let r = (|| -> Result<()> {
            diff_lpm(
                e,
                map_names::PORT_RULES,
                &old.ports,
                &new.ports,
                Phase::Upsert,
            )?;
            diff_lpm(
                e,
                map_names::PEER_V4,
                &old.peers_v4,
                &new.peers_v4,
                Phase::Upsert,
            )?;
            diff_lpm(
                e,
                map_names::PEER_V6,
                &old.peers_v6,
                &new.peers_v6,
                Phase::Upsert,
            )?;
            diff_lpm(
                e,
                map_names::ALWAYS_V4,
                &old.always_v4,
                &new.always_v4,
                Phase::Upsert,
            )?;
            diff_lpm(
                e,
                map_names::ALWAYS_V6,
                &old.always_v6,
                &new.always_v6,
                Phase::Upsert,
            )?;
            diff_hash(
                e,
                map_names::POD_BY_VLAN,
                &old.pods_by_vlan,
                &new.pods_by_vlan,
                Phase::Upsert,
            )?;
            diff_hash(
                e,
                map_names::POD_BY_IFINDEX,
                &old.pods_by_ifindex,
                &new.pods_by_ifindex,
                Phase::Upsert,
            )?;
            diff_hash(
                e,
                map_names::POD_BY_VLAN,
                &old.pods_by_vlan,
                &new.pods_by_vlan,
                Phase::Remove,
            )?;
            diff_hash(
                e,
                map_names::POD_BY_IFINDEX,
                &old.pods_by_ifindex,
                &new.pods_by_ifindex,
                Phase::Remove,
            )?;
            diff_lpm(
                e,
                map_names::ALWAYS_V4,
                &old.always_v4,
                &new.always_v4,
                Phase::Remove,
            )?;
            diff_lpm(
                e,
                map_names::ALWAYS_V6,
                &old.always_v6,
                &new.always_v6,
                Phase::Remove,
            )?;
            diff_lpm(
                e,
                map_names::PEER_V4,
                &old.peers_v4,
                &new.peers_v4,
                Phase::Remove,
            )?;
            diff_lpm(
                e,
                map_names::PEER_V6,
                &old.peers_v6,
                &new.peers_v6,
                Phase::Remove,
            )?;
            diff_lpm(
                e,
                map_names::PORT_RULES,
                &old.ports,
                &new.ports,
                Phase::Remove,
            )?;
            Ok(())
        })();
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

    pub fn current(&self) -> &KernelState {
        &self.current
    }

    pub fn zero_counters(&mut self, slot: u32) -> Result<()> {
        let mut c: PerCpuArray<&mut MapData, Counter> =
            map_mut(&mut self.ebpf, map_names::COUNTERS)?.try_into()?;
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for r in Reason::ALL {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); n])?;
            c.set(counter_index(slot, r), zeros, 0)?;
        }
        // The slot's flow share starts empty too (no pod uses the slot yet, so no
        // program is counting on it).
        for name in [map_names::FLOW_COUNT, map_names::FLOW_SWEPT] {
            let mut a: Array<&mut MapData, u64> = map_mut(&mut self.ebpf, name)?.try_into()?;
            a.set(slot, 0, 0).map_err(|e| map_err(name, e))?;
        }
        Ok(())
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

    /// Live flow entries of each pod slot, as the programs count them.
    pub fn flow_counts(&self) -> Result<Vec<u64>> {
        let added: Array<&MapData, u64> = map_ref(&self.ebpf, map_names::FLOW_COUNT)?.try_into()?;
        let swept: Array<&MapData, u64> = map_ref(&self.ebpf, map_names::FLOW_SWEPT)?.try_into()?;
        (0..MAX_PODS)
            .map(|i| Ok(added.get(&i, 0)?.saturating_sub(swept.get(&i, 0)?)))
            .collect()
    }

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
        let dead: Vec<(FlowKey, u32)> = self
            .flows()?
            .into_iter()
            .filter(|(k, v)| {
                let live = counts.get(v.slot as usize).copied().unwrap_or(0);
                let timeout = enforcer_common::flow::idle_limit(cfg, v.state, live);
                now.saturating_sub(v.last_seen_ns) > timeout
                    || !owned.get(&v.slot).is_some_and(|a| a.contains(&k.local))
            })
            .map(|(k, v)| (k, v.slot))
            .collect();
        let mut removed: HashMap<u32, u64> = HashMap::new();
        {
            let mut m: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
                map_mut(&mut self.ebpf, map_names::FLOWS)?.try_into()?;
            for (k, slot) in &dead {
                // Only a delete that succeeded gives the share back: a program may
                // have removed the entry first, and then it did.
                if m.remove(k).is_ok() {
                    *removed.entry(*slot).or_default() += 1;
                }
            }
        }
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

    /// Attaches (or adopts the pinned link of) a program on `ifname`'s TC ingress.
    fn attach(&mut self, kind: LinkKind, ifname: &str) -> Result<TcLink> {
        let ifindex = crate::netdev::ifindex(ifname)
            .ok_or_else(|| anyhow!("interface {ifname} does not exist"))?;
        let prog = match kind {
            LinkKind::Trunk => prog_names::TRUNK_INGRESS,
            LinkKind::Pod => prog_names::POD_EGRESS,
        };
        let pin_dir = self.pin_dir.clone();
        let (link, how) = links::attach(
            self.program(prog)?,
            pin_dir.as_deref(),
            kind,
            ifname,
            ifindex,
        )
        .with_context(|| format!("attaching {prog} to {ifname}"))?;
        if how == Attached::Adopted {
            log::info!("{ifname}: adopted the pinned link, now running this daemon's {prog}");
        }
        Ok(link)
    }

    pub fn attach_trunk(&mut self, ifname: &str) -> Result<()> {
        let link = self.attach(LinkKind::Trunk, ifname).with_context(|| {
            format!("trunk interface {ifname} (does it exist, and is it the trunk?)")
        })?;
        self.trunk = Some(link);
        Ok(())
    }

    /// Removes pins of links whose interface is gone or was re-created, left by an
    /// earlier daemon; returns their names.
    pub fn remove_stale_link_pins(&self) -> Vec<String> {
        match &self.pin_dir {
            Some(dir) => links::remove_stale_pins(dir, &crate::netdev::ifindex),
            None => Vec::new(),
        }
    }

    /// Attaches the pod program to every wanted host interface not yet attached (or
    /// re-created with a new ifindex). Links stay on interfaces that still exist even
    /// when their pod is gone: with no pod entry the program drops everything, which is
    /// safer than letting the interface's traffic reach the node unfiltered.
    pub fn sync_pod_links(&mut self, wanted: &[String]) -> Vec<(String, anyhow::Error)> {
        let mut errors = Vec::new();
        let stale: Vec<String> = self
            .pod_links
            .iter()
            .filter(|(name, l)| crate::netdev::ifindex(name) != Some(l.ifindex))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(link) = self.pod_links.remove(&name) {
                let prog = self.program(prog_names::POD_EGRESS).ok();
                links::detach(prog, link);
            }
        }
        for name in wanted {
            if self.pod_links.contains_key(name) || crate::netdev::ifindex(name).is_none() {
                continue;
            }
            match self.attach(LinkKind::Pod, name) {
                Ok(link) => {
                    self.pod_links.insert(name.clone(), link);
                }
                Err(e) => errors.push((name.clone(), e)),
            }
        }
        errors
    }

    /// Entries in use and capacity of each table the daemon fills, and of the flow table.
    pub fn fill_levels(&self, flows: usize) -> std::collections::BTreeMap<String, [usize; 2]> {
        self.current.fill_levels(flows)
    }

    /// True when an attached interface is gone or was re-created (new ifindex): the
    /// CNI restarted the pod's sandbox and the pod needs attaching again.
    pub fn links_stale(&self) -> bool {
        self.pod_links
            .iter()
            .any(|(name, l)| crate::netdev::ifindex(name) != Some(l.ifindex))
    }

    pub fn attached_pods(&self) -> usize {
        self.pod_links.len()
    }
}

/// A pinned map must have the layout this build's programs expect; a map of another
/// layout means another version's datapath is running. It is refused, and left alone
/// (and enforcing), rather than reused with the wrong layout.
fn check_layout(name: &str, path: &Path) -> Result<()> {
    let info = aya::maps::MapInfo::from_pin(path)
        .with_context(|| format!("reading pinned map {}", path.display()))?;
    let Some(spec) = enforcer_common::maps::spec_of(name) else {
        return Ok(());
    };
    let have = (info.key_size(), info.value_size(), info.max_entries());
    let want = (spec.key_size, spec.value_size, spec.capacity);
    if have != want {
        anyhow::bail!(
            "pinned map {} has key/value size and capacity {have:?}, this build (layout \
             version {}) needs {want:?}: it belongs to another podsg version, which stays \
             attached and enforcing. Upgrade in place is not supported by this version: \
             run `enforcer uninstall` (which detaches enforcement) and start this daemon again",
            path.display(),
            enforcer_common::maps::LAYOUT_VERSION,
        );
    }
    Ok(())
}

/// The kernel's node settings from the config and the trunk's interface index.
pub fn kernel_node_config(cfg: &crate::config::Config, trunk_ifindex: u32) -> NodeConfig {
    let t = &cfg.node.timeouts;
    let s = |secs: u64| secs.saturating_mul(1_000_000_000);
    NodeConfig {
        trunk_ifindex,
        _pad0: 0,
        gateway_mac: cfg.node.gateway_mac.octets(),
        _pad1: [0; 2],
        timeouts_ns: {
            let mut a = [s(t.other); FLOW_STATES];
            a[FLOW_TCP_SYN as usize] = s(t.tcp_syn_sent);
            a[FLOW_TCP_ESTABLISHED as usize] = s(t.tcp_established);
            a[FLOW_TCP_CLOSING as usize] = s(t.tcp_closing);
            a[FLOW_UDP as usize] = s(t.udp);
            a[FLOW_UDP_STREAM as usize] = s(t.udp_stream);
            a[FLOW_ICMP as usize] = s(t.icmp);
            a
        },
        node_ipv6: match cfg.node.primary_ipv6 {
            Some(std::net::IpAddr::V6(a)) => a.octets(),
            _ => [0; 16],
        },
        flows_per_pod: cfg.node.flows_per_pod,
        _pad2: 0,
        syn_pressure_timeout_ns: s(t.tcp_syn_sent_under_pressure),
    }
}
