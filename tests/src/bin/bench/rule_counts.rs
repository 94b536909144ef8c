//! The first table: `pod_egress` under test_run at 1, 60 and 1000 rules, IPv4 and IPv6
//! — established, new flow, denied — and how each path at 1000 rules compares with the
//! same path at 1 (the flat target).
//!
//! The six nodes (rule count × family) are built first and timed in interleaved rounds,
//! each round starting with another node, as `compare` does: timed one after another,
//! this VM's drift within a run (the calibration program alone moved 1.3× in one run)
//! showed up as a difference between rule counts.
use enforcer_common::prog_names::POD_EGRESS;
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

use super::{NEW_FLOWS, REPEAT, SINGLE_RUNS, groups, k8s, median, single_run_overhead};

/// Rounds per node: more than the other tables' five, as a one-run-per-call figure moves
/// with the VM by more than the 10 % the flat target allows (a round is ~1 s a node).
const ROUNDS: usize = 15;

const RULE_COUNTS: [usize; 3] = [1, 60, 1000];
const CASES: [&str; 3] = ["established", "new_flow", "denied"];

/// One node: a harness with `rules` rules per family, and the frames that hit its last
/// (worst-placed) rule.
struct Node {
    h: Harness,
    rules: usize,
    fam: &'static str,
    src: String,
    dst: String,
    port: u16,
    /// Source ports of new flows used so far (each new-flow packet its own).
    next_sport: u16,
    /// Per case, the figure of each round.
    rounds: [Vec<f64>; 3],
}

impl Node {
    fn build(rules: usize, v6: bool) -> anyhow::Result<Node> {
        // 20 000 new flows from one pod: past the default per-pod share, so the bench
        // gives the pod the whole table.
        let mut cfg = integration_tests::harness::node_config();
        cfg.node.flows_per_pod = enforcer_common::MAX_FLOWS;
        let mut h = Harness::with_config(cfg);
        h.cfg.node.quotas.rules_per_group_per_family = 1000;
        // n rules per family: 2n EC2 rules, over the default 1000 per pod.
        h.cfg.node.quotas.rules_per_pod = 5000;
        let plan = h.apply(&groups(rules), &k8s());
        anyhow::ensure!(
            plan.pods[0].error.is_none(),
            "bench policy rejected: {:?}",
            plan.pods[0].error
        );
        let i = rules - 1;
        let (src, dst) = if v6 {
            (
                CLIENT.ipv6.to_string(),
                format!("fd00:{:x}:{:x}::9", 100 + i / 256, i % 256),
            )
        } else {
            (
                CLIENT.ipv4.to_string(),
                format!("10.{}.{}.9", 100 + i / 256, i % 256),
            )
        };
        let mut node = Node {
            h,
            rules,
            fam: if v6 { "v6" } else { "v4" },
            src,
            dst,
            port: 1000 + i as u16,
            next_sport: 1024,
            rounds: Default::default(),
        };
        // The established flow, created once.
        let est = node.frame(40000, node.port);
        anyhow::ensure!(node.h.run(POD_EGRESS, &est).0 == TC_ACT_REDIRECT);
        Ok(node)
    }

    fn frame(&self, sport: u16, dport: u16) -> Vec<u8> {
        Frame::new(
            CLIENT.mac,
            HOST_MAC,
            &self.src,
            &self.dst,
            L4::Syn { sport, dport },
        )
        .bytes()
    }

    /// One round of each case.
    fn round(&mut self) {
        let overhead = single_run_overhead(&mut self.h);
        let est = self.frame(40000, self.port);
        let mut total = 0.0;
        for _ in 0..SINGLE_RUNS {
            let (ret, ns) = self.h.time(POD_EGRESS, &est, 1);
            assert_eq!(ret, TC_ACT_REDIRECT);
            total += ns;
        }
        self.rounds[0].push(total / SINGLE_RUNS as f64 - overhead);

        let per_round = NEW_FLOWS / ROUNDS as u16;
        let mut total = 0.0;
        for _ in 0..per_round {
            let f = self.frame(self.next_sport, self.port);
            self.next_sport += 1;
            let (ret, ns) = self.h.time(POD_EGRESS, &f, 1);
            assert_eq!(ret, TC_ACT_REDIRECT);
            total += ns;
        }
        self.rounds[1].push(total / per_round as f64 - overhead);

        let deny = self.frame(40001, self.port + 1);
        let (ret, ns) = self.h.time(POD_EGRESS, &deny, REPEAT);
        assert_eq!(ret, TC_ACT_SHOT);
        self.rounds[2].push(ns);
    }
}

pub fn run(results: &mut Vec<String>) -> anyhow::Result<()> {
    let mut nodes: Vec<Node> = RULE_COUNTS
        .iter()
        .flat_map(|&r| [(r, false), (r, true)])
        .map(|(r, v6)| Node::build(r, v6))
        .collect::<anyhow::Result<_>>()?;
    for round in 0..ROUNDS {
        let n = nodes.len();
        for k in 0..n {
            nodes[(round + k) % n].round();
        }
    }
    println!(
        "test_run, pod_egress, {ROUNDS} interleaved rounds, medians:\n{:<12} {:<4} {:>6} {:>10}",
        "case", "fam", "rules", "ns/packet"
    );
    let figure = |nodes: &[Node], rules, fam, c: usize| {
        nodes
            .iter()
            .find(|n| n.rules == rules && n.fam == fam)
            .map_or(f64::NAN, |n| median(n.rounds[c].clone()))
    };
    for (c, case) in CASES.iter().enumerate() {
        for node in &nodes {
            let (fam, rules) = (node.fam, node.rules);
            let ns = figure(&nodes, rules, fam, c);
            println!("{case:<12} {fam:<4} {rules:>6} {ns:>10.1}");
            results.push(format!(
                r#"{{"case":"{case}","family":"{fam}","rules":{rules},"ns_per_packet":{ns:.1},"method":"test_run"}}"#
            ));
        }
    }
    println!("1000 rules against 1 (flat: within 1.1x):");
    for (c, case) in CASES.iter().enumerate() {
        for fam in ["v4", "v6"] {
            let x = figure(&nodes, 1000, fam, c) / figure(&nodes, 1, fam, c);
            println!("{case:<12} {fam:<4} {x:>6.2}x");
            results.push(format!(
                r#"{{"case":"flat_{case}","family":"{fam}","x_1000_over_1":{x:.3},"method":"test_run"}}"#
            ));
        }
    }
    Ok(())
}
