//! The shop: three branch pods on a simulated node and the groups the netns tests
//! share.
//!
//! ```text
//!  [pod ns] eth0 ──veth── vlan<hash> [node ns] trunk0 ──veth── fab0 [fabric ns]
//!  web 10.0.1.11 (VLAN 11), client .12 (12), other .13 (13)   VPC hosts 10.0.2.5/.6
//! ```
//! web may reach TCP 443 and UDP 5353 on 10.0.2.5 and ICMP in 10.0.2.0/24; client may
//! send anything; other has no inbound rule.
use std::path::PathBuf;

use crate::enforcer_bin;
use crate::sim::{SimNode, SimPod, pods_yaml, sim_pod, write_config};

pub const REMOTE: &[&str] = &["10.0.2.5", "fd00:10:2::5", "10.0.2.6", "fd00:10:2::6"];

pub fn groups() -> String {
    r#"{"SecurityGroups":[
 {"GroupId":"sg-web","GroupName":"web",
  "IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"UserIdGroupPairs":[{"GroupId":"sg-client"}]},
    {"IpProtocol":"icmp","FromPort":8,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.5/32"}]},
    {"IpProtocol":"icmpv6","FromPort":128,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]}],
  "IpPermissionsEgress":[
    {"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.5/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]},
    {"IpProtocol":"udp","FromPort":5353,"ToPort":5353,"IpRanges":[{"CidrIp":"10.0.2.5/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]},
    {"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmpv6","FromPort":-1,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]}]},
 {"GroupId":"sg-client","GroupName":"client",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":9000,"ToPort":9000,"UserIdGroupPairs":[{"GroupId":"sg-web"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}]}]},
 {"GroupId":"sg-other","GroupName":"other",
  "IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}]}]}
]}"#
    .to_string()
}

pub fn policies() -> String {
    ["web", "client", "other"]
        .iter()
        .map(|n| format!(
            "---\napiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata: {{name: {n}, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: {n}}}}}, securityGroups: {{groupIds: [sg-{n}]}}}}\n"
        ))
        .collect()
}

pub struct Node {
    pub sim: SimNode,
    pub web: SimPod,
    pub client: SimPod,
    pub groups_path: PathBuf,
}

pub fn node() -> Node {
    node_with("")
}

/// The node with extra `node:` settings (YAML lines indented by two spaces).
pub fn node_with(extra_node: &str) -> Node {
    node_with_groups(extra_node, &groups())
}

pub fn node_with_groups(extra_node: &str, groups_json: &str) -> Node {
    let web = sim_pod("shop", "web", 1);
    let client = sim_pod("shop", "client", 2);
    let other = sim_pod("shop", "other", 3);
    let pods = vec![web.clone(), client.clone(), other];
    let mut sim = SimNode::build(&pods, REMOTE).expect("build simulated node");
    let k8s = format!(
        "{}{}",
        policies(),
        pods_yaml(&pods, &|p| format!("{{app: {}}}", p.name))
    );
    let cfg = write_config(&sim, groups_json, &k8s, extra_node).unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).expect("daemon");
    let groups_path = sim.workdir.join("groups.json");
    Node {
        sim,
        web,
        client,
        groups_path,
    }
}

pub fn v4(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}
pub fn v6(ip: &str, port: u16) -> String {
    format!("[{ip}]:{port}")
}

/// The shop's node routing as a Kubernetes node does (were the programs gone, it would
/// forward the pods' denied traffic itself, untagged), with the echo server web may
/// reach (10.0.2.5:443).
pub fn routing_node() -> (Node, crate::net::EchoServer) {
    let n = node();
    crate::sim::sh(&[
        "ip",
        "netns",
        "exec",
        &n.sim.node_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .unwrap();
    let srv = crate::net::echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    (n, srv)
}

/// The interfaces whose ingress hook runs a program of ours: the trunk and each pod's
/// host side.
pub fn hooks() -> Vec<String> {
    std::iter::once("trunk0".to_string())
        .chain(
            ["web", "client", "other"].map(|p| enforcer::config::host_veth_name("vlan", "shop", p)),
        )
        .collect()
}

/// A pod's counter for `reason` (packets) once it reaches `min`, or its value after 5 s:
/// the daemon refreshes its status file every 2 s.
pub fn counter_reaching(sim: &SimNode, pod: &str, reason: &str, min: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = sim
            .status()
            .ok()
            .and_then(|st| st.pods.into_iter().find(|p| p.name == pod))
            .and_then(|p| p.counters.get(reason).map(|c| c[0]))
            .unwrap_or(0);
        if v >= min || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// What web saw while [`Probe`] ran.
#[derive(Debug)]
pub struct Probed {
    /// Exchanges on the established TCP flow that went through, and those that failed.
    pub ok: u32,
    pub failed: u32,
    pub worst: std::time::Duration,
    /// Denied datagrams sent, and those that reached the fabric.
    pub sent: u32,
    pub received: u32,
}

/// Web's traffic while a daemon is stopped, restarted or replaced: an allowed,
/// established TCP flow to 10.0.2.5:443 exercised every 20 ms, and datagrams its
/// rules deny (UDP to 10.0.2.6:5353) every 2 ms.
pub struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    established: std::thread::JoinHandle<(u32, u32, std::time::Duration)>,
    denied: std::thread::JoinHandle<anyhow::Result<u32>>,
    sink: std::net::UdpSocket,
}

impl Probe {
    /// Needs an echo server on 10.0.2.5:443 in the fabric.
    pub fn start(sim: &SimNode) -> Probe {
        use std::sync::atomic::Ordering::Relaxed;
        let web_ns = sim.pod_ns("web").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut conn = crate::net::tcp_connect(&web_ns, "10.0.2.5:443").unwrap();
        let s = stop.clone();
        let established = std::thread::spawn(move || {
            let (mut ok, mut failed, mut worst) = (0u32, 0u32, std::time::Duration::ZERO);
            while !s.load(Relaxed) {
                let t = std::time::Instant::now();
                if crate::net::exchange(&mut conn) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                worst = worst.max(t.elapsed());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (ok, failed, worst)
        });
        let sink = crate::sim::in_netns(&sim.fabric_ns, || {
            let s = std::net::UdpSocket::bind("10.0.2.6:5353").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .unwrap();
        let s = stop.clone();
        let denied = crate::sim::spawn_in_netns(&web_ns, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut sent = 0u32;
            while !s.load(Relaxed) {
                if sock.send_to(b"denied", "10.0.2.6:5353").is_ok() {
                    sent += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            sent
        })
        .unwrap();
        Probe {
            stop,
            established,
            denied,
            sink,
        }
    }

    pub fn finish(self) -> Probed {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed, worst) = self.established.join().unwrap();
        let sent = self.denied.join().unwrap().unwrap();
        let mut received = 0;
        let mut buf = [0u8; 64];
        while self.sink.recv(&mut buf).is_ok() {
            received += 1;
        }
        Probed {
            ok,
            failed,
            worst,
            sent,
            received,
        }
    }
}

impl Probed {
    /// Established kept flowing, denied stayed denied, throughout.
    pub fn assert_nothing_lost_or_leaked(&self) {
        assert!(
            self.sent > 200,
            "denied datagrams were sent throughout: {self:?}"
        );
        assert_eq!(self.received, 0, "denied datagrams got through: {self:?}");
        assert_eq!(self.failed, 0, "the established flow broke: {self:?}");
        assert!(self.ok > 40, "the established flow kept flowing: {self:?}");
        assert!(
            self.worst < std::time::Duration::from_millis(1000),
            "an exchange stalled: {self:?}"
        );
    }
}
