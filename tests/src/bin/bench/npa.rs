//! The AWS network policy agent's programs (NPA, `aws/aws-network-policy-agent`,
//! `tc.v4egress.bpf.c` and `tc.v4ingress.bpf.c`, or their `v6` twins) as a peer in
//! `bench compare`, when the operator hands the bench objects built from NPA's own
//! sources: `PODSG_BENCH_NPA=<directory holding tc.v{4,6}{egress,ingress}.bpf.o>`. NPA
//! runs one family's programs on a node (a cluster is IPv4 or IPv6); the bench builds
//! a node of each.
//! Nothing of NPA is part of this repository; this module loads what it is given,
//! attaches the programs where NPA does (the pod's host interface: TC ingress for the
//! pod's egress, TC egress for what reaches the pod) and fills their maps as NPA's agent
//! would for the bench's rules.
//!
//! What each object must be (NPA's loader is its own Go SDK, not aya): its program
//! (`handle_egress`, `handle_ingress`) in a section aya knows as TC (`classifier`), and
//! the two maps NPA shares between its programs (`aws_conntrack_map`, `policy_events`)
//! defined in the object itself (NPA's events object defines them: LRU hash of 512 Ki
//! flows, ring of 512 KiB), as legacy `maps` definitions. The two objects share them
//! here as in NPA: pinned by the first, opened by the second.
//!
//! NPA's maps for one pod, as its agent writes them (pkg/ebpf, pkg/utils):
//! - `egress_pod_state_map`: key 0 (network policy) = 0, policies applied; key 1
//!   (cluster policy) = 1, default allow (no cluster policy here, so it passes);
//! - `egress_map`: an LPM trie keyed by destination prefix (4 or 16 bytes after the
//!   length, by family), each value 24 slots of
//!   {protocol, start port, end port}, unused slots zero (the program walks all 24);
//! - `cp_egress_map` stays empty (no cluster policy).
//!
//! Its events are read as NPA's agent reads them (a ring buffer, drained by a thread), so
//! a full ring does not make its new-flow and deny paths cheaper than they are.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};

/// The objects of a family's egress and ingress programs.
fn files(v6: bool) -> [&'static str; 2] {
    if v6 {
        ["tc.v6egress.bpf.o", "tc.v6ingress.bpf.o"]
    } else {
        ["tc.v4egress.bpf.o", "tc.v4ingress.bpf.o"]
    }
}

/// The environment variable naming the directory of NPA's built objects.
pub const OBJECT_VAR: &str = "PODSG_BENCH_NPA";
const EGRESS: &str = "handle_egress";
const INGRESS: &str = "handle_ingress";
/// The maps NPA's programs share.
const SHARED: [&str; 2] = ["aws_conntrack_map", "policy_events"];
/// Slots of {protocol, start port, end port} per destination prefix (NPA's
/// MAX_PORT_PROTOCOL).
const SLOTS: usize = 24;
const PROTO_TCP: u32 = 6;
const PROTO_UDP: u32 = 17;

/// The objects' directory, if the operator gave one.
pub fn objects() -> Option<std::path::PathBuf> {
    std::env::var_os(OBJECT_VAR).map(Into::into)
}

/// NPA's programs attached to a host interface, their maps filled; detached when
/// dropped, and the shared maps' pins removed.
pub struct Npa {
    _egress: aya::Ebpf,
    _ingress: aya::Ebpf,
    _pins: PinDir,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// Events read from its ring (checked: its paths really emitted them).
    pub events: Arc<AtomicU64>,
}

impl Drop for Npa {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The shared maps' pin directory, removed when dropped (also when loading fails).
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fills a pod-state map as NPA's agent does for a pod under policy: network policy
/// (key 0) "policies applied" (0); cluster policy (key 1) "default allow" (1), as no
/// cluster policy exists.
fn pod_state(ebpf: &mut aya::Ebpf, name: &str) -> Result<()> {
    let mut state: HashMap<_, u32, u8> = HashMap::try_from(
        ebpf.map_mut(name)
            .with_context(|| format!("NPA object: no {name}"))?,
    )?;
    state.insert(0, 0, 0)?;
    state.insert(1, 1, 0)?;
    Ok(())
}

/// Loads `file` of `dir`, its shared maps pinned in (or opened from) `pins`.
fn load(dir: &std::path::Path, file: &str, pins: &std::path::Path) -> Result<aya::Ebpf> {
    let path = dir.join(file);
    let mut loader = aya::EbpfLoader::new();
    for m in SHARED {
        loader.map_pin_path(m, pins.join(m));
    }
    loader.load_file(&path).with_context(|| {
        format!(
            "loading NPA's object {} ({OBJECT_VAR} names its directory; see docs/BENCHMARKS.md for what it must hold)",
            path.display()
        )
    })
}

/// Loads and attaches program `name` of `ebpf` to `dev` at `hook`; its id.
fn attach_prog(ebpf: &mut aya::Ebpf, name: &str, dev: &str, hook: TcAttachType) -> Result<u32> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("NPA object: no program {name}"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("the verifier rejected NPA's {name}"))?;
    p.attach(dev, hook)
        .with_context(|| format!("attaching NPA's {name} to {dev}"))?;
    let id = p.info()?.id();
    ensure!(id != 0, "NPA's {name} has no id");
    Ok(id)
}

/// Writes `entries` (prefix length, network, value) into `egress_map`.
fn fill<const N: usize>(
    ebpf: &mut aya::Ebpf,
    entries: impl IntoIterator<Item = (u32, [u8; N], [u32; SLOTS * 3])>,
) -> Result<()> {
    let mut trie: LpmTrie<_, [u8; N], [u32; SLOTS * 3]> = LpmTrie::try_from(
        ebpf.map_mut("egress_map")
            .context("NPA object: no egress_map")?,
    )?;
    for (len, net, value) in entries {
        trie.insert(&Key::new(len, net), value, 0)?;
    }
    Ok(())
}

/// One destination prefix's value: `rules` as (protocol, port), the rest zero.
fn trie_value(rules: &[(u32, u32)]) -> [u32; SLOTS * 3] {
    let mut v = [0u32; SLOTS * 3];
    for (i, (proto, port)) in rules.iter().enumerate() {
        v[i * 3] = *proto;
        v[i * 3 + 1] = *port;
    }
    v
}

impl Npa {
    /// Loads NPA's objects of `udp_host`'s family from `dir`, fills their maps with the
    /// bench's `rules` outbound TCP rules (rule i: port 1000+i to 10.(100+i/256).(i%256).0/24,
    /// or fd00:(100+i/256):(i%256)::/64) and the UDP 7000 rule to `udp_host` (no inbound
    /// rule: only replies may reach the pod), and attaches both to `dev` (this thread's
    /// namespace). Returns it and the ids of its egress and ingress programs.
    pub fn attach(
        dir: &std::path::Path,
        dev: &str,
        rules: usize,
        udp_host: std::net::IpAddr,
    ) -> Result<(Npa, u32, u32)> {
        use std::net::IpAddr;
        let v6 = udp_host.is_ipv6();
        // Under the test bed's own prefix, the pid last (`podsg-<what>-<pid>`): a killed
        // run's pins are swept by the next. One directory per family: their conntrack
        // maps differ in key.
        let pins = PinDir(
            format!(
                "/sys/fs/bpf/podsg-npa{}-{}",
                if v6 { 6 } else { 4 },
                std::process::id()
            )
            .into(),
        );
        std::fs::create_dir_all(&pins.0)
            .with_context(|| format!("creating {}", pins.0.display()))?;
        let [egress_file, ingress_file] = files(v6);
        let mut egress = load(dir, egress_file, &pins.0)?;
        let mut ingress = load(dir, ingress_file, &pins.0)?;
        pod_state(&mut egress, "egress_pod_state_map")?;
        pod_state(&mut ingress, "ingress_pod_state_map")?;
        let tcp = |i: usize| trie_value(&[(PROTO_TCP, 1000 + i as u32)]);
        let udp = trie_value(&[(PROTO_UDP, 7000)]);
        let (a, b) = (|i: usize| (100 + i / 256) as u8, |i: usize| (i % 256) as u8);
        match udp_host {
            IpAddr::V4(h) => fill(
                &mut egress,
                (0..rules)
                    .map(|i| (24, [10, a(i), b(i), 0], tcp(i)))
                    .chain([(32, h.octets(), udp)]),
            )?,
            IpAddr::V6(h) => fill(
                &mut egress,
                (0..rules)
                    .map(|i| {
                        let mut net = [0u8; 16];
                        net[..6].copy_from_slice(&[0xfd, 0, 0, a(i), 0, b(i)]);
                        (64, net, tcp(i))
                    })
                    .chain([(128, h.octets(), udp)]),
            )?,
        }
        let mut ring = RingBuf::try_from(
            egress
                .take_map("policy_events")
                .context("NPA object: no policy_events")?,
        )?;
        let (stop, events) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let reader = {
            let (stop, events) = (stop.clone(), events.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut n = 0;
                    while ring.next().is_some() {
                        n += 1;
                    }
                    events.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        let out_id = attach_prog(&mut egress, EGRESS, dev, TcAttachType::Ingress)?;
        let in_id = attach_prog(&mut ingress, INGRESS, dev, TcAttachType::Egress)?;
        let npa = Npa {
            _egress: egress,
            _ingress: ingress,
            _pins: pins,
            stop,
            reader: Some(reader),
            events,
        };
        Ok((npa, out_id, in_id))
    }
}
