//! `enforcer check`: the daemon's apply sequence against a recorder, and a verdict for
//! the operator (exit 1 when a source can't be read or a branch pod would fail closed).
use std::path::Path;

use crate::cli::{Outcome, Output, print};
use crate::config::Config;
use crate::status::PodState;

pub fn run(config: &Path, output: Output) -> anyhow::Result<Outcome> {
    let cfg = Config::load(config)?;
    let s = crate::daemon::dry_run(&cfg)?;
    print(&s, output)?;
    let failed: Vec<String> = s
        .pods
        .iter()
        .filter(|p| p.state != PodState::NotBranch && p.error.is_some())
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    for e in &s.source_errors {
        eprintln!("source error: {e}");
    }
    if !failed.is_empty() {
        eprintln!(
            "{} pod(s) would be fail-closed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(if failed.is_empty() && s.source_errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}
