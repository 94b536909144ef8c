//! The daemon's HTTP endpoints on a simulated node: `/healthz` and `/readyz` answer, and
//! `/metrics` (Prometheus text) moves as the verdicts of real traffic say — packets
//! allowed by web's group counted as allow_policy, a denied connection as drop_no_rule —
//! beside the map fill levels, pods by state, the apply-latency histogram and each
//! source's last success.
use std::time::Duration;

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::{REMOTE, groups, policies};
use integration_tests::sim::{SimNode, pods_yaml, sim_pod, write_config};

const URL: &str = "http://127.0.0.1:61680";

/// (HTTP status, body) of a GET from the node's namespace.
fn get(sim: &SimNode, path: &str) -> (String, String) {
    let node = sim.node_ns.clone();
    let url = format!("{URL}{path}");
    let code = sim
        .exec(
            &node,
            &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
            Duration::from_secs(5),
        )
        .unwrap_or_default();
    let body = sim
        .exec(&node, &["curl", "-s", &url], Duration::from_secs(5))
        .unwrap_or_default();
    (code, body)
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn health_readiness_and_metrics_follow_the_verdicts() {
    let web = sim_pod("shop", "web", 1);
    let mut sim = SimNode::build(std::slice::from_ref(&web), REMOTE).unwrap();
    let k8s = format!(
        "{}{}",
        policies(),
        pods_yaml(std::slice::from_ref(&web), &|_| "{app: web}".into())
    );
    let cfg = write_config(&sim, &groups(), &k8s, "").unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
    assert_eq!(get(&sim, "/healthz"), ("200".into(), "ok\n".into()));
    assert_eq!(get(&sim, "/readyz").0, "200");

    let allowed = r#"podsg_packets_total{namespace="shop",pod="web",reason="allow_policy"}"#;
    let denied = r#"podsg_packets_total{namespace="shop",pod="web",reason="drop_no_rule"}"#;
    let (code, before) = get(&sim, "/metrics");
    assert_eq!(code, "200");
    let _a = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&sim.fabric_ns, "10.0.2.6:443").unwrap();
    let ns = sim.pod_ns("web").to_string();
    assert!(
        tcp_echo(&ns, "10.0.2.5:443").unwrap(),
        "web's group allows it"
    );
    assert!(!tcp_echo(&ns, "10.0.2.6:443").unwrap(), "and nothing else");
    let (_, after) = get(&sim, "/metrics");
    assert!(
        sample(&after, allowed) > sample(&before, allowed),
        "allowed packets counted:\n{after}"
    );
    assert!(
        sample(&after, denied) > sample(&before, denied),
        "the denied SYN counted:\n{after}"
    );
    assert_eq!(sample(&after, r#"podsg_pods{state="enforced"}"#), 1);
    assert!(sample(&after, r#"podsg_map_capacity{map="FLOWS"}"#) > 0);
    assert!(sample(&after, r#"podsg_map_entries{map="POD_BY_VLAN"}"#) == 1);
    assert!(sample(&after, "podsg_apply_seconds_count") >= 1);
    assert_eq!(sample(&after, "podsg_trunk_xdp_attached"), 1);
    assert!(after.trim_end().ends_with("# EOF"), "OpenMetrics text");

    // Source health: the files read cleanly just now; a broken file fails, and its
    // last success stays when it was (its last good content stays enforced).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ok_at = r#"podsg_source_last_success_timestamp_seconds{source="files"}"#;
    let failing = r#"podsg_source_failing{source="files"}"#;
    let good = sample(&after, ok_at);
    assert!(
        now - 120 < good && good <= now + 1,
        "{good} vs {now}:\n{after}"
    );
    assert_eq!(sample(&after, failing), 0);
    let broke_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(sim.workdir.join("groups.json"), "{ not json").unwrap();
    let _ = sim.reload_daemon();
    let (_, broken) = get(&sim, "/metrics");
    assert_eq!(sample(&broken, failing), 1, "{broken}");
    let last = sample(&broken, ok_at);
    assert!(good <= last && last <= broke_at, "{last}:\n{broken}");
    assert!(
        tcp_echo(&ns, "10.0.2.5:443").unwrap(),
        "the last good groups stay enforced"
    );
}
