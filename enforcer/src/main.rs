use anyhow::Result;
use clap::Parser;
use enforcer::cli::{Cli, Command, Output};
use enforcer::config::Config;

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
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
        Command::Demo => enforcer::demo::run(),
    }
}
