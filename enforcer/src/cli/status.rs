//! `enforcer status`: read live from the running daemon (its control socket: counters
//! and fill levels from the maps now), or what it last published when the socket
//! can't be reached.
use crate::cli::{DaemonArgs, Outcome, Output, print};
use crate::control::{Request, ask};

pub fn run(daemon: DaemonArgs, rules: bool, output: Output) -> anyhow::Result<Outcome> {
    let dir = daemon.dir()?;
    if rules {
        let report: Vec<crate::hits::PodRules> =
            serde_json::from_value(crate::control::answer(&ask(&dir, Request::Rules)?)?)?;
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
