//! Upgrading a running datapath to this build's map layout.
//!
//! Maps are pinned per layout version (`<bpffsDir>/v<N>/`); links are pinned once
//! (`<bpffsDir>/links/`) and outlive every version. A daemon that finds an older
//! version's maps (the running datapath) and not its own:
//! 1. checks that every map whose contents must survive can be carried (same kind and
//!    key; the same value, or one this layout grew from) — else it refuses to start,
//!    naming the map, and the old datapath keeps running untouched;
//! 2. loads its programs beside the old ones with new maps, and copies the carried
//!    contents (`first_pass`);
//! 3. writes every pod and policy from its sources (the daemon's first apply);
//! 4. swaps each pinned link to its own program atomically (`bpf_link_update`);
//! 5. copies what the old programs did after step 2 (`last_pass`): entries they
//!    added or removed, what they counted — then unpins the old maps.
//!
//! A newer version's maps are never touched: a build can't know their layout.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use enforcer_common::maps::{Carry, LAYOUT_VERSION, MAPS, MapSpec};

use super::raw::{ANY, NOEXIST, RawMap};

/// The directory of layout version `v` in `pin_dir`.
pub fn version_dir(pin_dir: &Path, v: u32) -> PathBuf {
    pin_dir.join(format!("v{v}"))
}

/// This build's maps.
pub fn our_dir(pin_dir: &Path) -> PathBuf {
    version_dir(pin_dir, LAYOUT_VERSION)
}

/// Another layout's pinned maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Other {
    /// `None`: a build from before versioned directories, maps straight in `pin_dir`.
    pub version: Option<u32>,
    pub dir: PathBuf,
}

impl std::fmt::Display for Other {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "layout v{v} ({})", self.dir.display()),
            None => write!(f, "the unversioned layout ({})", self.dir.display()),
        }
    }
}

/// Every other layout pinned in `pin_dir`, oldest first (the unversioned one first).
pub fn others(pin_dir: &Path) -> Vec<Other> {
    let mut out = Vec::new();
    if MAPS.iter().any(|m| pin_dir.join(m.name).exists()) {
        out.push(Other {
            version: None,
            dir: pin_dir.to_path_buf(),
        });
    }
    let mut versions: Vec<u32> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix('v')?.parse().ok()
        })
        .filter(|v| *v != LAYOUT_VERSION)
        .collect();
    versions.sort();
    out.extend(versions.into_iter().map(|v| Other {
        version: Some(v),
        dir: version_dir(pin_dir, v),
    }));
    out
}

/// One carried map: the old one, and how its contents cross.
struct Carried {
    spec: &'static MapSpec,
    old: RawMap,
    /// What `first_pass` copied, to find what the old programs did afterwards.
    copied: Copied,
}

enum Copied {
    Nothing,
    Keys(HashSet<Vec<u8>>),
    Values(Vec<Vec<u8>>),
}

/// A migration from `from`, under way until `last_pass`.
pub struct Migration {
    pub from: Other,
    carried: Vec<Carried>,
    /// Whether `first_pass` ran (not when a daemon resumes a migration another began).
    pub first_done: bool,
    /// Entries and counters carried so far, for the log.
    pub entries: usize,
    /// When this daemon began it, and when the first link moved to its programs: the
    /// log says how long the whole took and how long old and new programs both ran.
    pub began: std::time::Instant,
    pub first_link_moved: Option<std::time::Instant>,
}

/// Checks that `from`'s maps can be carried into this build's layout; the error names
/// the map and says what to do. Maps `from` lacks start empty (new in this layout).
pub fn plan(from: Other) -> Result<Migration> {
    if from.version.is_some_and(|v| v > LAYOUT_VERSION) {
        bail!(
            "{from} is pinned: a newer podsg's datapath, running. This build (layout v{}) \
             can't read its maps and won't replace it, so it stays attached and enforcing. \
             Run the newer build, or `enforcer uninstall` (detaching enforcement) before \
             starting this one",
            LAYOUT_VERSION
        );
    }
    let mut carried = Vec::new();
    for spec in MAPS.iter().filter(|m| m.carry != Carry::Rebuilt) {
        let path = from.dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let old = RawMap::open(&path)?;
        let refuse = |what: String| {
            anyhow::anyhow!(
                "can't upgrade from {from}: its map {} {what}, and this build (layout v{}) \
                 has no way to carry it over. The old datapath stays attached and \
                 enforcing; to replace it anyway, `enforcer uninstall` (which detaches \
                 enforcement and drops every flow) and start this build",
                spec.name,
                LAYOUT_VERSION
            )
        };
        if old.kind != spec.kind as u32 {
            return Err(refuse(format!(
                "is of map type {}, this layout's is {}",
                old.kind, spec.kind as u32
            )));
        }
        if old.key_size != spec.key_size as usize {
            return Err(refuse(format!(
                "has {}-byte keys, this layout's are {}",
                old.key_size, spec.key_size
            )));
        }
        let value_ok = old.value_size == spec.value_size as usize
            || matches!(spec.carry, Carry::Entries { grown_from }
                if grown_from.contains(&(old.value_size as u32)));
        if !value_ok {
            return Err(refuse(format!(
                "has {}-byte values, this layout's are {} (not a layout it grew from)",
                old.value_size, spec.value_size
            )));
        }
        if spec.carry == Carry::Counters && old.capacity > spec.capacity {
            return Err(refuse(format!(
                "has {} counters, this layout only {}",
                old.capacity, spec.capacity
            )));
        }
        carried.push(Carried {
            spec,
            old,
            copied: Copied::Nothing,
        });
    }
    Ok(Migration {
        from,
        carried,
        first_done: false,
        entries: 0,
        began: std::time::Instant::now(),
        first_link_moved: None,
    })
}

/// An old value in this layout: appended fields zero.
fn grown(old: Vec<u8>, new_len: usize) -> Vec<u8> {
    let mut v = old;
    v.resize(new_len, 0);
    v
}

fn index(i: u32) -> Vec<u8> {
    i.to_ne_bytes().to_vec()
}

/// `a + (now - then)`, word by word (u64 counters, wrapping as the programs' do).
fn add_delta(a: &[u8], now: &[u8], then: &[u8]) -> Vec<u8> {
    let word = |b: &[u8], i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap());
    (0..a.len())
        .step_by(8)
        .flat_map(|i| {
            word(a, i)
                .wrapping_add(word(now, i).wrapping_sub(word(then, i)))
                .to_ne_bytes()
        })
        .collect()
}

impl Migration {
    /// Step 2: copies every carried map into this build's (pinned in `ours`), with the
    /// old programs still running. A map that doesn't fit fails the whole migration.
    pub fn first_pass(&mut self, ours: &Path) -> Result<()> {
        for c in &mut self.carried {
            let new = RawMap::open(&ours.join(c.spec.name))?;
            let name = c.spec.name;
            match c.spec.carry {
                Carry::Entries { .. } => {
                    let mut keys = HashSet::new();
                    for k in c.old.keys()? {
                        let Some(v) = c.old.get(&k)? else { continue };
                        new.put(&k, &grown(v, new.buf_size), ANY).with_context(|| {
                            format!(
                                "copying {name}: entry {} of {} does not fit (capacity {})",
                                keys.len() + 1,
                                c.old.capacity,
                                new.capacity
                            )
                        })?;
                        keys.insert(k);
                    }
                    self.entries += keys.len();
                    c.copied = Copied::Keys(keys);
                }
                Carry::Counters => {
                    let mut values = Vec::new();
                    for i in 0..c.old.capacity {
                        let v = c.old.get(&index(i))?.unwrap_or_default();
                        new.put(&index(i), &v, ANY)
                            .with_context(|| format!("copying {name}[{i}]"))?;
                        values.push(v);
                    }
                    self.entries += values.len();
                    c.copied = Copied::Values(values);
                }
                Carry::Rebuilt => {}
            }
        }
        self.first_done = true;
        Ok(())
    }

    /// Step 5, once no old program runs: entries the old programs added since the first
    /// pass are added (where this build's programs have none yet), those they removed
    /// are removed, and what they counted is added to the counters.
    pub fn last_pass(&mut self, ours: &Path) -> Result<()> {
        for c in &self.carried {
            let new = RawMap::open(&ours.join(c.spec.name))?;
            match (&c.copied, c.spec.carry) {
                (copied, Carry::Entries { .. }) => {
                    let now: HashSet<Vec<u8>> = c.old.keys()?.into_iter().collect();
                    for k in &now {
                        if let Some(v) = c.old.get(k)?
                            && new.put(k, &grown(v, new.buf_size), NOEXIST)?
                        {
                            self.entries += 1;
                        }
                    }
                    if let Copied::Keys(before) = copied {
                        for k in before.difference(&now) {
                            new.delete(k)?;
                        }
                    }
                }
                (Copied::Values(then), Carry::Counters) => {
                    for (i, then) in (0..c.old.capacity).zip(then) {
                        let now = c.old.get(&index(i))?.unwrap_or_default();
                        if now == *then {
                            continue;
                        }
                        let cur = new.get(&index(i))?.unwrap_or_default();
                        new.put(&index(i), &add_delta(&cur, &now, then), ANY)?;
                    }
                }
                // Resumed after a daemon died mid-way: the old counts' baseline is
                // unknown, so they are not added twice; the entries are.
                _ => {}
            }
        }
        Ok(())
    }
}

/// Unpins `other`'s maps (its programs are gone once no link runs them).
pub fn remove(other: &Other) -> Vec<String> {
    let mut removed = Vec::new();
    for m in MAPS.iter() {
        let p = other.dir.join(m.name);
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p.display().to_string());
        }
    }
    if other.version.is_some() {
        // Anything else in a version directory is that version's too.
        for e in std::fs::read_dir(&other.dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
        let _ = std::fs::remove_dir(&other.dir);
    }
    removed
}

/// `<bpffsDir>/maps` points at the running layout's maps, so that operators' bpftool
/// commands read the same path across upgrades. Replaced atomically (rename).
pub fn point_maps_at(pin_dir: &Path, version: u32) -> Result<()> {
    let link = pin_dir.join("maps");
    let target = format!("v{version}");
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&target)) {
        return Ok(());
    }
    // bpffs refuses dots in names.
    let tmp = pin_dir.join(format!("maps_{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .with_context(|| format!("pointing {} at {target}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_value_keeps_its_fields_and_zeroes_the_new() {
        assert_eq!(grown(vec![1, 2, 3], 5), vec![1, 2, 3, 0, 0]);
    }

    #[test]
    fn counters_gain_what_the_old_programs_counted_after_the_copy() {
        let w = |v: &[u64]| v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
        // Copied 10/100; the old programs went on to 13/150; the new ones counted 2/20.
        assert_eq!(
            add_delta(&w(&[12, 120]), &w(&[13, 150]), &w(&[10, 100])),
            w(&[15, 170])
        );
        // Wrapping, as a flow count's "added - removed" does.
        assert_eq!(
            add_delta(&w(&[0]), &w(&[u64::MAX]), &w(&[1])),
            w(&[u64::MAX - 1])
        );
    }

    #[test]
    fn other_layouts_are_found_oldest_first() {
        let dir = std::env::temp_dir().join(format!("podsg-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["v10", "v2", "links", &format!("v{LAYOUT_VERSION}"), "vx"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join(MAPS[0].name), b"").unwrap();
        let found: Vec<Option<u32>> = others(&dir).iter().map(|o| o.version).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut want = vec![None, Some(2), Some(10)];
        want.retain(|v| *v != Some(LAYOUT_VERSION));
        assert_eq!(found, want);
    }
}
