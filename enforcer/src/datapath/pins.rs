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

/// Whether a pinned map has exactly the layout this build's programs expect.
fn same_layout(name: &str, path: &Path) -> Result<bool> {
    let info = aya::maps::MapInfo::from_pin(path)
        .with_context(|| format!("reading pinned map {}", path.display()))?;
    let Some(spec) = enforcer_common::maps::spec_of(name) else {
        return Ok(true);
    };
    let have = (info.key_size(), info.value_size(), info.max_entries());
    Ok(have == (spec.key_size, spec.value_size, spec.capacity))
}

/// A map pinned in this build's version directory must have its layout (another
/// build of the same version number would be a release mistake): refused, and left
/// alone (and enforcing), rather than reused with the wrong layout.
pub(super) fn check_layout(name: &str, path: &Path) -> Result<()> {
    if !same_layout(name, path)? {
        anyhow::bail!(
            "pinned map {} is in this build's layout directory (v{}) but has another \
             key/value size or capacity: a build of another layout under the same version \
             number runs. It stays attached and enforcing; `enforcer uninstall` (which \
             detaches enforcement) and start this daemon again to replace it",
            path.display(),
            enforcer_common::maps::LAYOUT_VERSION,
        );
    }
    Ok(())
}

/// Maps pinned straight in `pin_dir` (builds before versioned directories) that have
/// exactly this build's layout move into its version directory: the same maps, adopted
/// with their entries, no copy. Returns whether it moved them; maps of another layout
/// are left for a migration.
pub(super) fn adopt_unversioned(pin_dir: &Path, ours: &Path) -> Result<bool> {
    use enforcer_common::maps::MAPS;
    let present: Vec<&str> = MAPS
        .iter()
        .map(|m| m.name)
        .filter(|n| pin_dir.join(n).exists())
        .collect();
    if present.is_empty() || MAPS.iter().any(|m| ours.join(m.name).exists()) {
        return Ok(false);
    }
    for n in &present {
        if !same_layout(n, &pin_dir.join(n))? {
            return Ok(false);
        }
    }
    std::fs::create_dir_all(ours).with_context(|| format!("creating {}", ours.display()))?;
    for n in &present {
        std::fs::rename(pin_dir.join(n), ours.join(n))
            .with_context(|| format!("moving pinned map {n} into {}", ours.display()))?;
    }
    Ok(true)
}
