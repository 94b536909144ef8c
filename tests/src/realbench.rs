//! Steady-state cost of the attached programs under real traffic: the kernel's own
//! accounting (`kernel.bpf_stats_enabled`: run time and run count per program) while UDP
//! flows through the simulated node.
use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use crate::sim::{
    SIM_VETH_PREFIX, SimNode, in_netns, pods_yaml, sim_pod, tcx_programs, write_config,
};
use anyhow::{Context, Result};

/// (run_time_ns, run_cnt) of the programs with these ids only: another run's programs
/// of the same name (a second bench, a test) never mix in.
pub fn prog_stats_of(ids: &[u32]) -> Result<HashMap<u32, (u64, u64)>> {
    let out = crate::sim::sh(&["bpftool", "-j", "prog", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool -j prog show")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p["id"].as_u64()? as u32;
            ids.contains(&id).then(|| {
                (
                    id,
                    (
                        p["run_time_ns"].as_u64().unwrap_or(0),
                        p["run_cnt"].as_u64().unwrap_or(0),
                    ),
                )
            })
        })
        .collect())
}

/// Turns BPF run-time stats on for its lifetime (restoring the previous setting).
pub struct StatsGuard(String);

impl StatsGuard {
    pub fn enable() -> Result<StatsGuard> {
        let prev = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?
            .trim()
            .to_string();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(StatsGuard(prev))
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

pub struct Measured {
    /// The fabric's trivial tag/untag programs under the same traffic: the floor.
    pub fabric_ingress: f64,
    pub egress_established: f64,
    pub ingress_established: f64,
    /// The trunk's XDP pre-filter on the same replies (it runs before `trunk_ingress`).
    pub ingress_xdp: f64,
    pub egress_new_flow: f64,
    /// Back-to-back sends on one flow (warm caches): what sustained traffic costs.
    pub egress_flood: f64,
    pub fabric_egress_flood: f64,
}

fn delta(before: &HashMap<u32, (u64, u64)>, after: &HashMap<u32, (u64, u64)>, id: u32) -> f64 {
    let (t0, c0) = before.get(&id).copied().unwrap_or_default();
    let (t1, c1) = after.get(&id).copied().unwrap_or_default();
    if c1 <= c0 {
        f64::NAN
    } else {
        (t1 - t0) as f64 / (c1 - c0) as f64
    }
}

/// UDP echo through pod -> trunk -> VPC and back, `n` packets on one flow, then `new`
/// packets each on a new flow; the allowing rule is the last of `groups_json`.
pub struct RealBench {
    sim: SimNode,
    ns: String,
    /// Ids of the programs measured: pod_egress, trunk_ingress, the fabric's ingress
    /// and egress, trunk_xdp. Only these are read (another run's programs of the same
    /// names never mix in).
    ids: [u32; 5],
}

impl RealBench {
    pub fn start(enforcer_bin: &Path, groups_json: &str) -> Result<RealBench> {
        let pod = sim_pod("bench", "pod", 1);
        let mut sim = SimNode::build(std::slice::from_ref(&pod), &["10.0.2.5", "fd00:10:2::5"])?;
        let k8s = format!(
            "kind: SecurityGroupPolicy\nmetadata: {{name: b, namespace: bench}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-0, sg-1, sg-2, sg-3, sg-4]}}}}\n{}",
            pods_yaml(std::slice::from_ref(&pod), &|_| "{}".into())
        );
        let cfg = write_config(
            &sim,
            groups_json,
            &k8s,
            // Thousands of new flows from one pod: it gets the whole flow table.
            "  quotas: {groupsPerPod: 5, rulesPerGroupPerFamily: 1000, rulesPerPod: 5000}\n  flowsPerPod: 262144\n",
        )?;
        sim.start_daemon(enforcer_bin, &cfg)?;
        let ns = sim.pod_ns("pod").to_string();
        let host = enforcer::config::host_veth_name(SIM_VETH_PREFIX, &pod.namespace, &pod.name);
        let tcx = |dev: &str, name: &str| -> Result<u32> {
            tcx_programs(&sim.node_ns, dev)
                .into_iter()
                .find(|(_, n)| n == name)
                .map(|(id, _)| id)
                .with_context(|| format!("{name} not attached to {dev}"))
        };
        let fabric = |name: &str| sim.fabric_program_id(name).context(name.to_string());
        let ids = [
            tcx(&host, "pod_egress")?,
            tcx("trunk0", "trunk_ingress")?,
            fabric("sim_fabric_ingress")?,
            fabric("sim_fabric_egress")?,
            crate::sim::xdp_program(&sim.node_ns, "trunk0").context("trunk_xdp on trunk0")?,
        ];
        Ok(RealBench { sim, ns, ids })
    }

    pub fn set_groups(&mut self, groups_json: &str) -> Result<()> {
        std::fs::write(self.sim.workdir.join("groups.json"), groups_json)?;
        self.sim.reload_daemon().map(|_| ())
    }

    pub fn fabric_ns(&self) -> String {
        self.sim.fabric_ns.clone()
    }

    pub fn measure(&self, dst: &str, n: usize, new: usize) -> Result<Measured> {
        let dst: std::net::SocketAddr = dst.parse()?;
        let any = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let roundtrips = |count: usize, fresh: bool| -> Result<()> {
            in_netns(&self.ns, move || -> Result<()> {
                let mut s = UdpSocket::bind(any)?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = [0u8; 64];
                for _ in 0..count {
                    if fresh {
                        s = UdpSocket::bind(any)?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    }
                    s.send_to(b"bench", dst)?;
                    s.recv_from(&mut buf).context("echo reply")?;
                }
                Ok(())
            })?
        };
        let stats = || prog_stats_of(&self.ids);
        roundtrips(10, false)?;
        let a = stats()?;
        roundtrips(n, false)?;
        let b = stats()?;
        roundtrips(new, true)?;
        let c = stats()?;
        in_netns(&self.ns, move || -> Result<()> {
            let s = UdpSocket::bind(any)?;
            s.connect(dst)?;
            for _ in 0..n * 5 {
                // The echoes pile up unread and are dropped: only the sends matter here.
                let _ = s.send(b"bench");
            }
            Ok(())
        })??;
        let d = stats()?;
        let [egress, ingress, fabric_in, fabric_out, xdp] = self.ids;
        Ok(Measured {
            fabric_ingress: delta(&a, &b, fabric_in),
            egress_established: delta(&a, &b, egress),
            ingress_established: delta(&a, &b, ingress),
            ingress_xdp: delta(&a, &b, xdp),
            egress_new_flow: delta(&b, &c, egress),
            egress_flood: delta(&c, &d, egress),
            fabric_egress_flood: delta(&c, &d, fabric_out),
        })
    }
}
