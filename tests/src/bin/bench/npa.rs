//! The AWS network policy agent's egress program (NPA, `aws/aws-network-policy-agent`,
//! `tc.v4egress.bpf.c`) as a peer in `bench compare`, when the operator hands the bench
//! an object built from NPA's own sources: `PODSG_BENCH_NPA=<path to the .o>`. Nothing of
//! NPA is part of this repository; this module loads what it is given, attaches it
//! where NPA does (the pod's host interface, TC ingress: the pod's egress) and fills its
//! maps as NPA's agent would for the bench's rules.
//!
//! What the object must be (NPA's loader is its own Go SDK, not aya): the program
//! `handle_egress` in a section aya knows as TC (`classifier`), and the two maps NPA
//! shares between its programs (`aws_conntrack_map`, `policy_events`) defined in the
//! object itself (NPA's events object defines them: LRU hash of 512 Ki flows, ring of
//! 512 KiB), as legacy `maps` definitions.
//!
//! NPA's maps for one pod, as its agent writes them (pkg/ebpf, pkg/utils):
//! - `egress_pod_state_map`: key 0 (network policy) = 0, policies applied; key 1
//!   (cluster policy) = 1, default allow (no cluster policy here, so it passes);
//! - `egress_map`: an LPM trie keyed by destination prefix, each value 24 slots of
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

/// The environment variable naming NPA's built egress object.
pub const OBJECT_VAR: &str = "PODSG_BENCH_NPA";
const PROGRAM: &str = "handle_egress";
/// Slots of {protocol, start port, end port} per destination prefix (NPA's
/// MAX_PORT_PROTOCOL).
const SLOTS: usize = 24;
const PROTO_TCP: u32 = 6;
const PROTO_UDP: u32 = 17;

/// The object's path, if the operator gave one.
pub fn object() -> Option<std::path::PathBuf> {
    std::env::var_os(OBJECT_VAR).map(Into::into)
}

/// NPA's program attached to a host interface, its maps filled; detached when dropped.
pub struct Npa {
    _ebpf: aya::Ebpf,
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
    /// Loads `object`, fills its maps with the bench's `rules` outbound TCP rules (rule
    /// i: port 1000+i to 10.(100+i/256).(i%256).0/24) and the UDP 7000 rule to
    /// `udp_host`, and attaches it to `dev` (this thread's namespace). Returns it and its
    /// program id.
    pub fn attach(
        object: &std::path::Path,
        dev: &str,
        rules: usize,
        udp_host: [u8; 4],
    ) -> Result<(Npa, u32)> {
        let mut ebpf = aya::Ebpf::load_file(object).with_context(|| {
            format!(
                "loading NPA's object {} (named by {OBJECT_VAR}; see docs/BENCHMARKS.md for what it must hold)",
                object.display()
            )
        })?;
        {
            let mut state: HashMap<_, u32, u8> = HashMap::try_from(
                ebpf.map_mut("egress_pod_state_map")
                    .context("NPA object: no egress_pod_state_map")?,
            )?;
            state.insert(0, 0, 0)?;
            state.insert(1, 1, 0)?;
        }
        {
            let mut trie: LpmTrie<_, [u8; 4], [u32; SLOTS * 3]> = LpmTrie::try_from(
                ebpf.map_mut("egress_map")
                    .context("NPA object: no egress_map")?,
            )?;
            for i in 0..rules {
                let net = [10, (100 + i / 256) as u8, (i % 256) as u8, 0];
                trie.insert(
                    &Key::new(24, net),
                    trie_value(&[(PROTO_TCP, 1000 + i as u32)]),
                    0,
                )?;
            }
            trie.insert(&Key::new(32, udp_host), trie_value(&[(PROTO_UDP, 7000)]), 0)?;
        }
        let mut ring = RingBuf::try_from(
            ebpf.take_map("policy_events")
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
        let p: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("NPA object: no program {PROGRAM}"))?
            .try_into()?;
        p.load()
            .context("the verifier rejected NPA's handle_egress")?;
        p.attach(dev, TcAttachType::Ingress)
            .with_context(|| format!("attaching NPA's {PROGRAM} to {dev}"))?;
        let id = p.info()?.id();
        let npa = Npa {
            _ebpf: ebpf,
            stop,
            reader: Some(reader),
            events,
        };
        ensure!(id != 0, "NPA's program has no id");
        Ok((npa, id))
    }
}
