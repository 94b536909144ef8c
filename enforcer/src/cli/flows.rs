//! `enforcer flows`: the daemon's flow events, one per line (JSON lines with `-o json`).
use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;

use crate::cli::{Outcome, Output};
use crate::control::{Request, answer, ask, stream};
use crate::flows::{FlowRecord, FlowRow};

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

/// `enforcer flows table --pod`.
pub fn table(pod: &str, state_dir: PathBuf, output: Output) -> anyhow::Result<Outcome> {
    let v = answer(&ask(&state_dir, Request::FlowTable { pod: pod.into() })?)?;
    let rows: Vec<FlowRow> = serde_json::from_value(v)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            println!(
                "{:<7} {:<42} {:<42} {:<8} {:<16} {:>7} {:>6} {:<5} RULE",
                "PROTO", "LOCAL", "REMOTE", "OPENED", "STATE", "AGE", "IDLE", "PATH"
            );
            for r in &rows {
                println!(
                    "{:<7} {:<42} {:<42} {:<8} {:<16} {:>7} {:>5}s {:<5} {}",
                    r.protocol,
                    r.local,
                    r.remote,
                    r.opened,
                    r.state,
                    r.age_seconds.map_or("-".into(), |a| format!("{a}s")),
                    r.idle_seconds,
                    r.path,
                    r.rule.as_deref().unwrap_or("-")
                );
            }
            println!("{} entries (all tracked)", rows.len());
        }
    }
    Ok(Outcome::Ok)
}

/// `enforcer flows flush --pod`.
pub fn flush(pod: &str, state_dir: PathBuf) -> anyhow::Result<Outcome> {
    let v = answer(&ask(&state_dir, Request::FlowFlush { pod: pod.into() })?)?;
    println!("flushed {} flows of {pod}", v["flushed"]);
    Ok(Outcome::Ok)
}
