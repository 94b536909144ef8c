//! What the daemon remembers between applies, and across restarts: the ids its kernel
//! tables are written under, each pod's counter slot, the mode and (with
//! `freezePodGroups`) the groups each pod was first seen with, and the rule cookies.
//!
//! Saved in the state directory before the maps are written (so a crash leaves a file
//! that knows every id the kernel may hold) and again after. A restarted daemon that
//! adopts the pinned maps reads it back: unchanged pods then cost no map write, a pod
//! keeps its mode (SPEC §5) and its counters.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Mode;
use crate::datapath::state::{Ids, Slots};
use crate::policy::compile::CookieTable;

#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub ids: Ids,
    pub slots: Slots,
    /// Saved apart (`save_tables`); read from memory.json too, where versions before
    /// the split kept it.
    #[serde(default, skip_serializing)]
    pub cookies: CookieTable,
    /// A pod's mode is fixed when it is first seen (SPEC §5).
    pub modes: BTreeMap<String, Mode>,
    /// With `freezePodGroups`: each pod's groups as first resolved.
    pub frozen_groups: BTreeMap<String, Vec<String>>,
    /// The VLAN, MAC and addresses each pod held at the last apply: it keeps them
    /// against newcomers.
    #[serde(default)]
    pub claims: BTreeMap<String, crate::claims::Claim>,
    /// Compiled policies, kept for the daemon's life (not saved: rebuilt on start).
    #[serde(skip)]
    pub cache: crate::plan::cache::PolicyCache,
    /// The kernel's desired state, changed in place by each apply (not saved: the
    /// first apply after a start compares the tables whole).
    #[serde(skip)]
    pub desired: crate::plan::desired::Desired,
}

pub const MEMORY_FILE: &str = "memory.json";
/// Class ids and rule cookies: most of the memory's size (megabytes on a busy node), so
/// saved apart and lazily. Losing their latest changes in a crash costs the next
/// daemon some map rewrites (classes it does not know get new ids, written in the
/// order that keeps every packet's verdict consistent) and, until the flows made under
/// lost cookies expire, the rule names those flows are attributed to; never a verdict.
pub const TABLES_FILE: &str = "memory-tables.json";

#[derive(serde::Serialize)]
struct TablesOut<'a> {
    class_ids: &'a crate::datapath::state::Interned,
    cookies: &'a CookieTable,
}

#[derive(serde::Deserialize)]
struct TablesIn {
    class_ids: crate::datapath::state::Interned,
    cookies: CookieTable,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a podsg memory file ({source}); move it away to start afresh")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Memory {
    /// The memory saved in `dir`, or an empty one when there is none.
    pub fn load(dir: &Path) -> Result<Memory, MemoryError> {
        let path = dir.join(MEMORY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Memory::default()),
            Err(source) => return Err(MemoryError::Read { path, source }),
        };
        let mut mem: Memory =
            serde_json::from_str(&text).map_err(|source| MemoryError::Parse { path, source })?;
        let path = dir.join(TABLES_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let t: TablesIn = serde_json::from_str(&text)
                    .map_err(|source| MemoryError::Parse { path, source })?;
                mem.ids.class_ids = t.class_ids;
                mem.cookies = t.cookies;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(MemoryError::Read { path, source }),
        }
        Ok(mem)
    }

    /// What [`Memory::save_tables`] would change: compare to decide whether to save.
    pub fn tables_fingerprint(&self) -> (usize, u32, usize) {
        let (n, next) = self.ids.class_fingerprint();
        (n, next, self.cookies.len())
    }

    /// Writes the class ids and cookies ([`TABLES_FILE`]), atomically.
    pub fn save_tables(&self, dir: &Path) -> Result<(), MemoryError> {
        let t = TablesOut {
            class_ids: &self.ids.class_ids,
            cookies: &self.cookies,
        };
        write_atomically(
            dir,
            TABLES_FILE,
            &serde_json::to_vec(&t).map_err(std::io::Error::other),
        )
    }

    /// Writes memory.json (all but the tables), atomically.
    pub fn save(&self, dir: &Path) -> Result<(), MemoryError> {
        write_atomically(
            dir,
            MEMORY_FILE,
            &serde_json::to_vec(self).map_err(std::io::Error::other),
        )
    }
}

/// Writes `name` in `dir` by a rename, so a crash leaves the old file or the new one.
fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &std::io::Result<Vec<u8>>,
) -> Result<(), MemoryError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let bytes = bytes
            .as_ref()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| MemoryError::Write { path, source })
}

/// Serialises a map whose keys are not strings as a list of pairs (JSON objects only
/// take string keys).
pub mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<'a, M, K, V, S>(map: &'a M, s: S) -> Result<S::Ok, S::Error>
    where
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
        S: Serializer,
    {
        s.collect_seq(map)
    }

    pub fn deserialize<'de, M, K, V, D>(d: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_round_trip_and_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("podsg-memory-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            Memory::load(&dir).unwrap().modes.is_empty(),
            "no file: empty"
        );
        let mut m = Memory::default();
        m.modes.insert("ns/a".into(), Mode::Standard);
        let (slot, fresh) = m.slots.get("ns/a").unwrap();
        assert!(fresh);
        m.save(&dir).unwrap();
        let mut back = Memory::load(&dir).unwrap();
        assert_eq!(back.modes["ns/a"], Mode::Standard);
        assert_eq!(
            back.slots.get("ns/a"),
            Some((slot, false)),
            "same slot, not new"
        );
        std::fs::write(dir.join(MEMORY_FILE), "{").unwrap();
        let e = Memory::load(&dir).unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tables_are_saved_apart_and_read_back() {
        let dir = std::env::temp_dir().join(format!("podsg-tables-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut m = Memory::default();
        let c = m
            .cookies
            .cookie("sg-a", crate::model::group::Direction::Inbound, 0);
        m.save(&dir).unwrap();
        let small = std::fs::read_to_string(dir.join(MEMORY_FILE)).unwrap();
        assert!(
            !small.contains("sg-a"),
            "cookies are not in memory.json: {small}"
        );
        let mut back = Memory::load(&dir).unwrap();
        assert!(back.cookies.is_empty(), "not saved yet: lost, at worst");
        let before = m.tables_fingerprint();
        m.save_tables(&dir).unwrap();
        back = Memory::load(&dir).unwrap();
        assert_eq!(back.tables_fingerprint(), before);
        assert_eq!(
            back.cookies
                .cookie("sg-a", crate::model::group::Direction::Inbound, 0),
            c
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
