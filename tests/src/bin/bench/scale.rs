//! `bench scale`: what the datapath's maps hold in kernel memory — fixed at load, per
//! rule, per pod — and the largest rule set one pod can have before a table is full.
//! Memory is the kernel's own account of each map (`bytes_memlock`: for the LPM tries,
//! the nodes in use; for the preallocated hashes and arrays, their whole capacity),
//! summed over the maps the loaded programs use.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::harness::*;

/// The kernel's memory for the maps the programs use, in bytes.
fn map_bytes(h: &mut Harness) -> Result<u64> {
    let mut ids = BTreeSet::new();
    for (_, p) in h.dp.ebpf().programs() {
        if let Ok(info) = p.info()
            && let Ok(Some(m)) = info.map_ids()
        {
            ids.extend(m);
        }
    }
    let mut total = 0;
    for id in ids {
        let out =
            integration_tests::sim::sh(&["bpftool", "-j", "map", "show", "id", &id.to_string()])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("bpftool map show")?;
        total += v["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// `n` branch pods selected by one policy naming the bench's 5 groups.
fn pods(n: usize) -> String {
    let mut y = String::from(
        "kind: SecurityGroupPolicy\nmetadata: {name: b, namespace: test}\nspec: {podSelector: {}, securityGroups: {groupIds: [sg-0, sg-1, sg-2, sg-3, sg-4]}}\n",
    );
    y += &pod_yaml(&CLIENT, "{}");
    for i in 1..n {
        y += &format!(
            "---\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: test\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"eniId\":\"eni-p{i}\",\"ifAddress\":\"02:00:00:01:{:02x}:{:02x}\",\"privateIp\":\"10.0.{}.{}\",\"vlanId\":{}}}]'\n",
            i >> 8,
            i & 0xff,
            16 + i / 250,
            1 + i % 250,
            100 + i
        );
    }
    y
}

/// `n` outbound TCP rules per family over 5 groups, each to a host address of its own
/// (10.16.0.0/12 and fd00:16::/64 hold a million): for sizes past the bench's /24s.
fn many(n: usize) -> String {
    let per = n.div_ceil(5);
    let groups: Vec<String> = (0..5)
        .map(|g| {
            let perms: Vec<String> = (g * per..((g + 1) * per).min(n))
                .map(|i| {
                    let a = std::net::Ipv4Addr::from(0x0a10_0000u32 + i as u32);
                    format!(
                        r#"{{"IpProtocol":"tcp","FromPort":{p},"ToPort":{p},"IpRanges":[{{"CidrIp":"{a}/32"}}],"Ipv6Ranges":[{{"CidrIpv6":"fd00:16::{:x}:{:x}/128"}}]}}"#,
                        i >> 16,
                        i & 0xffff,
                        p = 1000 + i % 50_000
                    )
                })
                .collect();
            format!(
                r#"{{"GroupId":"sg-{g}","IpPermissions":[],"IpPermissionsEgress":[{}]}}"#,
                perms.join(",")
            )
        })
        .collect();
    format!(r#"{{"SecurityGroups":[{}]}}"#, groups.join(","))
}

fn harness() -> Harness {
    let mut cfg = node_config();
    cfg.node.quotas.rules_per_group_per_family = 1_000_000;
    cfg.node.quotas.rules_per_pod = 10_000_000;
    Harness::with_config(cfg)
}

pub fn run(results: &mut Vec<String>, groups: &dyn Fn(usize) -> String) -> Result<()> {
    let mut h = harness();
    let empty = map_bytes(&mut h)?;
    println!(
        "scale: maps at load, no pod: {:.1} MiB (the preallocated flow, NAT and fragment tables and counters)",
        empty as f64 / (1 << 20) as f64
    );
    results.push(format!(
        r#"{{"case":"scale_map_bytes_at_load","bytes":{empty}}}"#
    ));
    for rules in [1usize, 60, 1000] {
        let mut h = harness();
        let plan = h.apply(&groups(rules), &pods(1));
        anyhow::ensure!(plan.pods[0].error.is_none(), "{:?}", plan.pods[0].error);
        let grown = map_bytes(&mut h)? - empty;
        // `rules` per family: 2 × rules EC2 rules (each names a v4 and a v6 range).
        let per_rule = grown as f64 / (2 * rules) as f64;
        println!(
            "one pod, {rules:>5} rules per family: +{grown} bytes, {per_rule:.0} per rule and family"
        );
        results.push(format!(
            r#"{{"case":"scale_bytes_per_rule","rules":{rules},"bytes":{grown},"per_rule":{per_rule:.0}}}"#
        ));
    }
    // Pods sharing their groups share the compiled policy: a pod adds its own entries.
    let mut h = harness();
    h.apply(&groups(60), &pods(1));
    let one = map_bytes(&mut h)?;
    let plan = h.apply(&groups(60), &pods(101));
    anyhow::ensure!(plan.pods.iter().all(|p| p.error.is_none()), "100 more pods");
    let per_pod = (map_bytes(&mut h)? - one) as f64 / 100.0;
    println!("a pod more, sharing its groups: {per_pod:.0} bytes");
    results.push(format!(
        r#"{{"case":"scale_bytes_per_pod_shared_groups","per_pod":{per_pod:.0}}}"#
    ));

    // The largest rule set of one pod: doubling until a table refuses (bounded in time).
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut fits, mut refused) = (1000usize, None);
    let mut rules = 2000usize;
    while Instant::now() < deadline && rules <= 1 << 20 {
        let mut h = harness();
        let plan = h.apply(&many(rules), &pods(1));
        match &plan.pods[0].error {
            None => fits = rules,
            Some(e) => {
                refused = Some((rules, e.to_string()));
                break;
            }
        }
        rules *= 2;
    }
    match &refused {
        Some((r, why)) => {
            println!("largest rule set of one pod: {fits} rules per family fit, {r} refused: {why}")
        }
        None => println!(
            "largest rule set of one pod: {fits} rules per family fit (not refused up to {rules})"
        ),
    }
    results.push(format!(
        r#"{{"case":"scale_largest_rule_set","rules_per_family_fit":{fits},"refused_at":{}}}"#,
        refused.map_or("null".to_string(), |(r, _)| r.to_string())
    ));
    Ok(())
}
