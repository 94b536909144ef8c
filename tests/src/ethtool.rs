//! Device offloads the simulated node sets, through the legacy ethtool ioctl (no
//! `ethtool` binary needed): each call acts on an interface of the calling thread's
//! namespace.
use anyhow::{Result, ensure};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETHTOOL_SGRO: u32 = 0x2c;
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

/// One `SIOCETHTOOL` call with an `ethtool_value`; returns the value the kernel left.
fn call(dev: &str, cmd: u32, data: u32) -> Result<u32> {
    ensure!(dev.len() < libc::IFNAMSIZ, "interface name {dev} too long");
    // SAFETY: a plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nothing else owns.
    let _sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: the kernel reads the name and reads/writes `value` through `req.data`;
    // both live for the call.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) };
    ensure!(
        r == 0,
        "{dev}: ethtool command {cmd:#x}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `req.data` points at `value`, alive here.
    Ok(unsafe { (*req.data).data })
}

/// `ethtool -K dev txvlan off`: the kernel writes a pushed VLAN tag into the frame's
/// bytes before the device sends it.
pub fn tx_vlan_offload_off(dev: &str) -> Result<()> {
    let flags = call(dev, ETHTOOL_GFLAGS, 0)?;
    call(dev, ETHTOOL_SFLAGS, flags & !ETH_FLAG_TXVLAN).map(|_| ())
}

/// `ethtool -K dev gro on`: on a veth, also what lets its peer hand it XDP frames
/// (`ndo_xdp_xmit` needs the receiving side's NAPI) when no XDP program is attached.
pub fn gro_on(dev: &str) -> Result<()> {
    call(dev, ETHTOOL_SGRO, 1).map(|_| ())
}
