//! `cargo xtask bench`: ns per packet through the real pod program (BPF_PROG_TEST_RUN)
//! at 1, 60 and 1000 rules (spread over 5 groups), IPv4 and IPv6. The matching rule is
//! the last one written, the worst case for anything that walks rules.
//!
//! - established: a packet of a tracked flow (flow-table hit, tag pushed, redirect).
//! - new_flow: a first packet allowed by policy, which creates its flow; each packet a
//!   different source port.
//! - denied: a packet no rule allows (both policy lookups, no state).
//! - and the other paths (source NAT, reverse NAT, host-local): see `paths`.
//!
//! test_run's `repeat` re-runs the *same* skb, and an allowed packet is rewritten (tag
//! pushed), so allowed packets are timed one run per call and averaged over many calls.
//! A single-run timing includes the kernel's clock reads around the run; that overhead
//! is measured on a trivial program (timed both ways) and subtracted. Denied packets are
//! not rewritten and use `repeat` directly.
use std::io::Write;

mod compare;
mod npa;
mod paths;
mod reconcile;
mod rule_counts;
mod scale;
mod xdp_flood;

use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

pub(crate) const REPEAT: u32 = 200_000;
pub(crate) const NEW_FLOWS: u16 = 20_000;
pub(crate) const ROUNDS: usize = 5;

/// `n` outbound tcp rules over 5 groups; rule i allows port 1000+i to a /24 (v4) or /64
/// (v6) of its own. The groups JSON.
pub(crate) fn groups(n: usize) -> String {
    groups_ending(n, n - 1)
}

/// The same with rules `last + 1 - n ..= last`: sets of any size that share their last
/// rule, so one packet meets the last rule of each.
pub(crate) fn groups_ending(n: usize, last: usize) -> String {
    let per = n.div_ceil(5);
    let first = last + 1 - n;
    let mut groups = Vec::new();
    for g in 0..5 {
        let mut perms = Vec::new();
        for i in first + g * per..first + ((g + 1) * per).min(n) {
            if i == last {
                // The last rule also admits the real-traffic bench's UDP echo.
                perms.push(r#"{"IpProtocol":"udp","FromPort":7000,"ToPort":7000,"IpRanges":[{"CidrIp":"10.0.2.5/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]}"#.to_string());
            }
            perms.push(format!(
                r#"{{"IpProtocol":"tcp","FromPort":{p},"ToPort":{p},"IpRanges":[{{"CidrIp":"10.{a}.{b}.0/24"}}],"Ipv6Ranges":[{{"CidrIpv6":"fd00:{a:x}:{b:x}::/64"}}]}}"#,
                p = 1000 + i,
                a = 100 + i / 256,
                b = i % 256
            ));
        }
        groups.push(format!(
            r#"{{"GroupId":"sg-{g}","IpPermissions":[],"IpPermissionsEgress":[{}]}}"#,
            perms.join(",")
        ));
    }
    format!(r#"{{"SecurityGroups":[{}]}}"#, groups.join(","))
}

pub(crate) fn k8s() -> String {
    format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: b, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-0, sg-1, sg-2, sg-3, sg-4]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    )
}

pub(crate) const SINGLE_RUNS: usize = 4000;

/// How one round's one-run-per-call figures are summed up: the mean, or the mean of the
/// middle 80 % (`Trimmed`), which the few calls an interrupt or a preemption lands in do
/// not move. (Not the median: a call's time comes in steps of 10 ns on this VM.)
#[derive(Clone, Copy)]
pub(crate) enum PerCall {
    Mean,
    Trimmed,
}

impl PerCall {
    pub(crate) fn of(self, mut calls: Vec<f64>) -> f64 {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        match self {
            PerCall::Mean => mean(&calls),
            PerCall::Trimmed => {
                calls.sort_by(|a, b| a.total_cmp(b));
                let cut = calls.len() / 10;
                mean(&calls[cut..calls.len() - cut])
            }
        }
    }
}

/// What a one-run test_run adds on top of the program: a trivial program (the fabric's
/// ingress on an untagged frame: parse the Ethernet header, pass) timed one run per call
/// (summed up as `per_call`) minus the same timed with `repeat`.
pub(crate) fn single_run_overhead(h: &mut Harness, per_call: PerCall) -> f64 {
    let f = Frame::new(
        CLIENT.mac,
        HOST_MAC,
        CLIENT.ipv4,
        "10.0.2.5",
        L4::Udp { sport: 1, dport: 2 },
    )
    .bytes();
    let single = median(
        (0..ROUNDS)
            .map(|_| per_call.of((0..SINGLE_RUNS).map(|_| h.time_floor(&f, 1).1).collect()))
            .collect(),
    );
    let repeated = median((0..ROUNDS).map(|_| h.time_floor(&f, REPEAT).1).collect());
    eprintln!(
        "calibration: trivial program {repeated:.1} ns with repeat, {single:.1} ns one run per call"
    );
    (single - repeated).max(0.0)
}

/// Steady state under real traffic (kernel run-time stats), per rule count and family.
fn real_traffic(results: &mut Vec<String>) -> anyhow::Result<()> {
    use integration_tests::net::echo_server;
    use integration_tests::realbench::{RealBench, StatsGuard};
    let exe = std::env::current_exe()?;
    let bin = exe.parent().unwrap().join("enforcer");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: `cargo build --release -p enforcer` first",
        bin.display()
    );
    let _stats = StatsGuard::enable()?;
    let mut rb = RealBench::start(&bin, &groups(1))?;
    let fab = rb.fabric_ns();
    let _e4 = echo_server(&fab, "10.0.2.5:7000")?;
    let _e6 = echo_server(&fab, "[fd00:10:2::5]:7000")?;
    println!("real traffic through the simulated node (kernel bpf_stats):");
    for rules in [1usize, 60, 1000] {
        rb.set_groups(&groups(rules))?;
        for (fam, dst) in [("v4", "10.0.2.5:7000"), ("v6", "[fd00:10:2::5]:7000")] {
            let m = rb.measure(dst, 20_000, 3_000)?;
            for (case, ns) in [
                ("floor_trivial_program", m.fabric_ingress),
                ("established", m.egress_established),
                ("established_trunk_ingress", m.ingress_established),
                ("established_trunk_xdp", m.ingress_xdp),
                ("new_flow", m.egress_new_flow),
                ("established_flood", m.egress_flood),
                ("floor_flood_fabric_tagger", m.fabric_egress_flood),
            ] {
                println!("{case:<26} {fam:<4} {rules:>6} {ns:>10.1}");
                results.push(format!(
                    r#"{{"case":"{case}","family":"{fam}","rules":{rules},"ns_per_packet":{ns:.1},"method":"bpf_stats"}}"#
                ));
            }
        }
    }
    Ok(())
}

/// Runs the current thread on `cpu` only (modulo the CPUs there are).
pub(crate) fn pin(cpu: usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is an empty set; the call reads it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// The current thread on one CPU until dropped, then on the CPUs it had before.
pub(crate) struct Pinned(libc::cpu_set_t);

impl Pinned {
    pub(crate) fn to(cpu: usize) -> Pinned {
        // SAFETY: a zeroed cpu_set_t is an empty set, which the call fills with this
        // thread's CPUs.
        let before = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set);
            set
        };
        pin(cpu);
        Pinned(before)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: the set read in `to`, for this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.0), &self.0) };
    }
}

/// The median; NaN for no figures (a path that measured nothing prints as such).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `by(a[i], b[i])` over the rounds `a` and `b` were taken in side by
/// side (one figure each per round): a ratio or a difference within each round, so that
/// the VM's drift between rounds cancels. NaN for no rounds.
pub(crate) fn paired_median(a: &[f64], b: &[f64], by: impl Fn(f64, f64) -> f64) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| by(*x, *y)).collect())
}

fn main() -> anyhow::Result<()> {
    let mut results = Vec::new();
    // `bench paths` / `bench rules` / `bench reconcile`: only those rows (quick to rerun; printed, not
    // written to results.json).
    match std::env::args().nth(1).as_deref() {
        Some("paths") => {
            paths::run(&mut results);
            return Ok(());
        }
        Some("rules") => {
            return rule_counts::run(&mut results);
        }
        Some("rss") => {
            reconcile::idle_rss(&mut results)?;
            return Ok(());
        }
        Some("events") => {
            reconcile::events_only(false);
            return Ok(());
        }
        Some("changes") => {
            reconcile::events_only(true);
            return Ok(());
        }
        Some("reconcile") => {
            reconcile::run(&mut results);
            return Ok(());
        }
        // `cargo xtask bench --compare`: its rows replace those of the last one in
        // results.json, the other rows kept.
        Some("real") => {
            real_traffic(&mut results)?;
            return Ok(());
        }
        Some("scale") => {
            scale::run(&mut results, &groups)?;
            return Ok(());
        }
        Some("compare") => {
            compare::run(&mut results, &groups(1000))?;
            return write_results(results, Some("compare"));
        }
        // `cargo xtask bench --xdp`: the same, for the trunk flood's rows.
        Some("xdp") => {
            xdp_flood::run(&mut results)?;
            return write_results(results, Some("xdp"));
        }
        _ => {}
    }
    rule_counts::run(&mut results)?;
    paths::run(&mut results);
    reconcile::run(&mut results);
    reconcile::idle_rss(&mut results)?;
    real_traffic(&mut results)?;
    scale::run(&mut results, &groups)?;
    compare::run(&mut results, &groups(1000))?;
    xdp_flood::run(&mut results)?;
    write_results(results, None)
}

/// Writes target/bench/results.json: `rows`, and with `run` (one part rerun alone) the
/// rows of the file already there that are not that part's (`<run>_*` cases, or
/// marked `"run": "<run>"`).
fn write_results(rows: Vec<String>, run: Option<&str>) -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    let mut all = Vec::new();
    if let Some(run) = run
        && let Ok(text) = std::fs::read_to_string(&path)
    {
        let old: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let prefix = format!("{run}_");
        all.extend(
            old.iter()
                .filter(|r| {
                    !r["case"].as_str().unwrap_or("").starts_with(&prefix) && r["run"] != run
                })
                .map(|r| r.to_string()),
        );
    }
    all.extend(rows);
    let mut f = std::fs::File::create(&path)?;
    writeln!(f, "[\n  {}\n]", all.join(",\n  "))?;
    println!("wrote {}", path.display());
    Ok(())
}
