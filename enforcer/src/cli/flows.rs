//! `enforcer flows`: the daemon's flow events, one per line (JSON lines with `-o json`).
use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;

use crate::cli::{Outcome, Output};
use crate::control::{Request, stream};
use crate::flows::FlowRecord;

pub fn run(
    pod: Option<String>,
    follow: bool,
    state_dir: PathBuf,
    output: Output,
) -> anyhow::Result<Outcome> {
    if let Some(p) = &pod
        && p.split_once('/').is_none()
    {
        bail!("--pod {p:?}: NAMESPACE/NAME");
    }
    let mut error = None;
    let mut out = std::io::stdout().lock();
    stream(&state_dir, Request::Flows { pod, follow }, |line| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            error = Some(e.to_string());
            return false;
        }
        let printed = match output {
            Output::Json => writeln!(out, "{line}"),
            Output::Table => match serde_json::from_value::<FlowRecord>(v.clone()) {
                Ok(r) => writeln!(out, "{}", r.line()),
                Err(_) => writeln!(out, "({line})"),
            },
        };
        // A closed pipe (`| head`) ends it.
        printed.and_then(|()| out.flush()).is_ok()
    })?;
    if let Some(e) = error {
        bail!("{e}");
    }
    Ok(Outcome::Ok)
}
