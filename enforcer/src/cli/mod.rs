//! Command-line interface: the arguments (here) and one module per command.
mod check;
mod explain;
mod flows;
mod reload;
mod status;
mod uninstall;
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
    /// Flags win over the config file (and over POD_SECURITY_GROUP_ENFORCING_MODE).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name, for the Kubernetes API source (env NODE_NAME wins, as a
        /// DaemonSet sets it from spec.nodeName).
        #[arg(long)]
        node_name: Option<String>,
        /// A kubeconfig for the Kubernetes API source (else the in-cluster account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The mode of pods first seen from now on.
        #[arg(long, value_enum)]
        enforcing_mode: Option<crate::config::Mode>,
        /// Where status, memory and the control socket live (stateDir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Poll EC2 and publish its security groups, members and prefix lists as
    /// MirroredSecurityGroup / MirroredPrefixList objects (one leader per cluster,
    /// elected by a Lease); daemons with `kubernetesApi.mirroredGroups` read them.
    Mirror {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the CustomResourceDefinitions of the mirror's kinds (YAML).
    Crds,
    /// Dry run: read the config and every source, resolve and compile, and show what
    /// would be enforced, without touching the kernel. Exits 1 when a pod would be
    /// fail-closed or a source cannot be read.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show each pod's groups, VLAN, mode, rule counts, errors and counters (live from
    /// the running daemon; what it last published if it can't be reached).
    Status {
        /// Each pod's rules instead, with the flows each admitted since the daemon
        /// started; rules that never matched are marked.
        #[arg(long)]
        rules: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Ask the running daemon to re-read its config and every source; returns once the
    /// new generation is applied (exit 1 when a source could not be read).
    Reload {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// The verdict for one packet of a pod and why: the rule that allows it, or the
    /// rules that nearly do and what differs; always-allowed, host-local and source NAT;
    /// and whether the kernel's live maps agree (asks the running daemon).
    Explain {
        /// NAMESPACE/NAME of a pod on this node.
        #[arg(long)]
        pod: String,
        /// The pod sends to ADDR[:PORT][/tcp|udp|icmp|PROTO] (tcp when unsaid).
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        to: Option<String>,
        /// ADDR sends to the pod: ADDR[:PORT][/PROTO], PORT being the pod's port.
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Check the node's pods and policies against AWS's advice (DNS to CoreDNS, kubelet
    /// probes in strict mode, grace periods, off-VPC egress without NAT, policies that
    /// selected a pod with no branch ENI, groups near their quota): each finding with
    /// its object, severity and fix. Exit 1 when there is an error.
    Doctor {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Flow events: every denied packet and every new flow the rules allowed, with the
    /// pod, the 5-tuple, the reason and the allowing rule (rate-limited per pod in the
    /// kernel; `enforcer status -o json` counts what a pod's budget left out).
    /// `flows table` / `flows flush`: a pod's live flow-table entries.
    #[command(args_conflicts_with_subcommands = true)]
    Flows {
        #[command(subcommand)]
        action: Option<FlowsAction>,
        /// Only this pod's: NAMESPACE/NAME.
        #[arg(long)]
        pod: Option<String>,
        /// After the kept events, print each new one as it comes (until interrupted).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
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

#[derive(Subcommand)]
pub enum FlowsAction {
    /// A pod's live flow-table entries: tuple, who opened it, state, idle time, path and
    /// the rule that allowed it (every entry is tracked; untracked traffic has none).
    Table {
        /// NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Remove a pod's flow-table entries: its next packets meet the rules afresh (the
    /// daemon logs it). Established connections the rules no longer allow then stop.
    Flush {
        /// NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// Which daemon to ask.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The daemon's state directory (stateDir in its config).
    #[arg(long, default_value = "/run/podsg", conflicts_with = "config")]
    state_dir: PathBuf,
    /// Read stateDir from this config instead.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl DaemonArgs {
    fn dir(self) -> anyhow::Result<PathBuf> {
        state_dir_of(self.state_dir, self.config)
    }
}

/// What a finished command asks of the process: exit 1 for an expected "no" (a pod would
/// fail closed), without an error chain or a backtrace.
pub enum Outcome {
    Ok,
    Failed,
}

/// Runs a command.
pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Run {
            config,
            node_name,
            kubeconfig,
            enforcing_mode,
            state_dir,
        } => {
            let flags = crate::config::Overrides {
                node_name,
                kubeconfig,
                enforcing_mode,
                state_dir,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::daemon::run(&config, flags))
                .map(|()| Outcome::Ok)
        }
        Command::Mirror { config } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::mirror::run(&config))
            .map(|()| Outcome::Ok),
        Command::Crds => {
            print!("{}", crate::mirror::crds()?);
            Ok(Outcome::Ok)
        }
        Command::Status {
            rules,
            daemon,
            output,
        } => status::run(daemon, rules, output),
        Command::Reload { daemon, output } => reload::run(daemon.dir()?, output),
        Command::Check { config, output } => check::run(&config, output),
        Command::Explain {
            pod,
            to,
            from,
            daemon,
            output,
        } => explain::run(&pod, to, from, daemon.dir()?, output),
        Command::Doctor { daemon, output } => {
            let findings: Vec<crate::doctor::Finding> =
                serde_json::from_value(crate::control::answer(&crate::control::ask(
                    &daemon.dir()?,
                    crate::control::Request::Doctor,
                )?)?)?;
            match output {
                Output::Table => print!("{}", crate::doctor::render(&findings)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
            }
            let errors = findings
                .iter()
                .any(|f| f.severity == crate::doctor::Severity::Error);
            Ok(if errors { Outcome::Failed } else { Outcome::Ok })
        }
        Command::Flows {
            action: None,
            pod,
            follow,
            daemon,
            output,
        } => flows::run(pod, follow, daemon.dir()?, output),
        Command::Flows {
            action:
                Some(FlowsAction::Table {
                    pod,
                    daemon,
                    output,
                }),
            ..
        } => flows::table(&pod, daemon.dir()?, output),
        Command::Flows {
            action: Some(FlowsAction::Flush { pod, daemon }),
            ..
        } => flows::flush(&pod, daemon.dir()?),
        Command::Uninstall { bpffs_dir, config } => uninstall::run(bpffs_dir, config),
    }
}

/// The state directory: `--config`'s stateDir, or `--state-dir`.
fn state_dir_of(state_dir: PathBuf, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match config {
        Some(c) => crate::config::Config::load(&c)?.state_dir,
        None => state_dir,
    })
}

/// Prints status as a table or JSON.
fn print(s: &crate::status::NodeStatus, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", s.render_table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(s)?),
    }
    Ok(())
}
