//! `bench xdp`: denied frames flooding the trunk, with the XDP pre-filter and with TC
//! alone, measured in one run on two simulated nodes built alike (`node.trunkXdp` on
//! and off). Two pods: `victim` admits nothing; `other` admits UDP 7000 from the VPC.
//!
//! - drop rate: one thread in the fabric (pinned to CPU 0) puts denied frames on the
//!   trunk as fast as it can — a new flow no rule allows, a VLAN no pod has, a frame for
//!   another address on the victim's VLAN, in turn — as XDP frames (the fabric's
//!   generator, `BPF_PROG_TEST_RUN` live-frames mode), which the trunk's veth receives
//!   as a NIC receives DMA buffers: no skb until the stack needs one. The trunk's
//!   receive work runs in the sender's softirq, so frames sent per second is what the
//!   node drops per second (plus the generator's own cost, the same for both). The
//!   trunk has GRO on in both nodes: without an XDP program that is what gives a veth
//!   the NAPI that takes XDP frames.
//! - allowed traffic during the flood: another thread (CPU 1) sends 64-byte UDP to
//!   `other` from the fabric, alone and then beside the flood; what `other`'s interface
//!   receives per second, and the ratio (kept).
//!
//! Rounds interleave the two nodes; figures are medians. The victim's socket on the
//! flood's port must receive nothing in either node (checked every round: the flood is
//! denied, not just fast).
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use integration_tests::fabric::Fabric;
use integration_tests::frames::{Frame, L4};
use integration_tests::sim::{
    FABRIC_MAC, SimNode, SimPod, in_netns, pods_yaml, sh, sim_pod, spawn_in_netns, write_config,
    xdp_program,
};

use super::pin;

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(1);
/// 18 bytes of payload: a 64-byte frame on the wire.
const PAYLOAD: [u8; 18] = [0x5a; 18];

const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-victim","IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]},
 {"GroupId":"sg-other","IpPermissions":[
    {"IpProtocol":"udp","FromPort":7000,"ToPort":7000,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}
]}"#;

struct Bed {
    xdp: bool,
    sim: SimNode,
    victim: SimPod,
    other: SimPod,
    _sink: UdpSocket,
    /// The victim's socket on the flood's port: a denied datagram that leaked would be
    /// read here.
    trap: UdpSocket,
}

impl Bed {
    fn build(xdp: bool, enforcer: &std::path::Path) -> Result<Bed> {
        let victim = sim_pod("bench", "victim", 1);
        let other = sim_pod("bench", "other", 2);
        let pods = [victim.clone(), other.clone()];
        let mut sim = SimNode::build(&pods, &["10.0.2.5"])?;
        let k8s = format!(
            "{}{}",
            ["victim", "other"].map(|n| format!(
                "---\nkind: SecurityGroupPolicy\nmetadata: {{name: {n}, namespace: bench}}\nspec: {{podSelector: {{matchLabels: {{app: {n}}}}}, securityGroups: {{groupIds: [sg-{n}]}}}}\n"
            )).concat(),
            pods_yaml(&pods, &|p| format!("{{app: {}}}", p.name))
        );
        let extra = if xdp { "" } else { "  trunkXdp: false\n" };
        in_netns(&sim.node_ns, || {
            integration_tests::ethtool::gro_on("trunk0")
        })??;
        let cfg = write_config(&sim, GROUPS, &k8s, extra)?;
        sim.start_daemon(enforcer, &cfg)?;
        ensure!(
            xdp_program(&sim.node_ns, "trunk0").is_some() == xdp,
            "XDP on trunk0 should be {}",
            if xdp { "attached" } else { "off" }
        );
        // A listener that never reads: the allowed traffic's end, dropping cheaply.
        let addr = format!("{}:7000", other.ipv4);
        let sink = in_netns(sim.pod_ns("other"), move || UdpSocket::bind(addr))??;
        let addr = format!("{}:7000", victim.ipv4);
        let trap = in_netns(sim.pod_ns("victim"), move || UdpSocket::bind(addr))??;
        trap.set_nonblocking(true)?;
        Ok(Bed {
            xdp,
            sim,
            victim,
            other,
            _sink: sink,
            trap,
        })
    }

    fn mode(&self) -> &'static str {
        if self.xdp { "xdp" } else { "tc" }
    }

    /// Datagrams that reached the victim's socket (read, so the next call counts anew).
    fn leaked(&self) -> u64 {
        let mut buf = [0u8; 64];
        std::iter::from_fn(|| self.trap.recv(&mut buf).ok()).count() as u64
    }

    /// Packets `pod`'s interface has received.
    fn received(&self, pod: &str) -> Result<u64> {
        let ns = self.sim.pod_ns(pod);
        Ok(sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            "/sys/class/net/eth0/statistics/rx_packets",
        ])?
        .trim()
        .parse()?)
    }

    /// The denied frames, tagged in the bytes as the VPC delivers them.
    fn denied(&self) -> Vec<Vec<u8>> {
        let mac = |s: &str| s.parse::<enforcer::model::mac::MacAddr>().unwrap().octets();
        let v = &self.victim;
        let udp = |src: &str, dst: &str, vlan: u16| {
            let mut f = Frame::new(
                mac(FABRIC_MAC),
                mac(&v.mac),
                src,
                dst,
                L4::Udp {
                    sport: 5000,
                    dport: 7000,
                },
            )
            .tagged(vlan)
            .bytes();
            f.resize(f.len().max(64), 0);
            f
        };
        vec![
            udp("10.0.9.9", &v.ipv4, v.vlan),
            udp("10.0.2.5", &v.ipv4, 999),
            udp("10.0.2.5", "10.0.1.99", v.vlan),
        ]
    }

    /// For `d`: the flood (if `flood`) and the allowed sender (if `allowed`), at once.
    /// Returns (denied frames per second of the kernel's time for them, allowed packets
    /// received per second).
    fn run(&self, flood: bool, allowed: bool, d: Duration) -> Result<(f64, f64)> {
        self.leaked();
        let other0 = self.received("other")?;
        let t = Instant::now();
        let ns = &self.sim.fabric_ns;
        let flooder = if flood {
            let frames = self.denied();
            Some(spawn_in_netns(ns, move || {
                pin(0);
                Fabric::xmit_live("fab0", &frames, 1 << 18, d)
            })?)
        } else {
            None
        };
        let sender = if allowed {
            let dst = format!("{}:7000", self.other.ipv4);
            Some(spawn_in_netns(ns, move || -> Result<u64> {
                pin(1);
                let s = UdpSocket::bind("10.0.2.5:0")?;
                s.connect(dst)?;
                let end = Instant::now() + d;
                let mut sent = 0;
                while Instant::now() < end {
                    for _ in 0..64 {
                        sent += s.send(&PAYLOAD).is_ok() as u64;
                    }
                }
                Ok(sent)
            })?)
        } else {
            None
        };
        let flood_rate = match flooder {
            Some(h) => {
                let (sent, busy) = h.join().map_err(|_| anyhow::anyhow!("flood thread"))???;
                sent as f64 / busy.as_secs_f64()
            }
            None => 0.0,
        };
        if let Some(h) = sender {
            h.join().map_err(|_| anyhow::anyhow!("sender thread"))???;
        }
        let secs = t.elapsed().as_secs_f64();
        let leaked = self.leaked();
        ensure!(
            leaked == 0,
            "{}: the victim's socket received {leaked} datagrams of the denied flood",
            self.mode()
        );
        let other = self.received("other")? - other0;
        Ok((flood_rate, other as f64 / secs))
    }
}

pub fn run(results: &mut Vec<String>) -> Result<()> {
    let exe = std::env::current_exe()?;
    let enforcer = exe.parent().unwrap().join("enforcer");
    ensure!(enforcer.exists(), "{} missing", enforcer.display());
    println!("xdp: building two nodes (trunkXdp on, off)");
    let beds = [Bed::build(true, &enforcer)?, Bed::build(false, &enforcer)?];
    for b in &beds {
        let (_, got) = b.run(false, true, Duration::from_millis(200))?;
        ensure!(got > 0.0, "{}: allowed traffic does not arrive", b.mode());
    }
    // Per bed: drop rate alone; allowed alone; allowed and drop rate during the flood.
    let mut rows: [[Vec<f64>; 4]; 2] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..beds.len() {
            let i = (round + k) % beds.len();
            let bed = &beds[i];
            let (drop_alone, _) = bed.run(true, false, ROUND)?;
            let (_, allowed_alone) = bed.run(false, true, ROUND)?;
            let (drop_during, allowed_during) = bed.run(true, true, ROUND)?;
            for (v, x) in
                rows[i]
                    .iter_mut()
                    .zip([drop_alone, allowed_alone, drop_during, allowed_during])
            {
                v.push(x);
            }
        }
    }
    println!(
        "denied frames flooding the trunk, {ROUNDS} interleaved rounds of {} s, medians:",
        ROUND.as_secs()
    );
    println!(
        "{:<5} {:>14} {:>14} {:>16} {:>17} {:>6}",
        "mode", "drops/s alone", "drops/s w/ UDP", "allowed pps alone", "allowed pps flood", "kept"
    );
    for (bed, r) in beds.iter().zip(&rows) {
        let [drop_alone, allowed_alone, drop_during, allowed_during] = r.clone().map(super::median);
        let kept = allowed_during / allowed_alone;
        println!(
            "{:<5} {drop_alone:>14.0} {drop_during:>14.0} {allowed_alone:>16.0} {allowed_during:>17.0} {kept:>6.2}",
            bed.mode()
        );
        results.push(format!(
            r#"{{"case":"xdp_flood_drop","mode":"{}","pps":{drop_alone:.0},"pps_beside_allowed":{drop_during:.0},"rounds":{ROUNDS},"run":"xdp"}}"#,
            bed.mode()
        ));
        results.push(format!(
            r#"{{"case":"xdp_flood_allowed","mode":"{}","pps_alone":{allowed_alone:.0},"pps_during":{allowed_during:.0},"kept":{kept:.3},"rounds":{ROUNDS},"run":"xdp"}}"#,
            bed.mode()
        ));
    }
    let drop = |i: usize| super::median(rows[i][0].clone());
    println!("drop rate with XDP: {:.2}x TC alone", drop(0) / drop(1));
    Ok(())
}
