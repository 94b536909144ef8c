//! The config file and every source file, watched (inotify): a change is re-read at
//! once, no SIGHUP needed. Parent directories are watched rather than the files, so an
//! editor's or a ConfigMap's replace-by-rename is seen like a write.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Config;

/// The files whose change means a re-read: the config and the sources it names.
pub fn watched_files(config_path: &Path, cfg: &Config) -> BTreeSet<PathBuf> {
    let mut out: BTreeSet<PathBuf> = cfg
        .security_groups
        .iter()
        .chain(&cfg.security_group_rules)
        .chain(&cfg.prefix_lists)
        .chain(&cfg.kubernetes)
        .map(|p| cfg.resolve(p))
        .collect();
    out.insert(config_path.to_path_buf());
    out.into_iter().map(|p| absolute(&p)).collect()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Watches `files`; each change to one of them sends `()` on `tx` (the receiver
/// debounces). Dropping the watcher stops it.
pub fn watch(
    files: BTreeSet<PathBuf>,
    tx: UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let Ok(e) = e else { return };
        let relevant = matches!(
            e.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) && e.paths.iter().any(|p| files.contains(p));
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for d in dirs {
        w.watch(&d, RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_source_file_is_noticed() {
        let dir = std::env::temp_dir().join(format!("podsg-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("groups.json");
        std::fs::write(&f, "{}").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch([f.clone()].into_iter().collect(), tx).unwrap();
        // Another file in the same directory is not ours.
        std::fs::write(dir.join("other.json"), "{}").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "an unrelated file");
        // Replace by rename, as editors and ConfigMap updates do.
        std::fs::write(dir.join("groups.json.tmp"), "{\"x\":1}").unwrap();
        std::fs::rename(dir.join("groups.json.tmp"), &f).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while rx.try_recv().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "no event for the replaced file"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
