//! Processes on the simulated node: the daemon (started, reloaded, stopped, killed, its
//! status awaited), servers and clients in pods, and the daemon's config.
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::netns::sh;
use super::{FABRIC_MAC, NODE_IPV4, NODE_IPV6, SimNode};

impl SimNode {
    /// Starts `enforcer run` inside the node namespace (`nsenter --net`, which, unlike
    /// `ip netns exec`, leaves /sys/fs/bpf visible) and waits until it has applied.
    pub fn start_daemon(&mut self, enforcer_bin: &Path, config: &Path) -> Result<()> {
        let log = File::create(self.workdir.join("daemon.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg(enforcer_bin)
            .args(["run", "--config"])
            .arg(config)
            .args(&self.daemon_args)
            .env("RUST_LOG", "info")
            .envs(self.daemon_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", enforcer_bin.display()))?;
        self.daemon = Some(child);
        self.wait_generation(1)
    }

    /// The running daemon's process id (nsenter execs it, so it is the child's).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    pub(super) fn state_dir(&self) -> PathBuf {
        self.workdir.join("state")
    }

    /// The daemon's status, live from its control socket (counters read from the maps
    /// now); what it last published when the socket can't be reached.
    pub fn status(&self) -> Result<enforcer::status::NodeStatus> {
        use enforcer::control::{Request, ask};
        match ask(&self.state_dir(), Request::Status) {
            Ok(reply) => Ok(serde_json::from_str(&reply)?),
            Err(_) => enforcer::daemon::read_status(&self.state_dir()),
        }
    }

    /// Polls the live status until `ok` holds (10 s at most); panics naming `what`, with
    /// the status table, when it does not.
    pub fn wait_status(&self, what: &str, ok: impl Fn(&enforcer::status::NodeStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.status().expect("status");
            if ok(&st) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}:\n{}", st.render_table());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 20 s) until the daemon has applied generation `g` or later.
    pub fn wait_generation(&mut self, g: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.daemon.as_mut()
                && let Some(st) = child.try_wait()?
            {
                bail!("daemon exited with {st}; log:\n{}", self.daemon_log());
            }
            if let Ok(s) = self.status()
                && s.generation >= g
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon did not reach generation {g} within 20 s; log:\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the daemon to re-read its sources (its control socket, as `enforcer
    /// reload` does); returns once the new generation is applied.
    pub fn reload_daemon(&mut self) -> Result<u64> {
        use enforcer::control::{Request, ask};
        let reply = ask(&self.state_dir(), Request::Reload)?;
        let st: enforcer::status::NodeStatus = serde_json::from_str(&reply)?;
        Ok(st.generation)
    }

    /// Sends SIGHUP and waits for the daemon to apply the re-read sources.
    pub fn signal_reload(&mut self) -> Result<()> {
        let g = self.status()?.generation;
        let pid = self.daemon.as_ref().context("daemon not running")?.id();
        // SAFETY: our own child, not yet waited for, so its pid can't have been reused.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        self.wait_generation(g + 1)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.workdir.join("daemon.log")).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM (bounded wait, then SIGKILL); returns its exit status.
    pub fn stop_daemon(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.daemon.take()?;
        // SAFETY: our own child, not yet waited for, so its pid can't have been reused.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Kills the daemon with SIGKILL (no chance to clean anything up) and removes its
    /// status file, so a daemon started next is waited for properly.
    pub fn kill_daemon(&mut self) -> Result<()> {
        let mut child = self.daemon.take().context("daemon not running")?;
        child.kill()?;
        child.wait()?;
        let _ = std::fs::remove_file(self.state_dir().join(enforcer::status::STATUS_FILE));
        Ok(())
    }

    /// Gives a namespace its own resolv.conf (`ip netns exec` bind-mounts
    /// /etc/netns/<ns>/resolv.conf over /etc/resolv.conf).
    pub fn set_resolver(&self, ns: &str, nameserver: &str, search: &str) -> Result<()> {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\nsearch {search}\noptions timeout:1 attempts:1\n"),
        )?;
        Ok(())
    }

    /// Starts a long-running program in a namespace; killed when the node is dropped.
    /// Returns its number, for [`SimNode::kill_child`].
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> Result<usize> {
        let name = Path::new(args[0])
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let log = File::create(
            self.workdir
                .join(format!("{}-{name}.log", self.children.len())),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {args:?} in {ns}"))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Kills one program `spawn` started (a replica crashing).
    pub fn kill_child(&mut self, i: usize) {
        if let Some(c) = self.children.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops every program `spawn` started (an agent going away).
    pub fn stop_children(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Runs a command in a namespace with a time limit; Ok(stdout) when it succeeded.
    pub fn exec(&self, ns: &str, args: &[&str], limit: Duration) -> Result<String> {
        let secs = limit.as_secs().max(1).to_string();
        let mut full = vec!["timeout", &secs, "ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// One ping (ICMP echo, v4 or v6) from a namespace; true when answered.
    pub fn ping(&self, ns: &str, dst: &str) -> bool {
        self.ping_from(ns, None, dst)
    }

    /// As `ping`, from a chosen source address.
    pub fn ping_from(&self, ns: &str, src: Option<&str>, dst: &str) -> bool {
        let fam = if dst.parse::<IpAddr>().map(|a| a.is_ipv6()).unwrap_or(false) {
            "-6"
        } else {
            "-4"
        };
        let mut args = vec!["ping", fam, "-c", "1", "-W", "1"];
        if let Some(s) = src {
            args.extend(["-I", s]);
        }
        args.push(dst);
        self.exec(ns, &args, Duration::from_secs(3)).is_ok()
    }
}

/// Writes the daemon's config for this node (strict mode, fabric as the VPC router).
pub fn write_config(
    sim: &SimNode,
    groups_json: &str,
    k8s_yaml: &str,
    extra_node: &str,
) -> Result<PathBuf> {
    let dir = &sim.workdir;
    std::fs::write(dir.join("groups.json"), groups_json)?;
    std::fs::write(dir.join("k8s.yaml"), k8s_yaml)?;
    let cfg = format!(
        "node:\n  trunkInterface: trunk0\n  gatewayMac: '{FABRIC_MAC}'\n  primaryIPv4: {NODE_IPV4}\n  primaryIPv6: '{NODE_IPV6}'\n  primaryInterface: eth0\n  vpcCidrs: [10.0.0.0/16, 'fd00:10::/32']\n{extra_node}securityGroups: [groups.json]\nkubernetes: [k8s.yaml]\nstateDir: {}\nbpffsDir: {}\n",
        sim.state_dir().display(),
        sim.bpffs_dir.display()
    );
    let path = dir.join("enforcer.yaml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}
