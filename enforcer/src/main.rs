use anyhow::Result;
use clap::Parser;
use enforcer::cli::{Cli, Command, Output};
use enforcer::config::Config;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse().command) {
        // The chain of causes, one line: what failed and why, not a Rust backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(enforcer::daemon::run(&config)),
        Command::Status {
            state_dir,
            config,
            output,
        } => {
            let dir = match config {
                Some(c) => Config::load(&c)?.state_dir,
                None => state_dir,
            };
            let s = enforcer::daemon::read_status(&dir)?;
            match output {
                Output::Table => print!("{}", s.render_table()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(())
        }
        Command::Check { config, output } => {
            let cfg = Config::load(&config)?;
            let s = enforcer::daemon::dry_run(&cfg)?;
            match output {
                Output::Table => print!("{}", s.render_table()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            let failed: Vec<String> = s
                .pods
                .iter()
                .filter(|p| p.state != enforcer::status::PodState::NotBranch && p.error.is_some())
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            // Expected outcomes, not failures of the program: no error chain and no
            // backtrace, whatever RUST_BACKTRACE says.
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
            if !failed.is_empty() || !s.source_errors.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Uninstall { bpffs_dir, config } => {
            let dir = match config {
                Some(c) => Config::load(&c)?.bpffs_dir,
                None => bpffs_dir,
            };
            let removed =
                enforcer::datapath::links::uninstall(&dir, &enforcer_common::map_names::ALL)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", dir.display());
            } else {
                println!(
                    "detached and removed {} pins under {}: {}",
                    removed.len(),
                    dir.display(),
                    removed.join(", ")
                );
            }
            Ok(())
        }
    }
}
