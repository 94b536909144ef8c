//! A simulated node built from network namespaces, shared by the demo and the tests:
//!
//! ```text
//!  [pod ns] eth0 ──veth── <host veth> [node ns] trunk0 ──veth── fab0 [fabric ns]
//!                                                       (802.1Q)   "remote" VPC hosts on lo
//!                                      [node ns] eth0 ───veth── fab1 (primary ENI)
//!                                    [inet ns] inet0 ───veth── fab2 (outside the VPC)
//! ```
//! The fabric plays the VPC: it routes, tags frames toward each branch ENI with its VLAN
//! and untags frames from the trunk (its own small programs; this kernel has no VLAN
//! devices). The node's own addresses sit on its primary ENI (`eth0` ── `fab1`), as on
//! EKS; an "internet" namespace (`inet0` ── `fab2`) lies outside every VPC CIDR.
//! Everything is removed when the `SimNode` is dropped, also when a test fails.
mod cni;
mod netns;
mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;

use anyhow::{Context, Result};

use crate::fabric::Fabric;

pub use cni::{SimPod, pods_yaml, sim_pod};
pub use netns::{in_netns, sh, spawn_in_netns, tcx_programs, xdp_program};
pub use process::write_config;

use netns::{ip, ip_root, remove_leftovers, unique_prefix};

/// The simulated CNI names host interfaces as the AWS VPC CNI does (and as the daemon's
/// default `hostVethPrefix` expects).
pub const SIM_VETH_PREFIX: &str = "vlan";
pub const FABRIC_MAC: &str = "02:fa:00:00:00:01";
/// Queues of the trunk's veth pair, each way.
const TRUNK_QUEUES: usize = 2;
pub const TRUNK_MAC: &str = "02:7e:00:00:00:01";
pub const NODE_IPV4: &str = "10.0.0.10";
pub const NODE_IPV6: &str = "fd00:10::10";
pub const FABRIC_IPV4: &str = "10.0.0.1";
pub const FABRIC_IPV6: &str = "fd00:10::1";
/// NodeLocal DNSCache's default address, on the node.
pub const NODE_LOCAL_DNS: &str = "169.254.20.10";
/// The node's primary ENI and the fabric's side of it.
pub const PRIMARY_MAC: &str = "02:7e:00:00:00:02";
pub const FABRIC_PRIMARY_MAC: &str = "02:fa:00:00:00:02";
/// A host outside every VPC CIDR, reachable through the fabric; it routes back only to
/// the node's primary address (IPv4: no NAT gateway) and to the VPC's IPv6 (as AWS
/// routes IPv6 without NAT).
pub const INTERNET_IPV4: &str = "203.0.113.10";
pub const INTERNET_IPV6: &str = "2001:db8:100::10";

pub struct SimNode {
    pub prefix: String,
    pub fabric_ns: String,
    pub node_ns: String,
    /// Outside every VPC CIDR: see [`INTERNET_IPV4`].
    pub internet_ns: String,
    pub pods: Vec<(SimPod, String)>,
    pub workdir: PathBuf,
    pub bpffs_dir: PathBuf,
    pub(super) namespaces: Vec<String>,
    pub(super) fabric: Option<Fabric>,
    pub(super) daemon: Option<Child>,
    /// Extra environment for the daemon (e.g. the AWS SDK's credentials and endpoint).
    pub daemon_env: Vec<(String, String)>,
    /// Flags given to `enforcer run` after `--config`.
    pub daemon_args: Vec<String>,
    pub(super) children: Vec<Child>,
}

impl SimNode {
    /// Where the daemon pins map `name`, as operators read it (`<bpffsDir>/maps/` points
    /// at the running layout's directory).
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.bpffs_dir.join("maps").join(name)
    }

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
            internet_ns: format!("{prefix}-inet"),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/podsg-{prefix}")),
            prefix,
            pods: Vec::new(),
            workdir,
            namespaces: Vec::new(),
            fabric: None,
            daemon: None,
            daemon_env: Vec::new(),
            daemon_args: Vec::new(),
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

    /// The "internet": its own namespace behind the fabric, with nothing on it but what a
    /// test starts there.
    fn build_internet(&mut self) -> Result<()> {
        let (fab, inet) = (self.fabric_ns.clone(), self.internet_ns.clone());
        self.add_ns(&inet)?;
        ip_root(&format!(
            "link add fab2 netns {fab} type veth peer name inet0 netns {inet}"
        ))?;
        ip(&fab, "link set fab2 up")?;
        ip(&inet, "link set inet0 up")?;
        ip(&fab, "addr add 203.0.113.1/24 dev fab2")?;
        ip(&fab, "addr add 2001:db8:100::1/64 dev fab2 nodad")?;
        ip(&inet, &format!("addr add {INTERNET_IPV4}/24 dev inet0"))?;
        ip(
            &inet,
            &format!("addr add {INTERNET_IPV6}/64 dev inet0 nodad"),
        )?;
        ip(&inet, &format!("route add {NODE_IPV4}/32 via 203.0.113.1"))?;
        for net in [&format!("{NODE_IPV6}/128"), "fd00:10:1::/64"] {
            ip(&inet, &format!("-6 route add {net} via 2001:db8:100::1"))?;
        }
        Ok(())
    }

    fn build_inner(&mut self, pods: &[SimPod], remote: &[&str]) -> Result<()> {
        let (fab, node) = (self.fabric_ns.clone(), self.node_ns.clone());
        self.add_ns(&fab)?;
        self.add_ns(&node)?;
        // The trunk ENI carries only the branch pods' tagged frames; the node's own
        // addresses are on its primary ENI, as EKS builds a node. Two queues each way,
        // one per CPU (as a NIC's RSS and XPS spread them): a flood arriving on one
        // CPU's queue is that CPU's work, not every queue's.
        ip_root(&format!(
            "link add trunk0 netns {node} numtxqueues {TRUNK_QUEUES} numrxqueues {TRUNK_QUEUES} type veth peer name fab0 netns {fab} numtxqueues {TRUNK_QUEUES} numrxqueues {TRUNK_QUEUES}"
        ))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for q in 0..TRUNK_QUEUES {
            let mask: u64 = (0..cpus.min(64))
                .filter(|c| c % TRUNK_QUEUES == q)
                .map(|c| 1u64 << c)
                .sum();
            sh(&[
                "ip",
                "netns",
                "exec",
                &fab,
                "sh",
                "-c",
                &format!("echo {mask:x} > /sys/class/net/fab0/queues/tx-{q}/xps_cpus"),
            ])?;
        }
        ip_root(&format!(
            "link add eth0 netns {node} type veth peer name fab1 netns {fab}"
        ))?;
        ip(&fab, &format!("link set fab0 address {FABRIC_MAC} up"))?;
        ip(&node, &format!("link set trunk0 address {TRUNK_MAC} up"))?;
        ip(
            &fab,
            &format!("link set fab1 address {FABRIC_PRIMARY_MAC} up"),
        )?;
        ip(&node, &format!("link set eth0 address {PRIMARY_MAC} up"))?;
        ip(&fab, &format!("addr add {FABRIC_IPV4}/16 dev fab1"))?;
        ip(&fab, &format!("addr add {FABRIC_IPV6}/32 dev fab1 nodad"))?;
        ip(&node, &format!("addr add {NODE_IPV4}/16 dev eth0"))?;
        ip(&node, &format!("addr add {NODE_IPV6}/32 dev eth0 nodad"))?;
        // A node-local agent's address (NodeLocal DNSCache's, on its own device there).
        // Host scope: never chosen as the node's source address (the node's probes come
        // from its primary address, as on EKS, where eth0 is the first device with one).
        ip(
            &node,
            &format!("addr add {NODE_LOCAL_DNS}/32 dev lo scope host"),
        )?;
        // The VPC routes each branch ENI's address to the trunk (tagged by the fabric's
        // programs) and the node's to its primary ENI.
        ip(&fab, "route add 10.0.1.0/24 dev fab0")?;
        ip(&fab, "-6 route add fd00:10:1::/64 dev fab0")?;
        // The node reaches pods, the VPC's hosts and the internet through the VPC.
        ip(&node, &format!("route add 10.0.1.0/24 via {FABRIC_IPV4}"))?;
        ip(&node, &format!("route add default via {FABRIC_IPV4}"))?;
        for net in ["fd00:10:1::/64", "fd00:10:2::/64", "default"] {
            ip(&node, &format!("-6 route add {net} via {FABRIC_IPV6}"))?;
        }
        for (ns, addr, mac, dev) in [
            (&fab, NODE_IPV4, PRIMARY_MAC, "fab1"),
            (&fab, NODE_IPV6, PRIMARY_MAC, "fab1"),
            (&node, FABRIC_IPV4, FABRIC_PRIMARY_MAC, "eth0"),
            (&node, FABRIC_IPV6, FABRIC_PRIMARY_MAC, "eth0"),
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
                "net.ipv4.conf.fab1.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.fab0.rp_filter=0",
                "net.ipv4.conf.fab1.rp_filter=0",
            ],
        )?;
        self.build_internet()?;
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

    /// The kernel's id of one of the fabric's programs.
    pub fn fabric_program_id(&self, name: &str) -> Option<u32> {
        self.fabric.as_ref()?.program_id(name)
    }

    /// The fabric sends frames to `mac` untagged (see `Fabric::untag`).
    pub fn fabric_untag(&mut self, mac: [u8; 6]) -> anyhow::Result<()> {
        self.fabric
            .as_mut()
            .context("the simulated node has no fabric")?
            .untag(mac)
    }

    /// How many frames the fabric received from the trunk tagged with `vlan`.
    pub fn fabric_frames_on_vlan(&self, vlan: u16) -> u64 {
        self.fabric.as_ref().map_or(0, |f| f.frames_on_vlan(vlan))
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
        let _ = enforcer::datapath::links::uninstall(&self.bpffs_dir);
        if std::env::var_os("PODSG_KEEP_SIM_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}
