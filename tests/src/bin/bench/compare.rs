//! `bench --compare`: 64-byte UDP through the node, packets per second, for podsg and its
//! peers on the same topology with the same 1000 rules, measured in one run.
//!
//! Five simulated nodes, built once and kept for the whole run, differ only in what
//! sits between the pod and the trunk:
//! - `no_filter`: the node forwards by IP (the pod's host interface in, the trunk out);
//! - `floor`: a TC program on the host interface that does podsg's forwarding of an
//!   established flow and nothing else (VLAN tag, MACs, redirect to the trunk);
//! - `podsg_1000`: the daemon, the pod under 1000 outbound rules per family over 5
//!   groups (the bench's rule set; the allowing rule is the last one);
//! - `iptables_nft_1000`: forwarding, the same rules in FORWARD (iptables-nft), the
//!   allowing one last, policy DROP;
//! - `nft_set_1000`: forwarding, one nft rule looking the same rules up in an interval
//!   set (address . protocol . port), policy DROP.
//!
//! - `npa_1000` (when `PODSG_BENCH_NPA` names a build of it, see `npa`): forwarding,
//!   the AWS network policy agent's IPv4 programs on the host interface with the same
//!   rules in their maps; the VPC's frames to the pod come untagged to a trunk that
//!   wears the pod's MAC, so that the node routes them to it.
//!
//! For podsg and NPA the run also times, by the kernel's run-time stats of their own
//! programs in interleaved rounds, a flood of new flows (each packet from a port of
//! its own), a flood of denied packets (a port no rule allows), and a flood of replies
//! from the VPC to the pod (podsg: `trunk_xdp` and `trunk_ingress`; NPA: its ingress
//! program), in each family; each case's floods of the beds follow each other, and
//! `x_npa_paired` is the median of each round's own podsg / NPA ratio. Built only then, and kept out of the through-node rounds
//! (IPv4 floods):
//! - `npa6_1000`: a node of NPA's IPv6 programs (NPA runs one family's per cluster),
//!   the same rules' IPv6 prefixes in their maps, the IPv6 peer of the same podsg node;
//! - `podsg_tc_only_1000`: podsg with `trunkXdp: false`, timed on the replies in the
//!   same rounds: `trunk_ingress` alone, as a node without the pre-filter runs.
//!
//! Stateless peers: every packet walks their rules (a conntrack rule first would make
//! them stateful like podsg; the issue's peers are the rules as written). The traffic
//! leaves through the trunk in every case, so the fabric's ingress program runs for all
//! (it untags podsg's and the floor's frames). Rounds interleave the paths, a 200 ms
//! slice each, for one flow and for 64; figures are medians, and `x_floor_paired` (the
//! target's) the median of each round's own ratio to the floor. The sender runs in the
//! pod and the whole path runs in its softirq on the same CPU, so pps is the sender's
//! cost plus the path's: ratios understate the paths' differences, never invert them.
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use integration_tests::fabric::Fabric;
use integration_tests::realbench::{StatsGuard, prog_stats_of};
use integration_tests::sim::{
    FABRIC_MAC, SIM_VETH_PREFIX, SimNode, in_netns, pods_yaml, sh, sim_pod, tcx_programs,
    write_config, xdp_program,
};

const RULES: usize = 1000;
/// Rounds of the bpf_stats comparisons (each path's cost per packet), and each flood's
/// length there: nine of 500 ms, where there were five of 1 s, so that the paired
/// ratios (`policy_rounds`) have more rounds to take the median of in the same time.
const ROUNDS: usize = 9;
/// Rounds of the through-node pps, and each path's slice of a round. The paths differ
/// there by ~1–3 % (the sender's cost is most of a packet's), and this VM's speed drifts
/// by up to ~30 % over seconds (not by steal: /proc/stat shows ≤ 20 ms of a second
/// stolen). So the slices are short, each round's ratio to the floor is taken between
/// neighbouring slices, and the median is of many rounds: with nine rounds of 1 s, the
/// podsg / floor median moved ±5 % from run to run; with 45 of 200 ms (the same time)
/// it stayed within 0.98–1.02 in ten runs (three of them alternated with three of
/// nine 1 s rounds, which gave 0.95–1.01).
/// `PODSG_BENCH_SLICE_MS` and `PODSG_BENCH_PPS_ROUNDS` set others, to compare.
const PPS_ROUNDS: usize = 45;
const PPS_SLICE: Duration = Duration::from_millis(200);
const ROUND: Duration = Duration::from_millis(500);
/// 18 bytes of payload: a 60-byte frame, 64 on the wire with its FCS.
const PAYLOAD: [u8; 18] = [0x5a; 18];
/// The remote host, in each family.
const REMOTE: [&str; 2] = ["10.0.2.5", "fd00:10:2::5"];
/// The port the rules allow it on, and one no rule allows.
const PORT: u16 = 7000;
const DENIED_PORT: u16 = 7001;
/// New flows per round, from ports of their own (an ephemeral port could repeat a flow):
/// `ROUNDS` of them stay inside podsg's default per-pod share of the flow table.
const NEW_FLOWS: u16 = 1000;
const NEW_FLOW_PORT: u16 = 20000;
/// Every flood is sent from this CPU, and the whole path runs in its softirq there: a
/// sender the scheduler moved between CPUs would move the path (and the per-CPU state
/// of the programs that have it) with it, mid-round.
const SENDER_CPU: usize = 1;
/// The pod's port of the flow whose replies are timed.
const REPLY_PORT: u16 = 7100;

/// The family of a flood: where it goes, from what.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    const BOTH: [Fam; 2] = [Fam::V4, Fam::V6];

    fn name(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        }
    }

    fn at(self) -> usize {
        self as usize
    }

    fn any(self) -> std::net::IpAddr {
        match self {
            Fam::V4 => std::net::Ipv4Addr::UNSPECIFIED.into(),
            Fam::V6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    fn remote(self) -> std::net::IpAddr {
        REMOTE[self.at()].parse().expect("a literal address")
    }

    /// The remote host's allowed port.
    fn dst(self) -> std::net::SocketAddr {
        (self.remote(), PORT).into()
    }

    /// The remote host on a port no rule allows.
    fn denied_dst(self) -> std::net::SocketAddr {
        (self.remote(), DENIED_PORT).into()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    NoFilter,
    Floor,
    Podsg,
    Iptables,
    NftSet,
    Npa,
    /// NPA's IPv6 programs: the IPv6 peer on new flows, denied and replies.
    Npa6,
    /// podsg with `trunkXdp: false`: TC alone on the trunk. Timed on replies only, beside
    /// NPA (its outbound programs are podsg's).
    PodsgTcOnly,
}

impl Path {
    const ALL: [Path; 5] = [
        Path::NoFilter,
        Path::Floor,
        Path::Podsg,
        Path::Iptables,
        Path::NftSet,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::NoFilter => "no_filter",
            Path::Floor => "floor",
            Path::Podsg => "podsg_1000",
            Path::Iptables => "iptables_nft_1000",
            Path::NftSet => "nft_set_1000",
            Path::Npa => "npa_1000",
            Path::Npa6 => "npa6_1000",
            Path::PodsgTcOnly => "podsg_tc_only_1000",
        }
    }

    /// The paths of this run: NPA's only when the operator gave its build.
    fn of_run() -> Vec<Path> {
        let mut v = Path::ALL.to_vec();
        if super::npa::objects().is_some() {
            v.push(Path::Npa);
        }
        v
    }

    /// The family its node is checked in (NPA's IPv6 programs pass IPv4 unseen).
    fn family(self) -> Fam {
        if self == Path::Npa6 { Fam::V6 } else { Fam::V4 }
    }

    /// The results row of its program's cost on an established flow.
    fn established_case(self) -> &'static str {
        match self {
            Path::Floor => "floor_redirect",
            Path::Npa => "npa_established_flood",
            _ => "established_flood",
        }
    }
}

/// One of the five nodes, what keeps its set-up alive, and the program measured.
struct Bed {
    path: Path,
    sim: SimNode,
    pod_ns: String,
    _floor: Option<Fabric>,
    npa: Option<super::npa::Npa>,
    /// The remote end of the floods, per family (`Fam::at`).
    sink: [UdpSocket; 2],
    /// The remote end of the denied packets: must receive none.
    denied_sink: [UdpSocket; 2],
    /// The program on the host interface (podsg's `pod_egress`, the floor, NPA's), if any.
    prog: Option<u32>,
    /// The programs every frame from the VPC to the pod runs (podsg's on the trunk,
    /// NPA's ingress program).
    inbound: Vec<u32>,
    /// Where the VPC sends the replies, per family.
    pod_ip: [std::net::IpAddr; 2],
}

/// The rules as iptables-restore input: rule i allows TCP port 1000+i to its /24, the
/// last also UDP 7000 to the remote host (as the bench's groups do).
fn iptables_rules(pod_ip: &str) -> String {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..RULES {
        s += &format!(
            "-A FORWARD -s {pod_ip}/32 -d 10.{}.{}.0/24 -p tcp -m tcp --dport {} -j ACCEPT\n",
            100 + i / 256,
            i % 256,
            1000 + i
        );
    }
    s += &format!(
        "-A FORWARD -s {pod_ip}/32 -d 10.0.2.5/32 -p udp -m udp --dport 7000 -j ACCEPT\nCOMMIT\n"
    );
    s
}

fn nft_rules(pod_ip: &str) -> String {
    let mut elems: Vec<String> = (0..RULES)
        .map(|i| format!("10.{}.{}.0/24 . tcp . {}", 100 + i / 256, i % 256, 1000 + i))
        .collect();
    elems.push("10.0.2.5 . udp . 7000".into());
    format!(
        "table inet podsg_bench {{\n  set allowed {{\n    type ipv4_addr . inet_proto . inet_service\n    flags interval\n    elements = {{ {} }}\n  }}\n  chain forward {{\n    type filter hook forward priority 0; policy drop;\n    ip saddr {pod_ip} ip daddr . meta l4proto . th dport @allowed accept\n  }}\n}}\n",
        elems.join(", ")
    )
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["ip", "netns", "exec", ns];
    a.extend_from_slice(args);
    sh(&a)
}

/// The node's permanent neighbour entry for `fam`'s remote host, behind the trunk.
fn remote_neighbour(node: &str, fam: Fam) -> Result<()> {
    let remote = REMOTE[fam.at()];
    let args = ["ip", "neigh", "replace", remote, "lladdr", FABRIC_MAC];
    in_ns(
        node,
        &[&args[..], &["dev", "trunk0", "nud", "permanent"]].concat(),
    )?;
    Ok(())
}

/// Loads `text` with `tool` (`iptables-nft-restore`, `nft -f -`) inside `ns`.
fn load_rules(ns: &str, tool: &[&str], text: &str) -> Result<()> {
    use std::io::Write;
    let mut c = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(tool)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{tool:?}: installed by `cargo xtask setup`"))?;
    c.stdin.take().unwrap().write_all(text.as_bytes())?;
    let st = c.wait()?;
    ensure!(st.success(), "{tool:?} in {ns}: {st}");
    Ok(())
}

impl Bed {
    fn build(path: Path, enforcer: &std::path::Path, groups: &str) -> Result<Bed> {
        let pod = sim_pod("bench", "pod", 1);
        let mut sim = SimNode::build(std::slice::from_ref(&pod), &REMOTE)?;
        let node = sim.node_ns.clone();
        let host = enforcer::config::host_veth_name(SIM_VETH_PREFIX, &pod.namespace, &pod.name);
        let pod_ns = sim.pod_ns("pod").to_string();
        let mut floor = None;
        let mut prog = None;
        let mut npa = None;
        let mut inbound = Vec::new();
        if matches!(
            path,
            Path::NoFilter | Path::Iptables | Path::NftSet | Path::Npa | Path::Npa6
        ) {
            // The node forwards the pod's packets to the trunk as a router would.
            for kv in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
            ] {
                in_ns(&node, &["sysctl", "-qw", kv])?;
            }
            in_ns(
                &node,
                &["ip", "route", "replace", "10.0.2.0/24", "dev", "trunk0"],
            )?;
            remote_neighbour(&node, Fam::V4)?;
        }
        if path == Path::Npa6 {
            in_ns(&node, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
            in_ns(
                &node,
                &[
                    "ip",
                    "-6",
                    "route",
                    "replace",
                    "fd00:10:2::/64",
                    "dev",
                    "trunk0",
                ],
            )?;
        }
        match path {
            Path::Iptables => {
                load_rules(&node, &["iptables-nft-restore"], &iptables_rules(&pod.ipv4))?
            }
            Path::NftSet => load_rules(&node, &["nft", "-f", "-"], &nft_rules(&pod.ipv4))?,
            Path::Floor => {
                let trunk: u32 = in_ns(&node, &["cat", "/sys/class/net/trunk0/ifindex"])?
                    .trim()
                    .parse()?;
                let mac = |s: &str| -> Result<[u8; 6]> {
                    Ok(s.parse::<enforcer::model::mac::MacAddr>()?.octets())
                };
                let (dst, src) = (mac(FABRIC_MAC)?, mac(&pod.mac)?);
                let vlan = pod.vlan;
                let (f, id) = in_netns(&node, move || {
                    Fabric::floor_forward(&host, trunk, vlan, dst, src)
                })??;
                floor = Some(f);
                prog = Some(id);
            }
            Path::Podsg | Path::PodsgTcOnly => {
                let k8s = format!(
                    "kind: SecurityGroupPolicy\nmetadata: {{name: b, namespace: bench}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-0, sg-1, sg-2, sg-3, sg-4]}}}}\n{}",
                    pods_yaml(std::slice::from_ref(&pod), &|_| "{}".into())
                );
                // Room for both families' new flows of every round.
                let mut node_cfg =
                    "  quotas: {groupsPerPod: 5, rulesPerGroupPerFamily: 1000, rulesPerPod: 5000}\n  flowsPerPod: 65536\n"
                        .to_string();
                if path == Path::PodsgTcOnly {
                    node_cfg.push_str("  trunkXdp: false\n");
                }
                let cfg = write_config(&sim, groups, &k8s, &node_cfg)?;
                sim.start_daemon(enforcer, &cfg)?;
                prog = tcx_programs(&node, &host)
                    .into_iter()
                    .find(|(_, n)| n == "pod_egress")
                    .map(|(id, _)| id);
                ensure!(prog.is_some(), "pod_egress not attached to {host}");
                inbound = tcx_programs(&node, "trunk0")
                    .into_iter()
                    .filter(|(_, n)| n == "trunk_ingress")
                    .map(|(id, _)| id)
                    .chain(xdp_program(&node, "trunk0"))
                    .collect();
                let want = if path == Path::Podsg { 2 } else { 1 };
                ensure!(
                    inbound.len() == want,
                    "{}: {inbound:?} on trunk0",
                    path.name()
                );
            }
            Path::Npa | Path::Npa6 => {
                let dir = super::npa::objects().context("PODSG_BENCH_NPA unset")?;
                let remote = path.family().remote();
                let (n, out_id, in_id) = in_netns(&node, move || {
                    super::npa::Npa::attach(&dir, &host, RULES, remote)
                })??;
                npa = Some(n);
                prog = Some(out_id);
                inbound.push(in_id);
                // The VPC's frames to the pod (addressed to its MAC) reach the node's
                // stack, which routes them to the pod's host interface: untagged (this
                // kernel has no VLAN devices), to a trunk that wears the pod's MAC.
                let pod_mac: enforcer::model::mac::MacAddr = pod.mac.parse()?;
                sim.fabric_untag(pod_mac.octets())?;
                in_ns(&node, &["ip", "link", "set", "trunk0", "address", &pod.mac])?;
                // A new MAC flushes the device's neighbours, and the fabric answers no
                // neighbour solicitation for the remote host (on its loopback).
                remote_neighbour(&node, path.family())?;
            }
            Path::NoFilter => {}
        }
        // Listeners that never read: the remote ends of the floods, dropping cheaply.
        let (sink, denied_sink) = in_netns(&sim.fabric_ns, || -> Result<_> {
            let bind = |f: fn(Fam) -> std::net::SocketAddr| -> Result<[UdpSocket; 2]> {
                Ok([UdpSocket::bind(f(Fam::V4))?, UdpSocket::bind(f(Fam::V6))?])
            };
            Ok((bind(Fam::dst)?, bind(Fam::denied_dst)?))
        })??;
        for s in &denied_sink {
            s.set_nonblocking(true)?;
        }
        let bed = Bed {
            path,
            sim,
            pod_ns,
            _floor: floor,
            npa,
            sink,
            denied_sink,
            prog,
            inbound,
            pod_ip: [pod.ipv4.parse()?, pod.ipv6.parse()?],
        };
        // Every path must deliver before it is timed (and podsg's rule must allow).
        let (sent, got) = bed.flood(path.family(), 1, Duration::from_millis(200))?;
        ensure!(
            got * 2 >= sent && got > 0,
            "{}: {got} of {sent} packets arrived: not forwarding",
            path.name()
        );
        Ok(bed)
    }

    /// Frames the fabric received from the trunk.
    fn received(&self) -> Result<u64> {
        Ok(in_ns(
            &self.sim.fabric_ns,
            &["cat", "/sys/class/net/fab0/statistics/rx_packets"],
        )?
        .trim()
        .parse()?)
    }

    /// Sends from the pod on `flows` sockets (one flow each) for `d`; (sent, received).
    fn flood(&self, fam: Fam, flows: usize, d: Duration) -> Result<(u64, u64)> {
        let before = self.received()?;
        let sent = in_netns(&self.pod_ns, move || -> Result<u64> {
            super::pin(SENDER_CPU);
            let socks: Vec<UdpSocket> = (0..flows)
                .map(|_| {
                    let s = UdpSocket::bind((fam.any(), 0))?;
                    s.connect(fam.dst())?;
                    Ok(s)
                })
                .collect::<Result<_>>()?;
            let end = Instant::now() + d;
            let mut sent = 0u64;
            while Instant::now() < end {
                for _ in 0..64 {
                    for s in &socks {
                        if s.send(&PAYLOAD).is_ok() {
                            sent += 1;
                        }
                    }
                }
            }
            Ok(sent)
        })??;
        Ok((sent, self.received()? - before))
    }

    /// One packet from each of `n` sockets bound to ports `first..first+n` (each a new
    /// flow) to the allowed destination; how many were sent.
    fn new_flows(&self, fam: Fam, first: u16, n: u16) -> Result<u64> {
        in_netns(&self.pod_ns, move || -> Result<u64> {
            super::pin(SENDER_CPU);
            let mut sent = 0;
            for port in first..first + n {
                let s = UdpSocket::bind((fam.any(), port))?;
                s.connect(fam.dst())?;
                if s.send(&PAYLOAD).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })?
    }

    /// Sends to a port no rule allows for `d`; (sent, received: must stay 0).
    fn denied(&self, fam: Fam, d: Duration) -> Result<(u64, u64)> {
        let sent = in_netns(&self.pod_ns, move || -> Result<u64> {
            super::pin(SENDER_CPU);
            let s = UdpSocket::bind((fam.any(), 0))?;
            s.connect(fam.denied_dst())?;
            let (end, mut sent) = (Instant::now() + d, 0u64);
            while Instant::now() < end {
                for _ in 0..64 {
                    if s.send(&PAYLOAD).is_ok() {
                        sent += 1;
                    }
                }
            }
            Ok(sent)
        })??;
        let mut got = 0;
        while self.denied_sink[fam.at()].recv(&mut [0u8; 64]).is_ok() {
            got += 1;
        }
        Ok((sent, got))
    }

    /// Replies from the VPC to the pod for `d`: the pod opens the flow (one packet to
    /// the allowed destination from `REPLY_PORT`), then the remote end sends to it;
    /// (sent, frames the pod's interface received).
    fn replies(&self, fam: Fam, d: Duration) -> Result<(u64, u64)> {
        let _pinned = super::Pinned::to(SENDER_CPU);
        let pod = in_netns(&self.pod_ns, move || -> Result<UdpSocket> {
            super::pin(SENDER_CPU);
            let s = UdpSocket::bind((fam.any(), REPLY_PORT))?;
            s.connect(fam.dst())?;
            s.send(&PAYLOAD)?;
            Ok(s)
        })??;
        std::thread::sleep(Duration::from_millis(20));
        let rx = || -> Result<u64> {
            Ok(in_ns(
                &self.pod_ns,
                &["cat", "/sys/class/net/eth0/statistics/rx_packets"],
            )?
            .trim()
            .parse()?)
        };
        let before = rx()?;
        let to = std::net::SocketAddr::from((self.pod_ip[fam.at()], REPLY_PORT));
        let sink = &self.sink[fam.at()];
        let (end, mut sent) = (Instant::now() + d, 0u64);
        while Instant::now() < end {
            for _ in 0..64 {
                if sink.send_to(&PAYLOAD, to).is_ok() {
                    sent += 1;
                }
            }
        }
        let got = rx()? - before;
        drop(pod);
        Ok((sent, got))
    }

    /// Events NPA's program emitted so far (0 for the other paths).
    fn npa_events(&self) -> u64 {
        self.npa
            .as_ref()
            .map_or(0, |n| n.events.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// ns per run of program `id` over what `traffic` makes it do (kernel bpf_stats).
fn cost_of(id: u32, traffic: impl FnOnce() -> Result<()>) -> Result<f64> {
    Ok(costs_of(&[id], traffic)?[0])
}

/// The same for each of `ids`.
fn costs_of(ids: &[u32], traffic: impl FnOnce() -> Result<()>) -> Result<Vec<f64>> {
    let a = prog_stats_of(ids)?;
    traffic()?;
    let b = prog_stats_of(ids)?;
    ids.iter()
        .map(|id| {
            let (t0, c0) = a.get(id).copied().unwrap_or_default();
            let (t1, c1) = b.get(id).copied().unwrap_or_default();
            ensure!(c1 > c0, "program {id} did not run");
            Ok((t1 - t0) as f64 / (c1 - c0) as f64)
        })
        .collect()
}

/// podsg's and NPA's programs on new flows, denied packets and replies, rounds
/// interleaved, in each family NPA's programs were built for; rows `<case>` (podsg) and
/// `npa_<case>`, by family.
fn policy_paths(beds: &[Bed], results: &mut Vec<String>) -> Result<()> {
    let npa_events = beds.iter().map(|b| b.npa_events()).sum::<u64>();
    let mut fams = 0;
    for fam in Fam::BOTH {
        let peer = match fam {
            Fam::V4 => Path::Npa,
            Fam::V6 => Path::Npa6,
        };
        // IPv4's floor is timed in the through-node rounds; its program is the same for
        // either family (it reads no IP header).
        let floor = (fam == Fam::V6).then_some(Path::Floor);
        let pair: Vec<&Bed> = beds
            .iter()
            .filter(|b| {
                matches!(b.path, Path::Podsg | Path::PodsgTcOnly)
                    || b.path == peer
                    || Some(b.path) == floor
            })
            .collect();
        if pair.iter().any(|b| b.path == peer) {
            policy_rounds(fam, peer, &pair, results)?;
            fams += 1;
        }
    }
    // NPA reports each new flow and each denied packet; its rings were read.
    std::thread::sleep(Duration::from_millis(50));
    let read = beds.iter().map(|b| b.npa_events()).sum::<u64>() - npa_events;
    ensure!(
        read >= fams * (ROUNDS as u64) * NEW_FLOWS as u64,
        "NPA's events: {read} read, fewer than the new flows it allowed"
    );
    Ok(())
}

/// What `policy_rounds` times, in a round's order.
const POLICY_CASES: [&str; 4] = [
    "established_flood",
    "new_flow_flood",
    "denied_flood",
    "reply_flood",
];

/// Whether `path`'s bed takes part in `case` of `fam`: IPv4's established flow is timed
/// in the through-node rounds; the floor has only an established flow, and podsg
/// without the pre-filter only replies.
fn times(path: Path, fam: Fam, case: &str) -> bool {
    match (path, case) {
        (_, "established_flood") => fam == Fam::V6 && path != Path::PodsgTcOnly,
        (Path::Floor, _) => false,
        (Path::PodsgTcOnly, c) => c == "reply_flood",
        _ => true,
    }
}

/// `policy_paths` in family `fam`, against NPA's node `peer`. A round takes each case
/// in turn, and each case's floods of every bed one after the other (the order turning
/// from round to round), so that the ratio of podsg to NPA can be taken within a round
/// (`x NPA, paired`), between floods a second or two apart, rather than across the
/// drift of this VM's speed over the several seconds between two beds' whole turns.
fn policy_rounds(fam: Fam, peer: Path, pair: &[&Bed], results: &mut Vec<String>) -> Result<()> {
    let mut ns: Vec<((Path, &str), Vec<f64>)> = Vec::new();
    let mut push = |k: (Path, &'static str), v: f64| match ns.iter_mut().find(|(x, _)| *x == k) {
        Some((_, l)) => l.push(v),
        None => ns.push((k, vec![v])),
    };
    for round in 0..ROUNDS {
        for case in POLICY_CASES {
            let beds: Vec<&Bed> = pair
                .iter()
                .copied()
                .filter(|b| times(b.path, fam, case))
                .collect();
            for k in 0..beds.len() {
                let bed = beds[(round + k) % beds.len()];
                time_case(bed, fam, case, round, &mut push)?;
            }
        }
    }
    let f = fam.name();
    let of = |p: Path, case: &str| {
        ns.iter()
            .find(|(k, _)| *k == (p, case))
            .map_or(&[][..], |(_, v)| &v[..])
    };
    let med = |p: Path, case: &str| super::median(of(p, case).to_vec());
    // Round by round (each round pushes one figure per bed and case).
    let paired = |a: Path, b: Path, case: &str, by: fn(f64, f64) -> f64| {
        super::paired_median(of(a, case), of(b, case), by)
    };
    let ratio = |x: f64, y: f64| x / y;
    println!(
        "podsg and NPA ({}, {f}), kernel bpf_stats of their programs, {ROUNDS} interleaved rounds of {} ms floods, medians:",
        peer.name(),
        ROUND.as_millis()
    );
    println!(
        "{:<16} {:>10} {:>10} {:>8} {:>14}",
        "case", "podsg ns", "NPA ns", "x NPA", "x NPA, paired"
    );
    let row = |c: &str, field: &str, v: f64, extra: &str| {
        format!(
            r#"{{"case":"{c}","family":"{f}","rules":{RULES},"{field}":{v:.1}{extra},"method":"bpf_stats","run":"compare"}}"#
        )
    };
    let established = (fam == Fam::V6).then_some("established_flood");
    for case in established.into_iter().chain([
        "new_flow_flood",
        "denied_flood",
        "reply_flood",
        "reply_pps",
    ]) {
        let (ours, theirs) = (med(Path::Podsg, case), med(peer, case));
        let pair = paired(Path::Podsg, peer, case, ratio);
        println!(
            "{case:<16} {ours:>10.1} {theirs:>10.1} {:>8.2} {pair:>14.2}",
            ours / theirs
        );
        // Replies delivered per second are a rate, the rest a cost.
        let field = if case == "reply_pps" {
            "pps"
        } else {
            "ns_per_packet"
        };
        let extra = format!(r#","x_npa":{:.3},"x_npa_paired":{pair:.3}"#, ours / theirs);
        results.push(row(case, field, ours, &extra));
        results.push(row(&format!("npa_{case}"), field, theirs, ""));
    }
    if pair.iter().any(|b| b.path == Path::Floor) {
        let (ours, floor) = (
            med(Path::Podsg, "established_flood"),
            med(Path::Floor, "established_flood"),
        );
        let over = paired(Path::Podsg, Path::Floor, "established_flood", |x, y| x - y);
        println!(
            "established, podsg {ours:.1} ns against the floor's {floor:.1} ns: {:+.1} ns (paired {over:+.1} ns)",
            ours - floor
        );
        results.push(format!(
            r#"{{"case":"floor_redirect","family":"{f}","rules":0,"ns_per_packet":{floor:.1},"method":"bpf_stats","run":"compare"}}"#
        ));
        results.push(over_floor_row(fam, ours - floor, over));
    }
    println!(
        "podsg's reply: trunk_ingress {:.1} ns + trunk_xdp {:.1} ns",
        med(Path::Podsg, "reply_flood_trunk_ingress"),
        med(Path::Podsg, "reply_flood_trunk_xdp")
    );
    if pair.iter().any(|b| b.path == Path::PodsgTcOnly) {
        let tc = Path::PodsgTcOnly;
        let (ns, pps) = (med(tc, "reply_flood"), med(tc, "reply_pps"));
        let (ns_x, pps_x) = (
            paired(tc, peer, "reply_flood", ratio),
            paired(tc, peer, "reply_pps", ratio),
        );
        println!(
            "podsg with trunkXdp: false, reply: trunk_ingress {ns:.1} ns ({ns_x:.2}x NPA, paired), {pps:.0} per second ({pps_x:.2}x NPA, paired)"
        );
        let extra = |x: f64| format!(r#","x_npa_paired":{x:.3}"#);
        results.push(row(
            "reply_flood_tc_only",
            "ns_per_packet",
            ns,
            &extra(ns_x),
        ));
        results.push(row("reply_pps_tc_only", "pps", pps, &extra(pps_x)));
    }
    Ok(())
}

/// The row of podsg's established gap to the floor in `fam`: the difference of the
/// medians, and the paired one.
fn over_floor_row(fam: Fam, gap: f64, paired: f64) -> String {
    format!(
        r#"{{"case":"established_over_floor","family":"{}","rules":{RULES},"ns_per_packet":{gap:.1},"paired":{paired:.1},"method":"bpf_stats","run":"compare"}}"#,
        fam.name()
    )
}

/// One flood of `case` through `bed`, its cost (and for replies their rate) pushed.
fn time_case(
    bed: &Bed,
    fam: Fam,
    case: &'static str,
    round: usize,
    push: &mut impl FnMut((Path, &'static str), f64),
) -> Result<()> {
    let (name, f) = (bed.path.name(), fam.name());
    let id = bed.prog.context("no program");
    match case {
        "established_flood" => {
            let mut got = 0;
            let est = cost_of(id?, || {
                got = bed.flood(fam, 1, ROUND)?.1;
                Ok(())
            })?;
            ensure!(got > 0, "{name} ({f}): nothing forwarded");
            push((bed.path, case), est);
        }
        "new_flow_flood" => {
            let first = NEW_FLOW_PORT + (round as u16) * NEW_FLOWS;
            let nf = cost_of(id?, || bed.new_flows(fam, first, NEW_FLOWS).map(|_| ()))?;
            push((bed.path, case), nf);
        }
        "denied_flood" => {
            let mut leaked = 0;
            let dn = cost_of(id?, || {
                leaked = bed.denied(fam, ROUND)?.1;
                Ok(())
            })?;
            ensure!(
                leaked == 0,
                "{name} ({f}): {leaked} denied packets reached the VPC"
            );
            push((bed.path, case), dn);
        }
        _ => {
            // Every reply runs each of the bed's inbound programs once: their sum.
            let mut got = 0;
            let parts = costs_of(&bed.inbound, || {
                got = bed.replies(fam, ROUND)?.1;
                Ok(())
            })?;
            ensure!(got > 0, "{name} ({f}): no reply reached the pod");
            push((bed.path, "reply_flood"), parts.iter().sum());
            if bed.path == Path::Podsg {
                push((bed.path, "reply_flood_trunk_ingress"), parts[0]);
                push((bed.path, "reply_flood_trunk_xdp"), parts[1]);
            }
            push((bed.path, "reply_pps"), got as f64 / ROUND.as_secs_f64());
        }
    }
    Ok(())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(results: &mut Vec<String>, groups: &str) -> Result<()> {
    let exe = std::env::current_exe()?;
    let enforcer = exe.parent().unwrap().join("enforcer");
    ensure!(
        enforcer.exists(),
        "{} missing: `cargo build --release -p enforcer` first",
        enforcer.display()
    );
    let paths = Path::of_run();
    println!("compare: building {} nodes (load {})", paths.len(), load());
    let beds: Vec<Bed> = paths
        .iter()
        .map(|p| Bed::build(*p, &enforcer, groups))
        .collect::<Result<_>>()?;
    // Beside NPA only: its IPv6 node, and the trunk without the pre-filter (replies).
    let beside_npa: Vec<Bed> = if paths.contains(&Path::Npa) {
        [Path::Npa6, Path::PodsgTcOnly]
            .into_iter()
            .map(|p| Bed::build(p, &enforcer, groups))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let _stats = StatsGuard::enable()?;
    let ids: Vec<u32> = beds.iter().filter_map(|b| b.prog).collect();
    // pps per (flows, path) per round; run time and runs of the measured programs.
    let mut pps: Vec<((usize, Path), Vec<f64>)> = Vec::new();
    let mut prog_ns: Vec<(Path, Vec<f64>)> = Vec::new();
    // `PODSG_BENCH_ROUNDS=1`: every round's figures, not only the medians.
    let verbose = std::env::var_os("PODSG_BENCH_ROUNDS").is_some();
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let slice = Duration::from_millis(env_num(
        "PODSG_BENCH_SLICE_MS",
        PPS_SLICE.as_millis() as u64,
    ));
    let pps_rounds = env_num("PODSG_BENCH_PPS_ROUNDS", PPS_ROUNDS as u64) as usize;
    let load_before = load();
    for round in 0..pps_rounds {
        for flows in [1usize, 64] {
            // Each round starts with another path: none always runs first or last. Every
            // other round runs them backwards, so that podsg follows the floor in half
            // the rounds and precedes it in the other half (no gain from going second).
            let n = beds.len();
            for k in 0..n {
                let k = if round % 2 == 0 { k } else { n - 1 - k };
                let bed = &beds[(round + k) % n];
                let a = prog_stats_of(&ids)?;
                let t = Instant::now();
                let (_, got) = bed.flood(Fam::V4, flows, slice)?;
                let rate = got as f64 / t.elapsed().as_secs_f64();
                let b = prog_stats_of(&ids)?;
                if verbose {
                    println!(
                        "round {round} {flows:>2} flows {:<20} {rate:>9.0} pps",
                        bed.path.name()
                    );
                }
                match pps.iter_mut().find(|(k, _)| *k == (flows, bed.path)) {
                    Some((_, v)) => v.push(rate),
                    None => pps.push(((flows, bed.path), vec![rate])),
                }
                if let Some(id) = bed.prog
                    && flows == 1
                {
                    let (t0, c0) = a.get(&id).copied().unwrap_or_default();
                    let (t1, c1) = b.get(&id).copied().unwrap_or_default();
                    if c1 > c0 {
                        let ns = (t1 - t0) as f64 / (c1 - c0) as f64;
                        match prog_ns.iter_mut().find(|(p, _)| *p == bed.path) {
                            Some((_, v)) => v.push(ns),
                            None => prog_ns.push((bed.path, vec![ns])),
                        }
                    }
                }
            }
        }
    }
    let load_after = load();
    let rounds_of = |flows, path| {
        pps.iter()
            .find(|(k, _)| *k == (flows, path))
            .map_or(Vec::new(), |(_, v)| v.clone())
    };
    let med = |flows, path| super::median(rounds_of(flows, path));
    // Each round's own ratio to the floor (the two ran a slice apart), their median.
    let paired = |flows, path| {
        super::paired_median(
            &rounds_of(flows, path),
            &rounds_of(flows, Path::Floor),
            |a, b| a / b,
        )
    };
    println!(
        "through the node, 64-byte UDP, {pps_rounds} interleaved rounds of {} ms, medians (load {load_before} before, {load_after} after):",
        slice.as_millis()
    );
    println!(
        "{:<20} {:>5} {:>10} {:>11} {:>8} {:>15}",
        "path", "flows", "pps", "x no_filter", "x floor", "x floor, paired"
    );
    for flows in [1usize, 64] {
        let (base, floor) = (med(flows, Path::NoFilter), med(flows, Path::Floor));
        for &p in &paths {
            let (v, pair) = (med(flows, p), paired(flows, p));
            println!(
                "{:<20} {flows:>5} {v:>10.0} {:>11.2} {:>8.2} {pair:>15.2}",
                p.name(),
                v / base,
                v / floor
            );
            results.push(format!(
                r#"{{"case":"compare_{}","flows":{flows},"pps":{v:.0},"x_no_filter":{:.3},"x_floor":{:.3},"x_floor_paired":{pair:.3},"rounds":{pps_rounds},"slice_ms":{},"load":"{load_before}"}}"#,
                p.name(),
                v / base,
                v / floor,
                slice.as_millis()
            ));
        }
    }
    println!("kernel bpf_stats of the host-interface program in the same rounds (one flow):");
    for (path, v) in &prog_ns {
        let ns = super::median(v.clone());
        let case = path.established_case();
        println!("{case:<20} {ns:>8.1} ns/packet");
        results.push(format!(
            r#"{{"case":"{case}","family":"v4","rules":{},"ns_per_packet":{ns:.1},"method":"bpf_stats","run":"compare"}}"#,
            if *path == Path::Floor { 0 } else { RULES }
        ));
    }
    // The target's gap: each round's own podsg minus floor (slices a path or two
    // apart), the median; beside the difference of the medians.
    let ns_of = |p: Path| {
        prog_ns
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(Vec::new(), |(_, v)| v.clone())
    };
    let (ours, floor) = (ns_of(Path::Podsg), ns_of(Path::Floor));
    if !ours.is_empty() && ours.len() == floor.len() {
        let over = super::paired_median(&ours, &floor, |a, b| a - b);
        let gap = super::median(ours) - super::median(floor);
        println!("established, podsg over the floor: {gap:+.1} ns (paired {over:+.1} ns)");
        results.push(over_floor_row(Fam::V4, gap, over));
    }
    let all: Vec<Bed> = beds.into_iter().chain(beside_npa).collect();
    policy_paths(&all, results)
}
