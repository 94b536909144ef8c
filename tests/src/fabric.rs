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
        tags_in_bytes(dev)?;
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

    /// The kernel's id of one of the fabric's programs (the benchmarks read its run
    /// time by id).
    pub fn program_id(&self, name: &str) -> Option<u32> {
        self.ebpf.program(name)?.info().ok().map(|i| i.id())
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

/// Turns off `dev`'s tx VLAN offload, so the kernel writes the tag the egress program
/// pushed into the frame's bytes before the veth hands it over: the trunk receives
/// tags in the bytes, as an ENA trunk does (ENA has no VLAN offload), and its XDP
/// program sees them. (The stack moves the tag back into metadata before TC, as on
/// EC2.) `ethtool -K dev txvlan off`, through the legacy flags ioctl.
fn tags_in_bytes(dev: &str) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GFLAGS: u32 = 0x25;
    const ETHTOOL_SFLAGS: u32 = 0x26;
    const ETH_FLAG_TXVLAN: u32 = 1 << 7;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    anyhow::ensure!(dev.len() < libc::IFNAMSIZ, "interface name {dev} too long");
    // SAFETY: a plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nothing else owns.
    let _sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GFLAGS,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    for cmd in [ETHTOOL_GFLAGS, ETHTOOL_SFLAGS] {
        // SAFETY: `value` and `req` outlive the call; `req.data` points at `value`.
        unsafe { (*req.data).cmd = cmd };
        if cmd == ETHTOOL_SFLAGS {
            // SAFETY: as above.
            unsafe { (*req.data).data &= !ETH_FLAG_TXVLAN };
        }
        // SAFETY: the kernel reads the interface name and reads/writes `value`
        // through `req.data`; both live for the call.
        let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) };
        anyhow::ensure!(
            r == 0,
            "{dev}: turning tx VLAN offload off: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
