//! Interface lookups in the caller's network namespace (not via /sys, which shows the
//! namespace sysfs was mounted in, not the one `nsenter --net` put us in).
use std::ffi::CString;

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

pub fn mac(name: &str) -> Option<[u8; 6]> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: no pointers; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain C data; all zeroes is a valid (empty) request.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads and writes one ifreq, which `req` is (the name fits:
    // checked against IFNAMSIZ above, and the rest is zero).
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds the hardware address.
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

/// The names of every interface in the caller's network namespace.
pub fn names() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: no arguments; the array it returns is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the array ends with an entry whose index is 0; we stop there.
        let e = unsafe { &*list.add(i) };
        if e.if_index == 0 || e.if_name.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated name owned by the array, read before it is freed.
        let name = unsafe { std::ffi::CStr::from_ptr(e.if_name) };
        out.push(name.to_string_lossy().into_owned());
        i += 1;
    }
    // SAFETY: the array if_nameindex returned, freed once.
    unsafe { libc::if_freenameindex(list) };
    out
}
