//! The daemon's control socket (`<stateDir>/control.sock`, root only): an operator or a
//! test asks for a reload and learns when it is applied, or reads status live from the
//! maps — no PID to find, no file written every 2 s to poll. One request line, one JSON
//! reply line.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

pub const SOCKET: &str = "control.sock";

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Re-read the config and every source, apply, then answer with the status.
    Reload,
    /// The status, with counters and fill levels read from the maps now.
    Status,
    /// The verdict for one packet and why, from the model and the live maps.
    Explain(crate::explain::Query),
    /// The kept flow events (of one pod: `NAMESPACE/NAME`), one JSON line each; with
    /// `follow`, then each new one as it is read.
    Flows { pod: Option<String>, follow: bool },
    /// The live flow-table entries of a pod (`NAMESPACE/NAME`).
    FlowTable { pod: String },
    /// Remove a pod's flow-table entries.
    FlowFlush { pod: String },
    /// Each enforced pod's rules with their hits.
    Rules,
    /// The node's pods and policies against AWS's advice.
    Doctor,
}

impl Request {
    pub fn parse(line: &str) -> Option<Request> {
        let line = line.trim();
        match line {
            "reload" => Some(Request::Reload),
            "status" => Some(Request::Status),
            "rules" => Some(Request::Rules),
            "doctor" => Some(Request::Doctor),
            _ => {
                if let Some(p) = line.strip_prefix("flow-table ") {
                    return Some(Request::FlowTable { pod: p.into() });
                }
                if let Some(p) = line.strip_prefix("flow-flush ") {
                    return Some(Request::FlowFlush { pod: p.into() });
                }
                if let Some(f) = line.strip_prefix("flows ") {
                    let v: serde_json::Value = serde_json::from_str(f).ok()?;
                    return Some(Request::Flows {
                        pod: v["pod"].as_str().map(str::to_string),
                        follow: v["follow"].as_bool().unwrap_or(false),
                    });
                }
                let q = line.strip_prefix("explain ")?;
                serde_json::from_str(q).ok().map(Request::Explain)
            }
        }
    }
    fn line(&self) -> String {
        match self {
            Request::Reload => "reload".into(),
            Request::Status => "status".into(),
            Request::Explain(q) => {
                format!("explain {}", serde_json::to_string(q).unwrap_or_default())
            }
            Request::Flows { pod, follow } => format!(
                "flows {}",
                serde_json::json!({ "pod": pod, "follow": follow })
            ),
            Request::FlowTable { pod } => format!("flow-table {pod}"),
            Request::FlowFlush { pod } => format!("flow-flush {pod}"),
            Request::Rules => "rules".into(),
            Request::Doctor => "doctor".into(),
        }
    }
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Connects to the daemon of `state_dir` and sends `req`.
fn send(state_dir: &Path, req: &Request) -> Result<(UnixStream, PathBuf)> {
    let path = socket_path(state_dir);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is `enforcer run` running with this state dir?)",
            path.display()
        )
    })?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{}", req.line())?;
    Ok((s, path))
}

/// The daemon's JSON answer, or the error it reports (`{"error": ...}`) as one.
pub fn answer(reply: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(reply).context("the daemon's answer is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

/// Sends `req` to the daemon of `state_dir` and returns its reply (bounded in time).
pub fn ask(state_dir: &Path, req: Request) -> Result<String> {
    let (s, path) = send(state_dir, &req)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .with_context(|| format!("reading the daemon's answer on {}", path.display()))?;
    anyhow::ensure!(
        !reply.is_empty(),
        "the daemon closed {} without answering",
        path.display()
    );
    Ok(reply)
}

/// Sends `req` and hands each line of the answer to `each` until the daemon closes the
/// connection (a following stream: until `each` says stop, or the process ends).
pub fn stream(state_dir: &Path, req: Request, mut each: impl FnMut(&str) -> bool) -> Result<()> {
    let (s, path) = send(state_dir, &req)?;
    for line in BufReader::new(s).lines() {
        let line = line.with_context(|| format!("reading from {}", path.display()))?;
        if !each(&line) {
            break;
        }
    }
    Ok(())
}
