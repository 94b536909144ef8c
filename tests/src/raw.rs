//! Raw frames onto a link (AF_PACKET): what the VPC could put on the trunk that no
//! socket of a host would send — unknown VLANs, frames for other addresses, floods.
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::sim::in_netns;

/// An AF_PACKET socket bound to one interface of the namespace it was opened in.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn open(dev: &str) -> Result<PacketSocket> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(dev)?;
        // SAFETY: plain socket calls; every pointer is to a live local of the stated
        // size, and the new fd is owned right away.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let sock = PacketSocket(std::os::fd::OwnedFd::from_raw_fd(fd));
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            ensure!(sll.sll_ifindex != 0, "no interface {dev}");
            let r = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&sll) as u32,
            );
            ensure!(
                r == 0,
                "binding to {dev}: {}",
                std::io::Error::last_os_error()
            );
            Ok(sock)
        }
    }

    fn send(&self, frame: &[u8]) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: the kernel reads `frame.len()` bytes of a live slice.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        n == frame.len() as isize
    }
}

/// Sends `frames` in turn on `dev` in `ns` until `count` have gone; returns how many
/// the kernel took.
pub fn send_frames(ns: &str, dev: &str, frames: Vec<Vec<u8>>, count: usize) -> Result<u64> {
    let dev = dev.to_string();
    in_netns(ns, move || -> Result<u64> {
        let s = PacketSocket::open(&dev)?;
        Ok((0..count)
            .filter(|i| s.send(&frames[i % frames.len()]))
            .count() as u64)
    })?
}

/// Sends `frames` in turn on `dev` (in the calling thread's namespace) for `d`, as
/// fast as one thread can; returns how many the kernel took.
pub fn flood_frames(dev: &str, frames: &[Vec<u8>], d: Duration) -> Result<u64> {
    let s = PacketSocket::open(dev)?;
    let end = Instant::now() + d;
    let mut sent = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            for f in frames {
                sent += s.send(f) as u64;
            }
        }
    }
    Ok(sent)
}
