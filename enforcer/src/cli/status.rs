//! `enforcer status`: what the running daemon last published.
use std::path::PathBuf;

use crate::cli::{Outcome, Output, print};
use crate::config::Config;

pub fn run(state_dir: PathBuf, config: Option<PathBuf>, output: Output) -> anyhow::Result<Outcome> {
    let dir = match config {
        Some(c) => Config::load(&c)?.state_dir,
        None => state_dir,
    };
    print(&crate::daemon::read_status(&dir)?, output)?;
    Ok(Outcome::Ok)
}
