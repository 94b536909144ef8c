//! The simulated VPC fabric's programs: their own eBPF object (built beside the
//! product's by `enforcer/build.rs`, never embedded in the daemon). On the fabric's end
//! of the trunk they tag frames toward each branch ENI with its VLAN and untag (and
//! count) frames coming from the trunk, as a VPC does in hardware.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::HashMap as BpfHashMap;
use aya::programs::{SchedClassifier, TcAttachType};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/ebpf/bpfel-unknown-none/release/fabric"
));

pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("sim_fabric_ingress", TcAttachType::Ingress),
    ("sim_fabric_egress", TcAttachType::Egress),
];
pub const MAPS: [&str; 2] = [VLAN_BY_MAC, VLAN_SEEN];
const VLAN_BY_MAC: &str = "FABRIC_VLAN_BY_MAC";
const VLAN_SEEN: &str = "FABRIC_VLAN_SEEN";

/// The floor the benchmarks measure against: on an untagged frame it parses the
/// Ethernet header and passes (a trivial TC program).
pub const FLOOR_PROGRAM: &str = "sim_fabric_ingress";
/// The redirect-only floor: parses the Ethernet header and redirects (never attached).
pub const FLOOR_REDIRECT: &str = "sim_floor_redirect";
/// The forwarding floor: podsg's forwarding of an established flow's frame (VLAN tag,
/// MACs, redirect to the trunk) with no policy, for `bench --compare`.
pub const FLOOR_FORWARD: &str = "sim_floor_forward";
const FLOOR_FORWARD_MAP: &str = "FLOOR_FORWARD";
/// The VPC's frame generator (XDP, live-frames test_run only).
const XMIT: &str = "sim_fabric_xmit";
/// Another tool's XDP program (tests of the daemon's fallback).
const PASS: &str = "sim_xdp_pass";
/// An attacker's XDP program that forges `trunk_xdp`'s word for TC, and its setting.
const FORGE: &str = "sim_forge_vouch";
const FORGED: &str = "SIM_FORGED_VOUCH";

pub struct Fabric {
    ebpf: aya::Ebpf,
}

impl Fabric {
    /// Loads the fabric's programs without attaching them (for test_run floors).
    pub fn load_detached() -> Result<Fabric> {
        let mut ebpf = aya::Ebpf::load(OBJECT).context("loading the fabric's object")?;
        for name in PROGRAMS
            .map(|(n, _)| n)
            .into_iter()
            .chain([FLOOR_REDIRECT, FLOOR_FORWARD])
        {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            p.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(Fabric { ebpf })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .context(name.to_string())?
            .try_into()?)
    }

    /// Loads the fabric's programs and attaches them to `dev` (in the caller's
    /// namespace); `vlan_by_mac` says which VLAN carries frames to which branch ENI.
    pub fn attach(dev: &str, vlan_by_mac: &BTreeMap<[u8; 6], u16>) -> Result<Fabric> {
        let mut f = Fabric::load_detached()?;
        {
            let mut m: BpfHashMap<_, [u8; 8], u32> =
                BpfHashMap::try_from(f.ebpf.map_mut(VLAN_BY_MAC).context(VLAN_BY_MAC)?)?;
            for (mac, vlan) in vlan_by_mac {
                let mut k = [0u8; 8];
                k[..6].copy_from_slice(mac);
                m.insert(k, *vlan as u32, 0)?;
            }
        }
        for (name, hook) in PROGRAMS {
            f.program(name)?
                .attach(dev, hook)
                .with_context(|| format!("attaching {name} to {dev}"))?;
        }
        // The trunk receives tags in the bytes, as an ENA trunk does (ENA has no VLAN
        // offload), so its XDP program sees them; the stack moves the tag into metadata
        // before TC, as on EC2.
        crate::ethtool::tx_vlan_offload_off(dev)?;
        Ok(f)
    }

    /// Attaches the forwarding floor to `dev`'s ingress (in the caller's namespace):
    /// frames leave by `trunk_ifindex` tagged `vlan`, addressed to `dst` from `src`.
    /// Returns it (detached when dropped) and its program id.
    pub fn floor_forward(
        dev: &str,
        trunk_ifindex: u32,
        vlan: u16,
        dst: [u8; 6],
        src: [u8; 6],
    ) -> Result<(Fabric, u32)> {
        let mut f = Fabric::load_detached()?;
        let mut mac = [0u8; 12];
        mac[..6].copy_from_slice(&dst);
        mac[6..].copy_from_slice(&src);
        let word = |i: usize| u32::from_ne_bytes([mac[i], mac[i + 1], mac[i + 2], mac[i + 3]]);
        let setting = [trunk_ifindex, vlan as u32, word(0), word(4), word(8)];
        aya::maps::Array::<_, [u32; 5]>::try_from(
            f.ebpf
                .map_mut(FLOOR_FORWARD_MAP)
                .context(FLOOR_FORWARD_MAP)?,
        )?
        .set(0, setting, 0)?;
        let p = f.program(FLOOR_FORWARD)?;
        p.attach(dev, TcAttachType::Ingress)
            .with_context(|| format!("attaching {FLOOR_FORWARD} to {dev}"))?;
        let id = p.info()?.id();
        Ok((f, id))
    }

    /// Attaches a pass-everything XDP program to `dev` (this thread's namespace) in
    /// native mode, as another tool might, holding the hook until dropped.
    pub fn occupy_xdp(dev: &str) -> Result<Fabric> {
        let ebpf = aya::Ebpf::load(OBJECT).context("loading the fabric's object")?;
        Fabric::hold_xdp(ebpf, PASS, dev)
    }

    /// Attaches to `dev` (this thread's namespace, native mode) an XDP program that
    /// writes `vouch` in front of every frame, as an attacker with the trunk's XDP hook
    /// could, holding the hook until dropped.
    pub fn forge_vouch(dev: &str, vouch: enforcer_common::vouch::Vouch) -> Result<Fabric> {
        let ebpf = aya::EbpfLoader::new()
            .override_global(FORGED, &vouch, true)
            .load(OBJECT)
            .context("loading the fabric's object")?;
        Fabric::hold_xdp(ebpf, FORGE, dev)
    }

    /// Loads XDP program `name` of `ebpf` and attaches it to `dev` in native mode.
    fn hold_xdp(mut ebpf: aya::Ebpf, name: &str, dev: &str) -> Result<Fabric> {
        use aya::programs::{Xdp, XdpMode};
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .context(name.to_string())?
            .try_into()?;
        p.load()
            .with_context(|| format!("verifier rejected {name}"))?;
        p.attach(dev, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {dev}"))?;
        Ok(Fabric { ebpf })
    }

    /// The VPC's frame generator: puts `frames` on the trunk from `dev` (this thread's
    /// namespace) as XDP frames, `per_call` of each in turn, in batches of 64, through
    /// `BPF_PROG_TEST_RUN` live-frames mode, for at least `d`. The trunk receives them
    /// as a NIC's buffers: its XDP program runs before any skb exists. Returns the
    /// frames sent and the kernel's own time for them: the generator, the trunk's
    /// receive work (it runs in this thread's softirq, inside the timed loop), not the
    /// set-up and tear-down of each call (its page pool's teardown waits for an RCU
    /// grace period, tens of ms on this VM).
    pub fn xmit_live(
        dev: &str,
        frames: &[Vec<u8>],
        per_call: u32,
        d: std::time::Duration,
    ) -> Result<(u64, std::time::Duration)> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
        let mut ebpf = aya::Ebpf::load(OBJECT).context("loading the fabric's object")?;
        let p: &mut Xdp = ebpf.program_mut(XMIT).context(XMIT)?.try_into()?;
        p.load()
            .with_context(|| format!("verifier rejected {XMIT}"))?;
        let ifindex = crate::netdev_index(dev)?;
        let t = std::time::Instant::now();
        let (mut sent, mut busy) = (0u64, std::time::Duration::ZERO);
        while t.elapsed() < d {
            for frame in frames {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex.
                let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|w| w.to_ne_bytes())
                    .collect();
                let r = p
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat: per_call,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..TestRunOptions::new()
                    })
                    .with_context(|| format!("{XMIT} in live-frames mode on {dev}"))?;
                // The kernel reports the mean time per frame.
                busy += r.duration * per_call;
                sent += per_call as u64;
            }
        }
        Ok((sent, busy))
    }

    /// The kernel's id of one of the fabric's programs (the benchmarks read its run
    /// time by id).
    pub fn program_id(&self, name: &str) -> Option<u32> {
        self.ebpf.program(name)?.info().ok().map(|i| i.id())
    }

    /// Frames to `mac` leave untagged from now on (a peer that is not on the trunk's
    /// VLANs: the benchmarks' forwarding nodes).
    pub fn untag(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut m: BpfHashMap<_, [u8; 8], u32> =
            BpfHashMap::try_from(self.ebpf.map_mut(VLAN_BY_MAC).context(VLAN_BY_MAC)?)?;
        let mut k = [0u8; 8];
        k[..6].copy_from_slice(&mac);
        m.remove(&k)?;
        Ok(())
    }

    /// How many frames the fabric received from the trunk tagged with `vlan`.
    pub fn frames_on_vlan(&self, vlan: u16) -> u64 {
        let Some(map) = self.ebpf.map(VLAN_SEEN) else {
            return 0;
        };
        let Ok(m) = BpfHashMap::<_, u32, u64>::try_from(map) else {
            return 0;
        };
        m.get(&(vlan as u32), 0).unwrap_or(0)
    }
}
