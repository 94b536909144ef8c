//! TC and XDP attachments that outlive the daemon.
//!
//! With a pin directory, every attachment is a TCX (or XDP) link pinned at
//! `<bpffsDir>/links/<kind>-<ifindex>-<ifname>` (bpffs refuses dots in names, so a dot
//! in the interface name is written `%2e`): the programs stay attached and keep
//! enforcing with the pinned maps while no daemon runs (crash, SIGKILL, SIGTERM,
//! upgrade), so a branch pod's traffic is never routed unfiltered by the node's stack. A
//! new daemon adopts each pinned link by swapping its own program in atomically
//! (`bpf_link_update`): no instant with no program, and never two. Only `enforcer
//! uninstall` (removing the pins) detaches on purpose.
//!
//! Without a pin directory (test_run harness, the simulated fabric) the links belong to
//! the process, as aya's default.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId},
    xdp::XdpLink,
};

/// Which program a link runs, and where: the kind is part of the pin's file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkKind {
    /// The trunk's ingress: frames from the VPC to branch pods.
    Trunk,
    /// The trunk's XDP hook: the pre-filter in front of `Trunk` (native mode only).
    TrunkXdp,
    /// A pod host interface's ingress: what the pod sends.
    Pod,
    /// A pod host interface's egress: what the node sends the pod.
    PodIn,
    /// The primary ENI's ingress: replies to source-NATed flows.
    Primary,
}

impl LinkKind {
    pub const ALL: [LinkKind; 5] = [
        LinkKind::Trunk,
        LinkKind::TrunkXdp,
        LinkKind::Pod,
        LinkKind::PodIn,
        LinkKind::Primary,
    ];
    /// Both links every pod host interface gets.
    pub const POD: [LinkKind; 2] = [LinkKind::Pod, LinkKind::PodIn];

    fn tag(self) -> &'static str {
        match self {
            LinkKind::Trunk => "trunk",
            LinkKind::TrunkXdp => "trunkxdp",
            LinkKind::Pod => "pod",
            LinkKind::PodIn => "podin",
            LinkKind::Primary => "primary",
        }
    }

    pub fn program(self) -> &'static str {
        use enforcer_common::prog_names::*;
        match self {
            LinkKind::Trunk => TRUNK_INGRESS,
            LinkKind::TrunkXdp => TRUNK_XDP,
            LinkKind::Pod => POD_EGRESS,
            LinkKind::PodIn => POD_INGRESS,
            LinkKind::Primary => PRIMARY_INGRESS,
        }
    }

    fn hook(self) -> TcAttachType {
        match self {
            LinkKind::PodIn => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }
}

/// A loaded program of either hook, ready to attach.
pub enum Prog<'a> {
    Tc(&'a mut SchedClassifier),
    Xdp(&'a mut Xdp),
}

impl Prog<'_> {
    /// A new attachment, as a kernel link named by fd (what can be pinned).
    fn attach_fd(&mut self, kind: LinkKind, ifname: &str) -> Result<FdLink> {
        match self {
            Prog::Tc(p) => {
                let id = p.attach(ifname, kind.hook())?;
                FdLink::try_from(p.take_link(id)?).map_err(|e| {
                    anyhow!("{ifname}: the kernel gave a netlink TC attachment, not a TCX link ({e}); TCX (Linux 6.6+) is needed to keep enforcing across restarts")
                })
            }
            Prog::Xdp(p) => {
                // Native mode or nothing: generic XDP runs after the skb is built, where
                // it saves nothing over TC.
                let id = p.attach(ifname, XdpMode::Driver).with_context(|| {
                    format!("{ifname}: native XDP refused (a driver without XDP, another XDP program there, or an MTU too large: ENA takes XDP only up to MTU 3498, and the VPC CNI sets 9001 — lower it, or set node.trunkXdp: false)")
                })?;
                FdLink::try_from(p.take_link(id)?).map_err(|e| {
                    anyhow!("{ifname}: the kernel gave a netlink XDP attachment, not an XDP link ({e}); Linux 5.9+ is needed")
                })
            }
        }
    }

    /// Runs this program in an existing link, atomically.
    fn adopt(&mut self, fd: FdLink, path: &Path) -> Result<FdLink> {
        match self {
            Prog::Tc(p) => {
                let link = SchedClassifierLink::try_from(fd)
                    .with_context(|| format!("{} is not a TCX link", path.display()))?;
                let id = p.attach_to_link(link)?;
                Ok(FdLink::try_from(p.take_link(id)?)?)
            }
            Prog::Xdp(p) => {
                let link = XdpLink::try_from(fd)
                    .with_context(|| format!("{} is not an XDP link", path.display()))?;
                let id = p.attach_to_link(link)?;
                Ok(FdLink::try_from(p.take_link(id)?)?)
            }
        }
    }
}

/// One attachment of a program to an interface's TC or XDP hook.
pub struct TcLink {
    pub ifindex: u32,
    handle: Handle,
}

enum Handle {
    /// Owned by the program: detached when it is dropped.
    Owned(SchedClassifierLinkId),
    /// Owned by us, unpinned: detached when the fd closes.
    Fd(FdLink),
    /// Pinned: attached for as long as the pin exists. The fd only lets us update it.
    Pinned { path: PathBuf, _fd: FdLink },
}

/// How an attachment came about, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    /// A pinned link a previous daemon left, now running this daemon's program.
    Adopted,
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn pin_path(pin_dir: &Path, kind: LinkKind, ifindex: u32, ifname: &str) -> PathBuf {
    let escaped = ifname.replace('%', "%25").replace('.', "%2e");
    links_dir(pin_dir).join(format!("{}-{ifindex}-{escaped}", kind.tag()))
}

/// (kind, ifindex, ifname) of a link pin's file name.
fn parse_pin_name(name: &str) -> Option<(LinkKind, u32, String)> {
    let (tag, rest) = name.split_once('-')?;
    let (ifindex, ifname) = rest.split_once('-')?;
    let kind = LinkKind::ALL.into_iter().find(|k| k.tag() == tag)?;
    let ifname = ifname.replace("%2e", ".").replace("%25", "%");
    Some((kind, ifindex.parse().ok()?, ifname))
}

/// Removes pins of links whose interface is gone or was re-created (another ifindex):
/// such a link no longer runs on anything, and its pin would keep it allocated.
pub fn remove_stale_pins(pin_dir: &Path, ifindex_of: &dyn Fn(&str) -> Option<u32>) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(links_dir(pin_dir)) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = match parse_pin_name(&name) {
            Some((_, ifindex, ifname)) => ifindex_of(&ifname) != Some(ifindex),
            None => false, // not ours: leave it
        };
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// (kind, interface) of every pinned link whose interface still exists as pinned.
pub fn pinned(pin_dir: &Path) -> Vec<(LinkKind, String)> {
    let mut out: Vec<(LinkKind, String)> = std::fs::read_dir(links_dir(pin_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse_pin_name(&e.file_name().to_string_lossy()))
        .filter(|(_, ifindex, ifname)| crate::netdev::ifindex(ifname) == Some(*ifindex))
        .map(|(kind, _, ifname)| (kind, ifname))
        .collect();
    out.sort();
    out
}

/// Attaches `prog` to `ifname`'s hook for `kind`, or adopts the pinned link already
/// there.
pub fn attach(
    mut prog: Prog<'_>,
    pin_dir: Option<&Path>,
    kind: LinkKind,
    ifname: &str,
    ifindex: u32,
) -> Result<(TcLink, Attached)> {
    let Some(pin_dir) = pin_dir else {
        let handle = match &mut prog {
            Prog::Tc(p) => Handle::Owned(p.attach(ifname, kind.hook())?),
            Prog::Xdp(_) => Handle::Fd(prog.attach_fd(kind, ifname)?),
        };
        return Ok((TcLink { ifindex, handle }, Attached::New));
    };
    let path = pin_path(pin_dir, kind, ifindex, ifname);
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        // Atomic: packets see the old program or this one, never none.
        let fd = prog
            .adopt(FdLink::from(pinned), &path)
            .with_context(|| format!("replacing the program of {}", path.display()))?;
        return Ok((
            TcLink {
                ifindex,
                handle: Handle::Pinned { path, _fd: fd },
            },
            Attached::Adopted,
        ));
    }
    std::fs::create_dir_all(links_dir(pin_dir))
        .with_context(|| format!("creating {}", links_dir(pin_dir).display()))?;
    let fd = prog.attach_fd(kind, ifname)?;
    let pinned = fd
        .pin(&path)
        .with_context(|| format!("pinning the link of {ifname} at {}", path.display()))?;
    Ok((
        TcLink {
            ifindex,
            handle: Handle::Pinned {
                path,
                _fd: FdLink::from(pinned),
            },
        },
        Attached::New,
    ))
}

/// Detaches the pinned link of `kind` on `ifname`, if one is pinned (a hook this
/// daemon's settings turned off). Returns whether there was one.
pub fn detach_pin(pin_dir: &Path, kind: LinkKind, ifindex: u32, ifname: &str) -> Result<bool> {
    let path = pin_path(pin_dir, kind, ifindex, ifname);
    if !path.exists() {
        return Ok(false);
    }
    detach_pinned(&path).with_context(|| format!("detaching {}", path.display()))?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(true)
}

/// Detaches on purpose: the pin goes, and with the fd dropped the link with it.
pub fn detach(prog: Option<&mut SchedClassifier>, link: TcLink) {
    match link.handle {
        Handle::Owned(id) => {
            if let Some(p) = prog {
                let _ = p.detach(id);
            }
        }
        Handle::Fd(fd) => drop(fd),
        Handle::Pinned { path, .. } => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `enforcer uninstall`: removes every link pin (detaching the programs from the trunk
/// and the pods' interfaces), then the maps of every layout version and the directory.
/// Returns what it removed. A daemon still running keeps its own fds: stop it first.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(links_dir(pin_dir)) {
        for e in entries.flatten() {
            // Detached now, not when the kernel gets round to freeing the unpinned
            // link: "uninstalled" means no program runs once we return.
            if let Err(err) = detach_pinned(&e.path()) {
                log::warn!("detaching {}: {err}", e.path().display());
            }
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            removed.push(format!("links/{}", e.file_name().to_string_lossy()));
        }
        let _ = std::fs::remove_dir(links_dir(pin_dir));
    }
    let _ = std::fs::remove_file(pin_dir.join("maps"));
    let mut layouts = crate::datapath::migrate::others(pin_dir);
    layouts.push(crate::datapath::migrate::Other {
        version: Some(enforcer_common::maps::LAYOUT_VERSION),
        dir: crate::datapath::migrate::our_dir(pin_dir),
    });
    for other in layouts {
        for p in crate::datapath::migrate::remove(&other) {
            let p = Path::new(&p);
            removed.push(p.strip_prefix(pin_dir).unwrap_or(p).display().to_string());
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// Opens a pinned link (`BPF_OBJ_GET`) and detaches it (`BPF_LINK_DETACH`): the
/// program leaves its hook at once; the defunct link goes with its last reference.
/// aya has neither call for a pinned link's fd.
fn detach_pinned(path: &Path) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    /// `union bpf_attr` for `BPF_OBJ_GET`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: the kernel reads `get` (live for the call) and the NUL-terminated path it
    // points to (`c`, alive until the end of this function).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just gave us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let detach: [u32; 1] = [std::os::fd::AsRawFd::as_raw_fd(&fd) as u32];
    // SAFETY: the kernel reads 4 bytes (`link_detach.link_fd`) of a live array; the fd
    // stays open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            detach.as_ptr(),
            std::mem::size_of_val(&detach) as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        let p = pin_path(Path::new("/x"), LinkKind::Pod, 42, "vlan1234abcd");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "pod-42-vlan1234abcd");
        assert_eq!(
            parse_pin_name(name),
            Some((LinkKind::Pod, 42, "vlan1234abcd".into()))
        );
        // Interface names may contain dots (bpffs refuses them) and dashes.
        let p = pin_path(Path::new("/x"), LinkKind::Trunk, 7, "eth1.100-a%");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(!name.contains('.'), "{name}");
        assert_eq!(
            parse_pin_name(name),
            Some((LinkKind::Trunk, 7, "eth1.100-a%".into()))
        );
        assert_eq!(parse_pin_name("README"), None);
    }
}
