//! The pin directory: a bpf filesystem to pin in, and the layout check a previous
//! daemon's pinned maps must pass before they are reused.
use std::path::Path;

use anyhow::{Context, Result, anyhow};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Pins need a bpf filesystem above `dir`. A node that never mounted one (fresh VM,
/// minimal host) gets it mounted at the parent, as Cilium's agent does.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mount_at = dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let c = std::ffi::CString::new(mount_at.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs is plain C data; all zeroes is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs buffer, both alive for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(mount_at)
        .with_context(|| format!("creating {}", mount_at.display()))?;
    let fs = std::ffi::CString::new("bpf")?;
    // SAFETY: NUL-terminated strings alive for the call; no mount data.
    if unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(anyhow!(
            "{} is not a bpf filesystem and mounting one there failed: {} (mount -t bpf bpf {})",
            mount_at.display(),
            std::io::Error::last_os_error(),
            mount_at.display()
        ));
    }
    Ok(())
}

/// A pinned map must have the layout this build's programs expect; a map of another
/// layout means another version's datapath is running. It is refused, and left alone
/// (and enforcing), rather than reused with the wrong layout.
pub(super) fn check_layout(name: &str, path: &Path) -> Result<()> {
    let info = aya::maps::MapInfo::from_pin(path)
        .with_context(|| format!("reading pinned map {}", path.display()))?;
    let Some(spec) = enforcer_common::maps::spec_of(name) else {
        return Ok(());
    };
    let have = (info.key_size(), info.value_size(), info.max_entries());
    let want = (spec.key_size, spec.value_size, spec.capacity);
    if have != want {
        anyhow::bail!(
            "pinned map {} has key/value size and capacity {have:?}, this build (layout \
             version {}) needs {want:?}: it belongs to another podsg version, which stays \
             attached and enforcing. Upgrade in place is not supported by this version: \
             run `enforcer uninstall` (which detaches enforcement) and start this daemon again",
            path.display(),
            enforcer_common::maps::LAYOUT_VERSION,
        );
    }
    Ok(())
}
