//! Command-line interface.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "enforcer",
    about = "Security groups per pod, enforced by eBPF on the node",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the datapath and enforce the configured sources until stopped.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Dry run: read the config and every source, resolve and compile, and show what
    /// would be enforced, without touching the kernel. Exits 1 when a pod would be
    /// fail-closed or a source cannot be read.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show each pod's groups, VLAN, mode, rule counts, errors and counters.
    Status {
        /// The daemon's state directory (stateDir in its config).
        #[arg(long, default_value = "/run/podsg", conflicts_with = "config")]
        state_dir: PathBuf,
        /// Read stateDir from this config instead.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Detach the datapath on purpose: remove the pinned links (the programs leave the
    /// trunk and every pod interface) and the pinned maps. Stop the daemon first. A
    /// stopped, killed or upgrading daemon never detaches: its pinned programs keep
    /// enforcing until a new daemon adopts them.
    Uninstall {
        /// The pin directory (bpffsDir in the daemon's config).
        #[arg(long, default_value = "/sys/fs/bpf/podsg", conflicts_with = "config")]
        bpffs_dir: PathBuf,
        /// Read bpffsDir from this config instead.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}
