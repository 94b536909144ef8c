//! `enforcer uninstall`: the one way to detach on purpose.
use std::path::PathBuf;

use crate::cli::Outcome;
use crate::config::Config;

pub fn run(bpffs_dir: PathBuf, config: Option<PathBuf>) -> anyhow::Result<Outcome> {
    let dir = match config {
        Some(c) => Config::load(&c)?.bpffs_dir,
        None => bpffs_dir,
    };
    let removed = crate::datapath::links::uninstall(&dir)?;
    if removed.is_empty() {
        println!("nothing pinned under {}", dir.display());
    } else {
        println!(
            "detached and removed {} pins under {}: {}",
            removed.len(),
            dir.display(),
            removed.join(", ")
        );
    }
    Ok(Outcome::Ok)
}
