//! A simulated node built from network namespaces, shared by the demo and the tests:
//!
//! ```text
//!  [pod ns] eth0 ──veth── <host veth> [node ns] trunk0 ──veth── fab0 [fabric ns]
//!                                                       (802.1Q)   "remote" VPC hosts on lo
//! ```
//! The fabric plays the VPC: it routes, tags frames toward each branch ENI with its VLAN
//! and untags frames from the trunk (its own small programs; this kernel has no VLAN
//! devices). The node's own address sits on the trunk link, untagged. Everything is
//! removed when the `SimNode` is dropped, also when a test fails.
use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use enforcer::config::host_veth_name;
use enforcer_common::map_names;

use crate::fabric::Fabric;

/// The simulated CNI names host interfaces as the AWS VPC CNI does (and as the daemon's
/// default `hostVethPrefix` expects).
pub const SIM_VETH_PREFIX: &str = "vlan";
pub const FABRIC_MAC: &str = "02:fa:00:00:00:01";
pub const TRUNK_MAC: &str = "02:7e:00:00:00:01";
pub const NODE_IPV4: &str = "10.0.0.10";
pub const NODE_IPV6: &str = "fd00:10::10";
pub const FABRIC_IPV4: &str = "10.0.0.1";
pub const FABRIC_IPV6: &str = "fd00:10::1";

/// Runs a command; the error carries its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS <command>`, the command split on whitespace (no argument here has a space).
fn ip(ns: &str, command: &str) -> Result<String> {
    let mut args = vec!["ip", "-n", ns];
    args.extend(command.split_whitespace());
    sh(&args)
}

/// `ip <command>` in our own namespace.
fn ip_root(command: &str) -> Result<String> {
    let mut args = vec!["ip"];
    args.extend(command.split_whitespace());
    sh(&args)
}

/// Runs `f` on a thread that has entered the named network namespace. Sockets it opens
/// belong to that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
}

/// Spawns `f` on a thread inside the namespace and returns its handle.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: an open namespace file; setns moves only this (new) thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow!(
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    }))
}

#[derive(Clone, Debug)]
pub struct SimPod {
    pub namespace: String,
    pub name: String,
    pub mac: String,
    pub ipv4: String,
    pub ipv6: String,
    pub vlan: u16,
}

impl SimPod {
    pub fn annotation(&self) -> String {
        format!(
            r#"[{{"eniId":"eni-{}","ifAddress":"{}","privateIp":"{}","ipv6Addr":"{}","vlanId":{},"subnetCidr":"10.0.1.0/24","subnetV6Cidr":"fd00:10:1::/64"}}]"#,
            self.name, self.mac, self.ipv4, self.ipv6, self.vlan
        )
    }
}

/// Short, unique prefix for the names of one simulated node (interface names are
/// limited to 15 bytes; namespace names are not, but short ones read better). It carries
/// the creating process's id so leftovers of a killed run can be recognised.
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "ps{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes what simulated nodes of processes that no longer exist left behind: a test
/// killed by a timeout never runs its guards.
fn remove_leftovers() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(prefix) = ns.split('-').next() else {
            continue;
        };
        let Some(pid) = prefix
            .strip_prefix("ps")
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sh(&["ip", "netns", "del", ns]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        let pins = PathBuf::from(format!("/sys/fs/bpf/podsg-{prefix}"));
        let _ = enforcer::datapath::links::uninstall(&pins, &map_names::ALL);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("podsg-{prefix}")));
    }
}

pub struct SimNode {
    pub prefix: String,
    pub fabric_ns: String,
    pub node_ns: String,
    pub pods: Vec<(SimPod, String)>,
    pub workdir: PathBuf,
    pub bpffs_dir: PathBuf,
    namespaces: Vec<String>,
    fabric: Option<Fabric>,
    daemon: Option<Child>,
    children: Vec<Child>,
}

impl SimNode {
    pub fn pod_ns(&self, name: &str) -> &str {
        &self
            .pods
            .iter()
            .find(|(p, _)| p.name == name)
            .expect("no such pod")
            .1
    }

    /// Builds the namespaces, links and addresses, and the fabric's tagging programs.
    /// `remote` are addresses the fabric hosts (VPC hosts off this node).
    pub fn build(pods: &[SimPod], remote: &[&str]) -> Result<SimNode> {
        remove_leftovers();
        let prefix = unique_prefix();
        let workdir = std::env::temp_dir().join(format!("podsg-{prefix}"));
        std::fs::create_dir_all(&workdir)?;
        let mut sim = SimNode {
            fabric_ns: format!("{prefix}-fabric"),
            node_ns: format!("{prefix}-node"),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/podsg-{prefix}")),
            prefix,
            pods: Vec::new(),
            workdir,
            namespaces: Vec::new(),
            fabric: None,
            daemon: None,
            children: Vec::new(),
        };
        sim.build_inner(pods, remote)?;
        Ok(sim)
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        ip_root(&format!("netns add {name}"))?;
        self.namespaces.push(name.to_string());
        ip(name, "link set lo up")?;
        Ok(())
    }

    fn sysctl(ns: &str, kv: &[&str]) -> Result<()> {
        for s in kv {
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", s])?;
        }
        Ok(())
    }

    fn build_inner(&mut self, pods: &[SimPod], remote: &[&str]) -> Result<()> {
        let (fab, node) = (self.fabric_ns.clone(), self.node_ns.clone());
        self.add_ns(&fab)?;
        self.add_ns(&node)?;
        ip_root(&format!(
            "link add trunk0 netns {node} type veth peer name fab0 netns {fab}"
        ))?;
        ip(&fab, &format!("link set fab0 address {FABRIC_MAC} up"))?;
        ip(&node, &format!("link set trunk0 address {TRUNK_MAC} up"))?;
        ip(&fab, &format!("addr add {FABRIC_IPV4}/16 dev fab0"))?;
        ip(&fab, &format!("addr add {FABRIC_IPV6}/32 dev fab0 nodad"))?;
        ip(&node, &format!("addr add {NODE_IPV4}/16 dev trunk0"))?;
        ip(&node, &format!("addr add {NODE_IPV6}/32 dev trunk0 nodad"))?;
        // The node reaches pods (and the VPC's hosts) through the VPC, as in strict mode.
        ip(&node, &format!("route add 10.0.1.0/24 via {FABRIC_IPV4}"))?;
        ip(
            &node,
            &format!("-6 route add fd00:10:1::/64 via {FABRIC_IPV6}"),
        )?;
        ip(
            &node,
            &format!("-6 route add fd00:10:2::/64 via {FABRIC_IPV6}"),
        )?;
        for (ns, addr, mac, dev) in [
            (&fab, NODE_IPV4, TRUNK_MAC, "fab0"),
            (&fab, NODE_IPV6, TRUNK_MAC, "fab0"),
            (&node, FABRIC_IPV4, FABRIC_MAC, "trunk0"),
            (&node, FABRIC_IPV6, FABRIC_MAC, "trunk0"),
        ] {
            ip(
                ns,
                &format!("neigh replace {addr} lladdr {mac} dev {dev} nud permanent"),
            )?;
        }
        Self::sysctl(
            &fab,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.fab0.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.fab0.rp_filter=0",
            ],
        )?;
        for r in remote {
            let plen = if r.contains(':') { "128" } else { "32" };
            ip(&fab, &format!("addr add {r}/{plen} dev lo"))?;
        }

        let mut vlan_by_mac = BTreeMap::new();
        for p in pods {
            let pns = format!("{}-{}", self.prefix, p.name);
            self.add_ns(&pns)?;
            self.connect_pod(p, &pns)?;
            for addr in [&p.ipv4, &p.ipv6] {
                ip(
                    &fab,
                    &format!(
                        "neigh replace {addr} lladdr {} dev fab0 nud permanent",
                        p.mac
                    ),
                )?;
            }
            vlan_by_mac.insert(
                p.mac
                    .parse::<enforcer::model::mac::MacAddr>()
                    .context("pod mac")?
                    .octets(),
                p.vlan,
            );
            self.pods.push((p.clone(), pns));
        }

        // The fabric's tagging programs, loaded from inside its namespace.
        let fabric = in_netns(&fab, move || Fabric::attach("fab0", &vlan_by_mac))??;
        self.fabric = Some(fabric);
        Ok(())
    }

    /// The pod's veth pair, addresses, routes and gateway neighbour: what the CNI does
    /// when a pod starts.
    fn connect_pod(&self, p: &SimPod, pns: &str) -> Result<()> {
        let node = &self.node_ns;
        let host = host_veth_name(SIM_VETH_PREFIX, &p.namespace, &p.name);
        let host_mac = format!("02:ee:00:00:{:02x}:{:02x}", p.vlan >> 8, p.vlan & 0xff);
        ip_root(&format!(
            "link add {host} netns {node} type veth peer name eth0 netns {pns}"
        ))?;
        ip(node, &format!("link set {host} address {host_mac} up"))?;
        ip(pns, &format!("link set eth0 address {} up", p.mac))?;
        ip(pns, &format!("addr add {}/32 dev eth0", p.ipv4))?;
        ip(pns, &format!("addr add {}/128 dev eth0 nodad", p.ipv6))?;
        // The AWS VPC CNI's pod gateway: 169.254.1.1 / fe80::1 at the host veth's MAC,
        // permanent, so the pod never ARPs.
        ip(pns, "route add 169.254.1.1 dev eth0 scope link")?;
        ip(pns, "route add default via 169.254.1.1 dev eth0")?;
        ip(
            pns,
            &format!("neigh replace 169.254.1.1 lladdr {host_mac} dev eth0 nud permanent"),
        )?;
        ip(pns, "-6 route add default via fe80::1 dev eth0")?;
        ip(
            pns,
            &format!("-6 neigh replace fe80::1 lladdr {host_mac} dev eth0 nud permanent"),
        )?;
        Self::sysctl(
            pns,
            &[
                "net.ipv4.conf.all.accept_redirects=0",
                "net.ipv6.conf.all.accept_redirects=0",
                "net.ipv6.conf.eth0.accept_redirects=0",
            ],
        )
    }

    fn sim_pod(&self, name: &str) -> Result<&(SimPod, String)> {
        self.pods
            .iter()
            .find(|(p, _)| p.name == name)
            .with_context(|| format!("no simulated pod {name}"))
    }

    /// Removes a pod's veth pair, as the CNI does when the pod's sandbox goes away.
    pub fn disconnect_pod(&self, name: &str) -> Result<()> {
        let (p, _) = self.sim_pod(name)?;
        let host = host_veth_name(SIM_VETH_PREFIX, &p.namespace, &p.name);
        ip(&self.node_ns, &format!("link del {host}"))?;
        Ok(())
    }

    /// Sets a disconnected pod up again (a new host interface, with a new ifindex).
    pub fn reconnect_pod(&self, name: &str) -> Result<()> {
        let (p, pns) = self.sim_pod(name)?;
        self.connect_pod(p, pns)
    }

    /// Starts `enforcer run` inside the node namespace (`nsenter --net`, which, unlike
    /// `ip netns exec`, leaves /sys/fs/bpf visible) and waits until it has applied.
    pub fn start_daemon(&mut self, enforcer_bin: &Path, config: &Path) -> Result<()> {
        let log = File::create(self.workdir.join("daemon.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg(enforcer_bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", enforcer_bin.display()))?;
        self.daemon = Some(child);
        self.wait_generation(1)
    }

    fn state_dir(&self) -> PathBuf {
        self.workdir.join("state")
    }

    pub fn status(&self) -> Result<enforcer::status::NodeStatus> {
        enforcer::daemon::read_status(&self.state_dir())
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

    /// Sends SIGHUP and waits for the daemon to apply the re-read sources.
    pub fn reload_daemon(&mut self) -> Result<()> {
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

    /// How many frames the fabric received from the trunk tagged with `vlan`.
    pub fn fabric_frames_on_vlan(&self, vlan: u16) -> u64 {
        self.fabric.as_ref().map_or(0, |f| f.frames_on_vlan(vlan))
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
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> Result<()> {
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
        Ok(())
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

impl Drop for SimNode {
    fn drop(&mut self) {
        self.stop_daemon();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.fabric = None;
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        // A stopped daemon leaves its datapath pinned (and enforcing): remove it.
        let _ = enforcer::datapath::links::uninstall(&self.bpffs_dir, &map_names::ALL);
        if std::env::var_os("PODSG_KEEP_SIM_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
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
        "node:\n  trunkInterface: trunk0\n  gatewayMac: '{FABRIC_MAC}'\n  primaryIPv4: {NODE_IPV4}\n  vpcCidrs: [10.0.0.0/16, 'fd00:10::/32']\n{extra_node}securityGroups: [groups.json]\nkubernetes: [k8s.yaml]\nstateDir: {}\nbpffsDir: {}\n",
        sim.state_dir().display(),
        sim.bpffs_dir.display()
    );
    let path = dir.join("enforcer.yaml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// Kubernetes objects for the simulated pods: each with its branch-ENI annotation.
pub fn pods_yaml(pods: &[SimPod], labels: &dyn Fn(&SimPod) -> String) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {}\n  annotations:\n    vpc.amazonaws.com/pod-eni: '{}'\n",
                p.name,
                p.namespace,
                labels(p),
                p.annotation()
            )
        })
        .collect()
}

/// The n-th simulated branch pod: 10.0.1.(10+n), VLAN 10+n.
pub fn sim_pod(namespace: &str, name: &str, n: u16) -> SimPod {
    SimPod {
        namespace: namespace.into(),
        name: name.into(),
        mac: format!("02:00:00:00:{:02x}:{:02x}", (10 + n) >> 8, (10 + n) & 0xff),
        ipv4: format!("10.0.1.{}", 10 + n),
        ipv6: format!("fd00:10:1::{:x}", 0x10 + n),
        vlan: 10 + n,
    }
}
