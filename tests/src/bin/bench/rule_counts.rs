//! The first table: `pod_egress` under test_run at 1, 60 and 1000 rules, IPv4 and IPv6
//! — established, new flow, denied with a peer match (the last rule's prefix, another
//! port) and without (a destination no rule's prefix holds) — and how each path at 1000 rules compares with the
//! same path at 1 (the flat target).
//!
//! One node per family, whose rule set is swapped between the three counts: sets that
//! share their last rule (`groups_ending`), the one the packets meet, so the counts share
//! the programs (the same JIT images), the flows and the packets and differ only in the
//! rule maps. The counts are timed in interleaved rounds, each round starting with
//! another count, and each ratio is the median of the rounds' own ratios. Six nodes
//! built apart (one per count and family) differed by up to 1.24× on the established
//! path, which reads no rule map: the difference was the nodes', not the rules'.
use enforcer_common::prog_names::POD_EGRESS;
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

use super::{
    NEW_FLOWS, PerCall, Pinned, REPEAT, SINGLE_RUNS, groups_ending, k8s, median,
    single_run_overhead,
};

/// Rounds: more than the other tables' five, as a one-run-per-call figure moves with the
/// VM by more than the 10 % the flat target allows.
const ROUNDS: usize = 15;

const RULE_COUNTS: [usize; 3] = [1, 60, 1000];
/// The rule every set ends with: the last of 1000, the worst-placed for anything that
/// walks rules.
const LAST: usize = 999;
const CASES: [&str; 4] = ["established", "new_flow", "denied", "denied_no_peer"];
/// The middle calls: the few an interrupt lands in moved a round's mean by more than the
/// 10 % the target allows.
const PER_CALL: PerCall = PerCall::Trimmed;

/// One family's node and its frames.
struct Bed {
    h: Harness,
    fam: &'static str,
    src: String,
    /// In the last rule's prefix, to its port: new flows and denied packets.
    dst: String,
    /// In no rule's prefix.
    stranger: String,
    port: u16,
    /// The established flow's destination (the last rule's UDP echo).
    echo: String,
    /// Source ports of new flows used so far (each new-flow packet its own).
    next_sport: u16,
    /// The rule count applied last.
    applied: usize,
    /// Per rule count and case, the figure of each round.
    rounds: [[Vec<f64>; 4]; 3],
}

impl Bed {
    fn build(v6: bool) -> anyhow::Result<Bed> {
        // 60 000 new flows from one pod: past the default per-pod share, so the bench
        // gives the pod the whole table.
        let mut cfg = integration_tests::harness::node_config();
        cfg.node.flows_per_pod = enforcer_common::MAX_FLOWS;
        let mut h = Harness::with_config(cfg);
        h.cfg.node.quotas.rules_per_group_per_family = 1000;
        // n rules per family: 2n EC2 rules, over the default 1000 per pod.
        h.cfg.node.quotas.rules_per_pod = 5000;
        let (a, b) = (100 + LAST / 256, LAST % 256);
        let (src, dst, echo, stranger) = if v6 {
            let dst = format!("fd00:{a:x}:{b:x}::9");
            (CLIENT.ipv6, dst, "fd00:10:2::5", "fd00:fa::9")
        } else {
            (
                CLIENT.ipv4,
                format!("10.{a}.{b}.9"),
                "10.0.2.5",
                "10.250.0.9",
            )
        };
        let mut bed = Bed {
            h,
            fam: if v6 { "v6" } else { "v4" },
            src: src.to_string(),
            dst,
            stranger: stranger.to_string(),
            port: 1000 + LAST as u16,
            echo: echo.to_string(),
            next_sport: 1024,
            applied: 0,
            rounds: Default::default(),
        };
        bed.apply(RULE_COUNTS[0])?;
        Ok(bed)
    }

    fn apply(&mut self, rules: usize) -> anyhow::Result<()> {
        if self.applied == rules {
            return Ok(());
        }
        let plan = self.h.apply(&groups_ending(rules, LAST), &k8s());
        anyhow::ensure!(
            plan.pods[0].error.is_none(),
            "bench policy rejected at {rules} rules: {:?}",
            plan.pods[0].error
        );
        self.applied = rules;
        Ok(())
    }

    fn frame(&self, dst: &str, l4: L4) -> Vec<u8> {
        Frame::new(CLIENT.mac, HOST_MAC, &self.src, dst, l4).bytes()
    }

    /// One round of each case at the `c`-th rule count, `overhead` taken off the
    /// one-run-per-call figures.
    fn round(&mut self, c: usize, overhead: f64) -> anyhow::Result<()> {
        self.apply(RULE_COUNTS[c])?;
        // The first packet after a change fills this CPU's copy (the thread is pinned).
        let est = self.frame(
            &self.echo,
            L4::Udp {
                sport: 40000,
                dport: 7000,
            },
        );
        anyhow::ensure!(self.h.run(POD_EGRESS, &est).0 == TC_ACT_REDIRECT);
        let mut calls = Vec::with_capacity(SINGLE_RUNS);
        for _ in 0..SINGLE_RUNS {
            let (ret, ns) = self.h.time(POD_EGRESS, &est, 1);
            anyhow::ensure!(ret == TC_ACT_REDIRECT, "established: {ret}");
            calls.push(ns);
        }
        self.rounds[c][0].push(PER_CALL.of(calls) - overhead);

        let per_round = NEW_FLOWS / ROUNDS as u16;
        let mut calls = Vec::with_capacity(per_round as usize);
        for _ in 0..per_round {
            let l4 = L4::Syn {
                sport: self.next_sport,
                dport: self.port,
            };
            let f = self.frame(&self.dst, l4);
            self.next_sport += 1;
            let (ret, ns) = self.h.time(POD_EGRESS, &f, 1);
            anyhow::ensure!(ret == TC_ACT_REDIRECT, "new flow: {ret}");
            calls.push(ns);
        }
        self.rounds[c][1].push(PER_CALL.of(calls) - overhead);

        for (case, dst, dport) in [
            (2, &self.dst, self.port + 1),
            (3, &self.stranger, self.port),
        ] {
            let l4 = L4::Syn {
                sport: 40001,
                dport,
            };
            let (ret, ns) = self.h.time(POD_EGRESS, &self.frame(dst, l4), REPEAT);
            anyhow::ensure!(ret == TC_ACT_SHOT, "{}: {ret}", CASES[case]);
            self.rounds[c][case].push(ns);
        }
        Ok(())
    }

    /// The median over rounds of round `r`'s figure at count `c` over count 0's.
    fn ratio(&self, c: usize, case: usize) -> f64 {
        let per_round = (0..ROUNDS).map(|r| self.rounds[c][case][r] / self.rounds[0][case][r]);
        median(per_round.collect())
    }
}

pub fn run(results: &mut Vec<String>) -> anyhow::Result<()> {
    // One CPU throughout: the copies an established packet is served from are per CPU.
    let _pinned = Pinned::to(0);
    let mut beds = [Bed::build(false)?, Bed::build(true)?];
    for round in 0..ROUNDS {
        for bed in &mut beds {
            let overhead = single_run_overhead(&mut bed.h, PER_CALL);
            for k in 0..RULE_COUNTS.len() {
                bed.round((round + k) % RULE_COUNTS.len(), overhead)?;
            }
        }
    }
    println!(
        "test_run, pod_egress, one node per family, rule sets swapped, {ROUNDS} interleaved rounds, medians:\n{:<15} {:<4} {:>6} {:>10}",
        "case", "fam", "rules", "ns/packet"
    );
    for (case_i, case) in CASES.iter().enumerate() {
        for bed in &beds {
            let fam = bed.fam;
            for (c, rules) in RULE_COUNTS.iter().enumerate() {
                let ns = median(bed.rounds[c][case_i].clone());
                println!("{case:<15} {fam:<4} {rules:>6} {ns:>10.1}");
                results.push(format!(
                    r#"{{"case":"{case}","family":"{fam}","rules":{rules},"ns_per_packet":{ns:.1},"method":"test_run"}}"#
                ));
            }
        }
    }
    println!("1000 rules against 1, median of the rounds' ratios (flat: within 1.1x):");
    let last = RULE_COUNTS.len() - 1;
    for (case_i, case) in CASES.iter().enumerate() {
        for bed in &beds {
            let (fam, x) = (bed.fam, bed.ratio(last, case_i));
            println!("{case:<15} {fam:<4} {x:>6.2}x");
            results.push(format!(
                r#"{{"case":"flat_{case}","family":"{fam}","x_1000_over_1":{x:.3},"method":"test_run"}}"#
            ));
        }
    }
    Ok(())
}
