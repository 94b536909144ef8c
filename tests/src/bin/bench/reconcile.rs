//! The control plane's cost (issue 8's load shape): 110 branch pods, each with 5 groups
//! of 60 rules per address family (30 inbound, 30 outbound; 4 groups of its own and one
//! all pods share: 300 prefixes per pod and family), planned
//! and written into the real maps (programs loaded, not attached) by the daemon's own
//! apply sequence.
//!
//! - full_resync_110_pods: an apply that finds nothing changed (what a relist or a
//!   SIGHUP costs).
//! - rule_change_110_pods: one rule changed in the group all 110 pods share.
//! - pod_event_to_enforced: one pod added (its interface already present), p99 of
//!   repeated adds and deletes.
use std::time::Instant;

use anyhow::Context;

use enforcer::sources::files::Snapshot;
use integration_tests::harness::*;

use crate::median;

pub const PODS: usize = 110;
const OWN_GROUPS: usize = 4;
const RULES: usize = 60;
const EVENTS: usize = 100;

/// Group `g`'s 60 rules per family: 30 inbound and 30 outbound, TCP to its own /24
/// and /64 each, ports 1000+.
fn group(id: &str, g: usize) -> String {
    let perms = |dir: usize| -> String {
        (0..RULES / 2)
            .map(|k| {
                let j = dir * RULES / 2 + k;
                format!(
                    r#"{{"IpProtocol":"tcp","FromPort":{p},"ToPort":{p},"IpRanges":[{{"CidrIp":"{a}.{b}.{j}.0/24"}}],"Ipv6Ranges":[{{"CidrIpv6":"fd00:{g:x}:{j:x}::/64"}}]}}"#,
                    p = 1000 + j,
                    a = 20 + g / 256,
                    b = g % 256,
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"GroupId":"{id}","IpPermissions":[{}],"IpPermissionsEgress":[{}]}}"#,
        perms(0),
        perms(1)
    )
}

/// Every group; `shift` moves one rule of the shared group to another port.
pub fn groups(pods: usize, shift: usize) -> String {
    let mut all = vec![group("sg-shared", 0).replacen(
        "\"FromPort\":1000,\"ToPort\":1000",
        &format!("\"FromPort\":{p},\"ToPort\":{p}", p = 1000 + shift),
        1,
    )];
    for i in 0..pods {
        for k in 0..OWN_GROUPS {
            all.push(group(&format!("sg-{i}-{k}"), 1 + i * OWN_GROUPS + k));
        }
    }
    format!(r#"{{"SecurityGroups":[{}]}}"#, all.join(","))
}

/// Pod `i`: its policy (its own groups and the shared one) and its object.
fn pod(i: usize) -> String {
    let own: Vec<String> = (0..OWN_GROUPS).map(|k| format!("sg-{i}-{k}")).collect();
    let vlan = 100 + i;
    format!(
        "---\nkind: SecurityGroupPolicy\nmetadata: {{name: p{i}, namespace: test}}\nspec: {{podSelector: {{matchLabels: {{app: p{i}}}}}, securityGroups: {{groupIds: [sg-shared, {}]}}}}\n---\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: test\n  labels: {{app: p{i}}}\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"eniId\":\"eni-{i}\",\"ifAddress\":\"02:00:00:01:{:02x}:{:02x}\",\"privateIp\":\"10.0.{}.{}\",\"ipv6Addr\":\"fd00:10:1::{:x}\",\"vlanId\":{vlan}}}]'\n",
        own.join(", "),
        vlan >> 8,
        vlan & 0xff,
        1 + i / 200,
        10 + i % 200,
        0x100 + i,
    )
}

/// `base`'s groups (the same parse, as the daemon's sources keep it when only pods
/// change) with `pods` pods.
fn same_groups(base: &Snapshot, pods: usize) -> Snapshot {
    let mut kube = enforcer::model::objects::KubeObjects::default();
    kube.add_documents(&k8s(pods), "bench").unwrap();
    Snapshot {
        catalog: base.catalog.clone(),
        kube,
    }
}

pub fn k8s(pods: usize) -> String {
    (0..pods).map(pod).collect()
}

fn harness() -> Harness {
    let mut cfg = node_config();
    cfg.node.quotas.rules_per_group_per_family = RULES;
    // 5 groups × 60 rules × 2 families (EC2 counts a rule per address range).
    cfg.node.quotas.rules_per_pod = 5 * RULES * 2;
    Harness::with_config(cfg)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub fn run(results: &mut Vec<String>) {
    let mut h = harness();
    // Parsed once, as the daemon holds its sources between changes.
    let (g0, g1) = (groups(PODS, 0), groups(PODS, 7));
    let all = snapshot(&g0, &k8s(PODS));
    let fewer = same_groups(&all, PODS - 1);
    let changed = snapshot(&g1, &k8s(PODS));
    let t = Instant::now();
    let plan = h.apply_snapshot(&all);
    let first = ms(t);
    let failed: Vec<_> = plan.pods.iter().filter_map(|p| p.error.clone()).collect();
    assert!(failed.is_empty(), "every pod enforced: {failed:?}");
    let resync = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                h.apply_snapshot(&all);
                ms(t)
            })
            .collect(),
    );
    // The class the kernel gives pod 0's inbound prefix of the changed rule.
    let class = |h: &Harness| {
        let cur = h.dp.current();
        let sc = enforcer_common::scope(
            cur.pods_by_vlan[&100].policy_id,
            enforcer_common::Direction::Ingress,
        );
        cur.peers_v4
            .iter()
            .find(|((_, k), _)| k.scope == sc && k.addr == [20, 0, 0, 0])
            .map(|(_, c)| c.class_id)
    };
    let before = class(&h);
    h.apply_snapshot(&changed);
    assert!(before.is_some());
    assert_ne!(class(&h), before, "the rule change reached the maps");
    h.apply_snapshot(&all);
    let change = median(
        (0..5)
            .map(|k| {
                let t = Instant::now();
                h.apply_snapshot(if k % 2 == 0 { &changed } else { &all });
                ms(t)
            })
            .collect(),
    );
    // One pod gone, then back: the event cost as the daemon pays it today (a whole
    // re-plan, writing only what changed).
    h.apply_snapshot(&all);
    let mut events: Vec<f64> = (0..EVENTS)
        .map(|k| {
            let t = Instant::now();
            h.apply_snapshot(if k % 2 == 0 { &fewer } else { &all });
            ms(t)
        })
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // What the daemon writes per apply (memory.json) and on its 2 s tick when changed
    // (memory-tables.json).
    let dir = std::env::temp_dir().join(format!("podsg-bench-mem-{}", std::process::id()));
    let t = Instant::now();
    h.mem.save(&dir).unwrap();
    let small = ms(t);
    let t = Instant::now();
    h.mem.save_tables(&dir).unwrap();
    let tables = ms(t);
    let size = |f: &str| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len() / 1024);
    println!(
        "memory.json {} KiB saved in {small:.1} ms; memory-tables.json {} KiB in {tables:.1} ms",
        size(enforcer::memory::MEMORY_FILE),
        size(enforcer::memory::TABLES_FILE)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let p99 = events[events.len() * 99 / 100];
    for (case, v) in [
        ("first_apply_110_pods", first),
        ("full_resync_110_pods", resync),
        ("rule_change_110_pods", change),
        ("pod_event_to_enforced_p99", p99),
    ] {
        println!("{case:<28} {v:>10.1} ms");
        results.push(format!(r#"{{"case":"{case}","ms":{v:.1}}}"#));
    }
}

/// Only pod events (`bench events`) or only shared-rule changes (`bench changes`),
/// for profiling.
pub fn events_only(rule_changes: bool) {
    let mut h = harness();
    let g0 = groups(PODS, 0);
    let all = snapshot(&g0, &k8s(PODS));
    let other = match rule_changes {
        true => snapshot(&groups(PODS, 7), &k8s(PODS)),
        false => same_groups(&all, PODS - 1),
    };
    h.apply_snapshot(&all);
    let t = Instant::now();
    for k in 0..EVENTS {
        h.apply_snapshot(if k % 2 == 0 { &other } else { &all });
    }
    println!("{:.1} ms per event", ms(t) / EVENTS as f64);
}

/// The daemon's resident memory once idle, enforcing 110 such pods on a simulated node
/// (their namespaces and interfaces real, both programs attached to each).
pub fn idle_rss(results: &mut Vec<String>) -> anyhow::Result<()> {
    use integration_tests::sim::{SimNode, pods_yaml, sim_pod, write_config};
    let pods: Vec<_> = (0..PODS)
        .map(|i| sim_pod("test", &format!("p{i}"), i as u16 + 1))
        .collect();
    let mut sim = SimNode::build(&pods, &[])?;
    let policies: String = (0..PODS)
        .map(|i| {
            let own: Vec<String> = (0..OWN_GROUPS).map(|k| format!("sg-{i}-{k}")).collect();
            format!(
                "---\nkind: SecurityGroupPolicy\nmetadata: {{name: p{i}, namespace: test}}\nspec: {{podSelector: {{matchLabels: {{app: p{i}}}}}, securityGroups: {{groupIds: [sg-shared, {}]}}}}\n",
                own.join(", ")
            )
        })
        .collect();
    let k8s = format!(
        "{policies}{}",
        pods_yaml(&pods, &|p| format!("{{app: {}}}", p.name))
    );
    let quotas = format!(
        "  quotas: {{groupsPerPod: 5, rulesPerGroupPerFamily: {RULES}, rulesPerPod: {}}}\n",
        5 * RULES * 2
    );
    let cfg = write_config(&sim, &groups(PODS, 0), &k8s, &quotas)?;
    sim.start_daemon(&integration_tests::enforcer_bin(), &cfg)?;
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let st = sim.status()?;
        let enforced = st
            .pods
            .iter()
            .filter(|p| p.state == enforcer::status::PodState::Enforced)
            .count();
        if enforced == PODS {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {enforced} of {PODS} pods enforced:\n{}",
            st.render_table()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    let pid = sim.daemon_pid().context("daemon pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("VmRSS")?;
    let mib = kib / 1024.0;
    let part = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "{:<28} {mib:>10.1} MiB  (anonymous {}, file-backed {})",
        "idle_rss_110_pods",
        part("RssAnon:"),
        part("RssFile:")
    );
    results.push(format!(r#"{{"case":"idle_rss_110_pods","mib":{mib:.1}}}"#));
    Ok(())
}
