//! `enforcer reload`: the running daemon re-reads its config and every source and
//! answers once the new generation is applied (the control socket), so a script knows
//! when its change is enforced. Exits 1 when a source could not be read (the last good
//! state stays enforced).
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::{Outcome, Output, print};
use crate::control::{Request, ask};
use crate::status::NodeStatus;

pub fn run(dir: PathBuf, output: Output) -> anyhow::Result<Outcome> {
    let st = parse(&ask(&dir, Request::Reload)?)?;
    match output {
        Output::Table => {
            println!(
                "generation {} applied: {} pods, {} enforced",
                st.generation,
                st.pods.len(),
                st.enforced()
            );
            for e in &st.source_errors {
                println!("source error: {e}");
            }
        }
        Output::Json => print(&st, output)?,
    }
    Ok(if st.source_errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// The daemon's answer: its status, or an error it reports.
pub fn parse(reply: &str) -> anyhow::Result<NodeStatus> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(reply)
        && let Some(e) = v.get("error").and_then(|e| e.as_str())
    {
        anyhow::bail!("the daemon refused: {e}");
    }
    serde_json::from_str(reply).context("the daemon's answer is not a status")
}
