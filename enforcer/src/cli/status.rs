//! `enforcer status`: read live from the running daemon (its control socket: counters
//! and fill levels from the maps now), or what it last published when the socket
//! can't be reached.
use std::path::PathBuf;

use crate::cli::{Outcome, Output, print, state_dir_of};
use crate::control::{Request, ask};

pub fn run(
    state_dir: PathBuf,
    config: Option<PathBuf>,
    rules: bool,
    output: Output,
) -> anyhow::Result<Outcome> {
    let dir = state_dir_of(state_dir, config)?;
    if rules {
        let reply = ask(&dir, Request::Rules)?;
        let v: serde_json::Value = serde_json::from_str(&reply)?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("{e}");
        }
        let report: Vec<crate::hits::PodRules> = serde_json::from_value(v)?;
        match output {
            Output::Table => print!("{}", crate::hits::render(&report)),
            Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        return Ok(Outcome::Ok);
    }
    let st = match ask(&dir, Request::Status) {
        Ok(reply) => crate::cli::reload::parse(&reply)?,
        Err(live) => crate::daemon::read_status(&dir)
            .map_err(|file| anyhow::anyhow!("{live:#}; and {file:#}"))?,
    };
    print(&st, output)?;
    Ok(Outcome::Ok)
}
