//! A pinned map as bytes: key and value sizes known only at run time, as when reading
//! another layout version's maps to migrate them. aya's maps are typed at compile
//! time, so the four element calls are made here directly.
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::MapData;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// `BPF_MAP_UPDATE_ELEM` flags.
pub const ANY: u64 = 0;
pub const NOEXIST: u64 = 1;

/// `union bpf_attr` for the element calls.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

pub struct RawMap {
    map: MapData,
    /// `bpf_map_type`.
    pub kind: u32,
    pub key_size: usize,
    /// As the kernel declares it (one CPU's share for a per-CPU map).
    pub value_size: usize,
    pub capacity: u32,
    /// Bytes a lookup or update moves: all CPUs' values for a per-CPU map.
    pub buf_size: usize,
}

impl RawMap {
    pub fn open(path: &Path) -> Result<RawMap> {
        let map = MapData::from_pin(path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let info = map
            .info()
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let kind = info
            .map_type()
            .map(|t| t as u32)
            .with_context(|| format!("the type of pinned map {}", path.display()))?;
        let per_cpu = matches!(kind, 5 | 6 | 10); // per-CPU hash, array, LRU hash
        let value_size = info.value_size() as usize;
        let buf_size = if per_cpu {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            value_size.next_multiple_of(8) * cpus
        } else {
            value_size
        };
        Ok(RawMap {
            map,
            kind,
            key_size: info.key_size() as usize,
            value_size,
            capacity: info.max_entries(),
            buf_size,
        })
    }

    /// The kernel reads exactly the map's sizes from our buffers: never a shorter one.
    fn sized(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        anyhow::ensure!(
            key.len() == self.key_size && value.is_none_or(|v| v.len() == self.buf_size),
            "a {}-byte key (and value) for a map of {}-byte keys, {}-byte values",
            key.len(),
            self.key_size,
            self.buf_size
        );
        Ok(())
    }

    fn call(&self, cmd: libc::c_long, key: *const u8, value: *const u8, flags: u64) -> i64 {
        let attr = ElemAttr {
            map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key as u64,
            value: value as u64,
            flags,
        };
        // SAFETY: the kernel reads `attr` (alive for the call); the key and value
        // pointers are null or the callers' buffers, checked by `sized` to hold `key_size`
        // and `buf_size` bytes (what the kernel reads or writes), alive for the call.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>() as libc::c_uint,
            )
        }
    }

    /// The key after `key` (the first with `None`); `None` at the end.
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let mut next = vec![0u8; self.key_size];
        if let Some(k) = key {
            self.sized(k, None)?;
        }
        let k = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
        if self.call(BPF_MAP_GET_NEXT_KEY, k, next.as_mut_ptr(), 0) != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e.into()),
            };
        }
        Ok(Some(next))
    }

    /// Every key, as the kernel walks them (a hash map changing meanwhile may show a
    /// key twice or skip one that moved: callers copy again after the writers stop).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut key = self.next_key(None)?;
        while let Some(k) = key {
            key = self.next_key(Some(&k))?;
            out.push(k);
            if out.len() > self.capacity as usize * 2 {
                anyhow::bail!("a map of {} entries walked past twice that", self.capacity);
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.sized(key, None)?;
        let mut value = vec![0u8; self.buf_size];
        if self.call(BPF_MAP_LOOKUP_ELEM, key.as_ptr(), value.as_mut_ptr(), 0) != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e.into()),
            };
        }
        Ok(Some(value))
    }

    /// Writes `value`; with [`NOEXIST`], `Ok(false)` when the key is already there.
    pub fn put(&self, key: &[u8], value: &[u8], flags: u64) -> Result<bool> {
        self.sized(key, Some(value))?;
        if self.call(BPF_MAP_UPDATE_ELEM, key.as_ptr(), value.as_ptr(), flags) != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EEXIST) if flags == NOEXIST => Ok(false),
                _ => Err(e.into()),
            };
        }
        Ok(true)
    }

    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.sized(key, None)?;
        if self.call(BPF_MAP_DELETE_ELEM, key.as_ptr(), std::ptr::null(), 0) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e.into());
            }
        }
        Ok(())
    }
}
