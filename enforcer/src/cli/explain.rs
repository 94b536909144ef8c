//! `enforcer explain`: asks the running daemon why a packet of a pod is allowed or
//! dropped. Exit 1 when the kernel's maps disagree with what the daemon wants.
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::cli::{Outcome, Output};
use crate::control::{Request, ask};
use crate::explain::{Explanation, Query};
use crate::model::group::Direction;

pub fn run(
    pod: &str,
    to: Option<String>,
    from: Option<String>,
    state_dir: PathBuf,
    output: Output,
) -> anyhow::Result<Outcome> {
    let (namespace, name) = pod
        .split_once('/')
        .with_context(|| format!("--pod {pod:?}: NAMESPACE/NAME"))?;
    let (direction, target) = match (to, from) {
        (Some(t), None) => (Direction::Outbound, t),
        (None, Some(f)) => (Direction::Inbound, f),
        _ => bail!("one of --to and --from"),
    };
    let (remote, proto, port) = Query::parse_target(&target).map_err(anyhow::Error::msg)?;
    let q = Query {
        namespace: namespace.into(),
        name: name.into(),
        direction,
        remote,
        proto,
        port,
    };
    let reply = crate::control::answer(&ask(&state_dir, Request::Explain(q))?)?;
    let e: Explanation = serde_json::from_value(reply).context("the daemon's answer")?;
    match output {
        Output::Table => print!("{}", e.render()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
    }
    Ok(match &e.kernel {
        Some(k) if !k.agrees => Outcome::Failed,
        _ => Outcome::Ok,
    })
}
