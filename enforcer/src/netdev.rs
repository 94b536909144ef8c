//! Interface lookups in the caller's network namespace (not via /sys, which shows the
//! namespace sysfs was mounted in, not the one `nsenter --net` put us in).
use std::ffi::CString;

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

pub fn mac(name: &str) -> Option<[u8; 6]> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = sa.sa_data[i] as u8;
    }
    Some(mac)
}

/// An interface as the datapath needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iface {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

pub fn lookup(name: &str) -> Option<Iface> {
    Some(Iface {
        ifindex: ifindex(name)?,
        mac: mac(name)?,
    })
}
