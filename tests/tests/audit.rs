//! Audit mode on the shop's simulated node, with real traffic: the same packets sent on
//! an enforcing node and on an auditing one get the same verdicts — reported as drops
//! on the first, as "would drop" on the second, where they pass. Status says which
//! pods audit; a namespace not listed stays enforced.
use std::collections::BTreeSet;
use std::process::Command;

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::*;
use serde_json::Value;

/// (target, protocol, passes when enforcing): web's rules allow TCP 443 to 10.0.2.5
/// and UDP 5353 to it, nothing else.
const PACKETS: [(&str, &str, bool); 5] = [
    ("10.0.2.5:443", "tcp", true),
    ("10.0.2.6:443", "tcp", false),
    ("10.0.2.5:80", "tcp", false),
    ("10.0.2.5:5353", "udp", true),
    ("10.0.2.6:5353", "udp", false),
];

/// Sends PACKETS from web on a node with `extra` settings; returns whether each got
/// through, web's (remote, verdict, reason) events, and web's status.
fn send(
    extra: &str,
) -> (
    Vec<bool>,
    BTreeSet<(String, String, String)>,
    enforcer::status::PodStatus,
) {
    let n = node_with(extra);
    let _servers: Vec<_> = [
        "10.0.2.5:443",
        "10.0.2.6:443",
        "10.0.2.5:80",
        "10.0.2.5:5353",
        "10.0.2.6:5353",
    ]
    .iter()
    .map(|a| echo_server(&n.sim.fabric_ns, a).unwrap())
    .collect();
    let web = n.sim.pod_ns("web").to_string();
    let passed: Vec<bool> = PACKETS
        .iter()
        .map(|(t, proto, _)| match *proto {
            "tcp" => tcp_echo(&web, t).unwrap(),
            _ => udp_echo(&web, t).unwrap(),
        })
        .collect();
    // The daemon reads events every 200 ms.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let out = Command::new(enforcer_bin())
        .args(["flows", "--pod", "shop/web", "-o", "json", "--state-dir"])
        .arg(n.sim.workdir.join("state"))
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["verdict"] != "allow")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("remote"), s("verdict"), s("reason"))
        })
        .collect();
    let st = n.sim.status().unwrap();
    let web_status = st.pods.into_iter().find(|p| p.name == "web").unwrap();
    (passed, events, web_status)
}

/// Proves audit mode is enforcing mode's verdicts without the drops: what enforcing
/// drops, auditing reports as "would drop" (same remotes, same reasons) and passes;
/// status and the table say so; allowed packets are not reported as would-drop.
#[test]
fn audit_reports_what_enforcing_drops_and_lets_it_pass() {
    let (enforced, drops, st) = send("");
    let want: Vec<bool> = PACKETS.iter().map(|p| p.2).collect();
    assert_eq!(enforced, want, "enforcing: the rules decide");
    assert!(!st.audit && st.would_drop == 0);
    assert!(drops.iter().all(|(_, v, _)| v == "drop"), "{drops:?}");

    let (audited, would, st) = send("  enforcement: audit\n");
    assert_eq!(audited, [true; 5], "auditing: everything passes");
    assert!(would.iter().all(|(_, v, _)| v == "would-drop"), "{would:?}");
    let key = |s: &BTreeSet<(String, String, String)>| -> BTreeSet<(String, String)> {
        s.iter()
            .map(|(r, _, reason)| (r.clone(), reason.clone()))
            .collect()
    };
    assert_eq!(
        key(&would),
        key(&drops),
        "the same packets, the same reasons"
    );
    assert!(!key(&would).is_empty());
    assert!(st.audit, "status says web audits");
    assert!(st.would_drop >= 3, "counted: {}", st.would_drop);
    let table = enforcer::status::NodeStatus {
        pods: vec![st],
        ..Default::default()
    }
    .render_table();
    assert!(table.contains("AUDIT: denied packets pass"), "{table}");
}

/// Proves the per-namespace switch: listing the pod's namespace audits it, listing
/// another leaves it enforced.
#[test]
fn audit_namespaces_audit_only_theirs() {
    let (passed, _, st) = send("  auditNamespaces: [shop]\n");
    assert!(st.audit && passed.iter().all(|p| *p));
    let (passed, _, st) = send("  auditNamespaces: [elsewhere]\n");
    assert!(!st.audit);
    assert_eq!(passed, PACKETS.iter().map(|p| p.2).collect::<Vec<_>>());
}
