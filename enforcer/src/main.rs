//! `enforcer`: dispatch only (see `cli`).
use clap::Parser;
use enforcer::cli::{Cli, Outcome};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or(enforcer::env::LOG, "info"))
        .init();
    match enforcer::cli::run(Cli::parse().command) {
        Ok(Outcome::Ok) => {}
        // An expected "no", already explained on stderr.
        Ok(Outcome::Failed) => std::process::exit(1),
        Err(e) => {
            // The chain of causes, one line: what failed and why, not a Rust backtrace.
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
