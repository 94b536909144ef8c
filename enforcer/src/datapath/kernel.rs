//! The loaded programs and maps: load (adopting a previous daemon's pins), node
//! settings, counter slots, attachments. Writing state (`writer`), reading it back
//! (`readers`), sweeping flows (`sweep`) and pin checks (`pins`) are beside it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::SchedClassifier,
};
use enforcer_common::*;

use crate::datapath::links::{self, Attached, LinkKind, Prog, TcLink};
use crate::datapath::migrate;
use crate::datapath::peers;
use crate::datapath::pins::{adopt_unversioned, check_layout, ensure_bpffs};
use crate::datapath::state::KernelState;

/// The eBPF object, built by `enforcer/build.rs` and embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

pub struct Datapath {
    pub(super) ebpf: Ebpf,
    /// What the maps hold (as last written, or read back when adopted).
    pub(super) current: KernelState,
    /// Prefix lengths of `current`'s peers, per family (where they go: `peers`).
    pub(super) lens: [peers::LenCounts; 2],
    pin_dir: Option<PathBuf>,
    trunk: Option<TcLink>,
    /// The trunk's XDP pre-filter, or why it is not attached.
    trunk_xdp: Result<TcLink, String>,
    primary: Option<TcLink>,
    /// (host interface name, which of its two hooks) -> the link
    pod_links: HashMap<(String, LinkKind), TcLink>,
    /// The maps were already pinned: a previous daemon's state is in them.
    adopted: bool,
    /// An older layout's datapath, still running until `finish_migration`.
    migration: Option<migrate::Migration>,
}

pub(super) fn map_err(map: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("map {map}: {e}")
}

pub(super) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// A random non-zero word for this load's `trunk_xdp` to vouch for replies to its
/// `trunk_ingress` with (`enforcer_common::vouch`): another load's or another program's
/// metadata never matches it. `PODSG_VOUCH=off` in the environment sets none, so TC
/// finds every reply's copy itself (to compare the two, or to rule the metadata out).
fn vouch_cookie() -> Result<u32> {
    use std::io::Read;
    if std::env::var("PODSG_VOUCH").is_ok_and(|v| v == "off") {
        log::info!("PODSG_VOUCH=off: trunk_xdp vouches for no reply");
        return Ok(0);
    }
    let mut word = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut word))
        .context("reading /dev/urandom for the XDP-to-TC cookie")?;
    Ok(u32::from_ne_bytes(word).max(1))
}

/// Sizes the programs' caches for every CPU the kernel may bring up
/// (`enforcer_common::cache`): each CPU's slots are its own stretch of one array.
fn size_caches(loader: &mut EbpfLoader) -> Result<()> {
    use enforcer_common::cache::{
        FLOW_CACHE, FLOW_CACHE_SLOTS, POD_CACHE, POD_CACHE_SLOTS, entries,
    };
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| anyhow!("counting the possible CPUs ({what}): {e}"))?;
    let cpus = u32::try_from(cpus).context("counting the possible CPUs")?;
    loader.map_max_entries(POD_CACHE, entries(POD_CACHE_SLOTS, cpus));
    loader.map_max_entries(FLOW_CACHE, entries(FLOW_CACHE_SLOTS, cpus));
    Ok(())
}

pub(super) fn map_ref<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

impl Datapath {
    /// Loads the programs into the kernel (not attached yet). With `pin_dir`, the maps
    /// are pinned in its directory for this layout version (for bpftool, and so they
    /// outlive the process); maps a previous daemon of this layout pinned are reused,
    /// entries and all, and `current()` then describes what they hold. An older
    /// layout's datapath is migrated from (`migration()`, finished by
    /// `finish_migration` once the links may move); a newer one's, or one that can't be
    /// carried, is refused and left running.
    pub fn load(pin_dir: Option<&Path>) -> Result<Datapath> {
        let cookie = vouch_cookie()?;
        let mut loader = EbpfLoader::new();
        loader.override_global(enforcer_common::vouch::VOUCH_COOKIE, &cookie, true);
        size_caches(&mut loader)?;
        let mut adopted = false;
        let mut migration = None;
        let ours = pin_dir.map(migrate::our_dir);
        if let (Some(dir), Some(ours)) = (pin_dir, &ours) {
            ensure_bpffs(dir)?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating pin dir {}", dir.display()))?;
            if adopt_unversioned(dir, ours)? {
                log::info!(
                    "moved the unversioned pinned maps of this layout into {}",
                    ours.display()
                );
            }
            // The newest other layout is the one running (older ones are leftovers of
            // a migration cut short, removed when this one finishes).
            if let Some(other) = migrate::others(dir).pop() {
                migration = Some(migrate::plan(other)?);
            }
            std::fs::create_dir_all(ours)
                .with_context(|| format!("creating pin dir {}", ours.display()))?;
            for name in map_names::ALL {
                let path = ours.join(name);
                if path.exists() {
                    check_layout(name, &path)?;
                    adopted = true;
                }
                loader.map_pin_path(name, path);
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the eBPF object into the kernel (are we root, with BPF enabled?)")?;
        for name in prog_names::ALL {
            let p = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
            let loaded = match p {
                aya::programs::Program::Xdp(p) => p.load(),
                p => <&mut SchedClassifier>::try_from(p)?.load(),
            };
            loaded.with_context(|| format!("verifier rejected program {name}"))?;
            // How close each program is to the verifier's limit of 1 000 000.
            if let Some(n) = ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count())
            {
                log::debug!("program {name}: the verifier walked {n} instructions");
            }
        }
        // pod_egress and trunk_ingress tail-call their full programs for what their
        // fast paths do not forward, and pod_egress_full tail-calls pod_host_local for
        // traffic to another pod of the node.
        for (slot, name) in [
            (
                enforcer_common::tail::HOST_LOCAL,
                prog_names::POD_HOST_LOCAL,
            ),
            (
                enforcer_common::tail::EGRESS_FULL,
                prog_names::POD_EGRESS_FULL,
            ),
            (
                enforcer_common::tail::TRUNK_FULL,
                prog_names::TRUNK_INGRESS_FULL,
            ),
        ] {
            let fd = {
                let p: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("program {name} missing"))?
                    .try_into()?;
                p.fd()?.try_clone()?
            };
            let mut calls: aya::maps::ProgramArray<&mut MapData> =
                map_mut(&mut ebpf, map_names::TAIL_CALLS)?.try_into()?;
            calls
                .set(slot, &fd, 0)
                .map_err(|e| map_err(map_names::TAIL_CALLS, e))?;
        }
        if let (Some(m), Some(ours), false) = (&mut migration, &ours, adopted)
            && let Err(e) = m.first_pass(ours)
        {
            // Nothing moved yet: the old datapath runs on; ours goes.
            migrate::remove(&migrate::Other {
                version: Some(enforcer_common::maps::LAYOUT_VERSION),
                dir: ours.clone(),
            });
            return Err(e.context(format!("migrating from {}", m.from)));
        }
        if let (Some(dir), None) = (pin_dir, &migration) {
            migrate::point_maps_at(dir, enforcer_common::maps::LAYOUT_VERSION)?;
        }
        let mut dp = Datapath {
            ebpf,
            current: KernelState::default(),
            lens: Default::default(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            trunk: None,
            trunk_xdp: Err("not attached yet".into()),
            primary: None,
            pod_links: HashMap::new(),
            adopted,
            migration,
        };
        if adopted {
            dp.current = dp.read_state()?;
            dp.lens = [
                peers::LenCounts::of(&dp.current.peers_v4),
                peers::LenCounts::of(&dp.current.peers_v6),
            ];
        }
        Ok(dp)
    }

    /// The layout being migrated from, until `finish_migration`.
    pub fn migration(&self) -> Option<&migrate::Other> {
        self.migration.as_ref().map(|m| &m.from)
    }

    /// Once every pod is written: moves every pinned link (those of interfaces no pod
    /// wants too) to this build's programs, copies what the old programs did meanwhile,
    /// and unpins the old maps. Returns what it did, for the log.
    pub fn finish_migration(&mut self) -> Result<String> {
        let Some(mut m) = self.migration.take() else {
            return Ok(String::new());
        };
        let dir = self.pin_dir.clone().context("no pin directory")?;
        let mut moved = 0;
        for (kind, ifname) in links::pinned(&dir) {
            let taken = match kind {
                LinkKind::Trunk => self.trunk.is_some(),
                LinkKind::TrunkXdp => self.trunk_xdp.is_ok(),
                LinkKind::Primary => self.primary.is_some(),
                _ => self.pod_links.contains_key(&(ifname.clone(), kind)),
            };
            if taken {
                continue;
            }
            let link = self.attach(kind, &ifname)?;
            moved += 1;
            match kind {
                LinkKind::Trunk => self.trunk = Some(link),
                LinkKind::TrunkXdp => self.trunk_xdp = Ok(link),
                LinkKind::Primary => self.primary = Some(link),
                _ => {
                    self.pod_links.insert((ifname, kind), link);
                }
            }
        }
        let ours = migrate::our_dir(&dir);
        if let Err(e) = m.last_pass(&ours) {
            // The old maps stay pinned: a restarted daemon copies their entries again.
            self.migration = Some(m);
            return Err(e);
        }
        migrate::point_maps_at(&dir, enforcer_common::maps::LAYOUT_VERSION)?;
        let mut removed = 0;
        for other in migrate::others(&dir) {
            removed += migrate::remove(&other).len();
        }
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        Ok(format!(
            "migrated from {}: {} entries and counters carried, {moved} more links moved, {removed} old pins removed; {:.0} ms in all (sources included), old and new programs both attached for {:.1} ms",
            m.from,
            m.entries,
            ms(m.began),
            m.first_link_moved.map_or(0.0, ms)
        ))
    }

    /// Whether the maps were a previous daemon's (pinned), now adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
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
        let r = a
            .set(0, cfg, 0)
            .map_err(|e| map_err(map_names::NODE_CONFIG, e));
        self.new_cache_epoch()?;
        r
    }

    /// Ends the programs' cached copies of pods and flows (per CPU, see the eBPF
    /// `cache` module): called after every change to the pod maps, the flow table or
    /// the node's settings, so no copy serves past the change; also by whoever wrote
    /// those maps directly (tests).
    pub fn new_cache_epoch(&mut self) -> Result<()> {
        let mut a: Array<&mut MapData, u64> =
            map_mut(&mut self.ebpf, map_names::CACHE_EPOCH)?.try_into()?;
        let now = a
            .get(&0, 0)
            .map_err(|e| map_err(map_names::CACHE_EPOCH, e))?;
        a.set(0, now.wrapping_add(1), 0)
            .map_err(|e| map_err(map_names::CACHE_EPOCH, e))
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

    /// Attaches (or adopts the pinned link of) `kind`'s program on `ifname`.
    fn attach(&mut self, kind: LinkKind, ifname: &str) -> Result<TcLink> {
        let ifindex = crate::netdev::ifindex(ifname)
            .ok_or_else(|| anyhow!("interface {ifname} does not exist"))?;
        let prog = kind.program();
        let pin_dir = self.pin_dir.clone();
        let handle = match kind {
            LinkKind::TrunkXdp => Prog::Xdp(
                self.ebpf
                    .program_mut(prog)
                    .ok_or_else(|| anyhow!("program {prog} missing"))?
                    .try_into()?,
            ),
            _ => Prog::Tc(self.program(prog)?),
        };
        let (link, how) = links::attach(handle, pin_dir.as_deref(), kind, ifname, ifindex)
            .with_context(|| format!("attaching {prog} to {ifname}"))?;
        if let Some(m) = &mut self.migration
            && m.first_link_moved.is_none()
        {
            m.first_link_moved = Some(std::time::Instant::now());
        }
        if how == Attached::Adopted {
            log::info!("{ifname}: adopted the pinned link, now running this daemon's {prog}");
        }
        Ok(link)
    }

    /// The trunk's TC program, then (with `xdp`) its XDP pre-filter in front. The
    /// pre-filter is an optimisation: where it cannot attach (a driver without native
    /// XDP) TC enforces the same, and the reason is kept for `status`.
    pub fn attach_trunk(&mut self, ifname: &str, xdp: bool) -> Result<()> {
        let link = self.attach(LinkKind::Trunk, ifname).with_context(|| {
            format!("trunk interface {ifname} (does it exist, and is it the trunk?)")
        })?;
        self.trunk = Some(link);
        self.trunk_xdp = if xdp {
            self.attach(LinkKind::TrunkXdp, ifname)
                .map_err(|e| format!("{e:#}"))
        } else {
            if let (Some(dir), Some(ifindex)) = (&self.pin_dir, crate::netdev::ifindex(ifname))
                && links::detach_pin(dir, LinkKind::TrunkXdp, ifindex, ifname)?
            {
                log::info!("{ifname}: detached the XDP pre-filter (node.trunkXdp is false)");
            }
            Err("turned off (node.trunkXdp: false)".into())
        };
        Ok(())
    }

    /// Whether the trunk's XDP pre-filter runs, or why not.
    pub fn trunk_xdp(&self) -> Result<(), &str> {
        self.trunk_xdp.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The primary ENI's program: replies to source-NATed flows find their pod.
    pub fn attach_primary(&mut self, ifname: &str) -> Result<()> {
        let link = self.attach(LinkKind::Primary, ifname).with_context(|| {
            format!("primary interface {ifname} (node.primaryInterface: does it exist?)")
        })?;
        self.primary = Some(link);
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
        let stale: Vec<(String, LinkKind)> = self
            .pod_links
            .iter()
            .filter(|((name, _), l)| crate::netdev::ifindex(name) != Some(l.ifindex))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(link) = self.pod_links.remove(&key) {
                let prog = self.program(key.1.program()).ok();
                links::detach(prog, link);
            }
        }
        for name in wanted {
            if crate::netdev::ifindex(name).is_none() {
                continue;
            }
            // Both hooks, the pod's way out first (its traffic is the larger risk).
            for kind in LinkKind::POD {
                let key = (name.clone(), kind);
                if self.pod_links.contains_key(&key) {
                    continue;
                }
                match self.attach(kind, name) {
                    Ok(link) => {
                        self.pod_links.insert(key, link);
                    }
                    Err(e) => {
                        errors.push((name.clone(), e));
                        break;
                    }
                }
            }
        }
        errors
    }

    /// True when an attached interface is gone or was re-created (new ifindex): the
    /// CNI restarted the pod's sandbox and the pod needs attaching again.
    pub fn links_stale(&self) -> bool {
        self.pod_links
            .iter()
            .any(|((name, _), l)| crate::netdev::ifindex(name) != Some(l.ifindex))
    }

    /// Whether `ifname` has both pod programs attached.
    pub fn is_attached(&self, ifname: &str) -> bool {
        LinkKind::POD
            .iter()
            .all(|k| self.pod_links.contains_key(&(ifname.to_string(), *k)))
    }

    /// Pod host interfaces with both their programs attached.
    pub fn attached_pods(&self) -> usize {
        self.pod_links
            .keys()
            .filter(|(name, kind)| {
                *kind == LinkKind::Pod
                    && self
                        .pod_links
                        .contains_key(&(name.clone(), LinkKind::PodIn))
            })
            .count()
    }
}

/// The kernel's node settings from the config and the interface indexes of the trunk
/// and the primary ENI (0: none, and no source NAT).
pub fn kernel_node_config(
    cfg: &crate::config::Config,
    trunk_ifindex: u32,
    primary_ifindex: u32,
) -> NodeConfig {
    let snat = cfg.snat_enabled() && primary_ifindex != 0;
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
        node_ipv4: match cfg.node.primary_ipv4 {
            Some(std::net::IpAddr::V4(a)) => a.octets(),
            _ => [0; 4],
        },
        primary_ifindex,
        // A zero range tells the programs there is no source NAT on this node.
        snat_port_min: if snat { cfg.node.snat_ports.min } else { 0 },
        snat_port_max: if snat { cfg.node.snat_ports.max } else { 0 },
        snat_probes: cfg.node.snat_probes,
    }
}
