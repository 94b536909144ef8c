//! `enforcer explain` on the shop's simulated node: for each packet, the verdict and the
//! rule it names (or the near miss and what differs) — and real traffic of that packet
//! getting the same verdict. Then the kernel's maps are tampered with behind the
//! daemon's back, and explain says loudly that they disagree.
use std::process::Command;

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::*;
use serde_json::Value;

/// `enforcer explain ARGS --state-dir <the node's>`.
fn run(n: &Node, args: &[&str]) -> std::process::Output {
    Command::new(enforcer_bin())
        .arg("explain")
        .args(args)
        .arg("--state-dir")
        .arg(n.sim.workdir.join("state"))
        .output()
        .unwrap()
}

fn explain(n: &Node, dir: &str, target: &str) -> (Value, bool) {
    let out = run(n, &["--pod", "shop/web", dir, target, "-o", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (v, out.status.success())
}

/// Real traffic of a packet: whether it got through.
type Probe = fn(&str, &str) -> anyhow::Result<bool>;
/// (target, verdict, reason, the rule named, what differs, real traffic).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<Probe>,
);

#[test]
fn explain_names_the_rule_or_what_differs_and_traffic_agrees() {
    let n = node();
    let web_ns = n.sim.pod_ns("web").to_string();
    let _a = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&n.sim.fabric_ns, "10.0.2.6:443").unwrap();
    let _c = echo_server(&n.sim.fabric_ns, "10.0.2.5:80").unwrap();
    let _d = echo_server(&n.sim.fabric_ns, "10.0.2.5:5353").unwrap();
    let _e = echo_server(&n.sim.fabric_ns, "10.0.2.5:53").unwrap();
    let _f = echo_server(&n.sim.fabric_ns, "[fd00:10:2::5]:443").unwrap();
    // (target, verdict, reason, the rule named (allowing, or the nearest), what differs,
    // real traffic's outcome), each line saying what it proves.
    let table: [Case; 6] = [
        // The allowing rule, with the prefix matched.
        (
            "10.0.2.5:443",
            "allow",
            "allow_policy",
            "tcp 443 to 10.0.2.5/32",
            "",
            Some(tcp_echo),
        ),
        // IPv6: its own rule (one per peer, as EC2 lists them).
        (
            "[fd00:10:2::5]:443",
            "allow",
            "allow_policy",
            "tcp 443 to fd00:10:2::5/128",
            "",
            Some(tcp_echo),
        ),
        // Another host: the rule for this port names another peer.
        (
            "10.0.2.6:443",
            "drop",
            "drop_no_rule",
            "tcp 443 to 10.0.2.5/32",
            "peer: 10.0.2.6 is not in 10.0.2.5/32",
            Some(tcp_echo),
        ),
        // Another port on the allowed host.
        (
            "10.0.2.5:80",
            "drop",
            "drop_no_rule",
            "tcp 443 to 10.0.2.5/32",
            "port: the rule covers 443-443, not 80",
            Some(tcp_echo),
        ),
        // UDP allowed on 5353; 53 is off by the port.
        (
            "10.0.2.5:5353/udp",
            "allow",
            "allow_policy",
            "udp 5353 to 10.0.2.5/32",
            "",
            Some(udp_echo),
        ),
        (
            "10.0.2.5:53/udp",
            "drop",
            "drop_no_rule",
            "udp 5353 to 10.0.2.5/32",
            "port: the rule covers 5353-5353, not 53",
            Some(udp_echo),
        ),
    ];
    for (target, verdict, reason, rule, differs, probe) in table {
        let (e, ok) = explain(&n, "--to", target);
        assert!(ok, "{target}: exit status ({e})");
        assert_eq!(e["verdict"], verdict, "{target}: {e:#}");
        assert_eq!(e["reason"], reason, "{target}: {e:#}");
        if verdict == "allow" {
            assert_eq!(e["allowed_by"]["group"], "sg-web", "{target}");
            assert_eq!(e["allowed_by"]["rule"], rule, "{target}: {e:#}");
        } else {
            assert_eq!(e["near_misses"][0]["rule"], rule, "{target}: {e:#}");
            assert_eq!(e["near_misses"][0]["differs"], differs, "{target}: {e:#}");
        }
        assert_eq!(
            e["kernel"]["agrees"], true,
            "{target}: the live maps agree: {e:#}"
        );
        assert_eq!(e["kernel"]["verdict"], verdict, "{target}");
        if let Some(probe) = probe {
            let passed = probe(&web_ns, target.split('/').next().unwrap()).unwrap();
            assert_eq!(passed, verdict == "allow", "{target}: real traffic");
        }
    }
    // Inbound: the pod's port, from a member of the group its rule names (client pod).
    let (e, _) = explain(&n, "--from", "10.0.1.12:8080");
    assert_eq!(e["verdict"], "allow", "{e:#}");
    assert_eq!(e["allowed_by"]["rule"], "tcp 8080 from sg-client");
    assert_eq!(e["allowed_by"]["peer"], "10.0.1.12/32");
    // Always-allowed: no rule consulted, and the kernel's tries say the same.
    let (e, _) = explain(&n, "--to", "169.254.169.254:80");
    assert_eq!(
        (e["verdict"].as_str(), e["reason"].as_str()),
        (Some("allow"), Some("allow_always"))
    );
    assert_eq!(e["kernel"]["by"], "always allowed");
    // An unknown pod is named.
    let out = run(&n, &["--pod", "shop/ghost", "--to", "10.0.2.5:443"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pod shop/ghost on this node"));
}

/// Proves the disagreement check can fail: web's TCP 443 rule entry is deleted from the
/// live PORT_EXACT map (single ports' rules) behind the daemon's back. The model still
/// allows, the kernel drops (and real traffic is dropped): explain says so, and exits 1.
#[test]
fn explain_says_loudly_when_the_kernel_disagrees() {
    use aya::maps::{HashMap, Map, MapData};
    use enforcer_common::{PortKey, PortRule};
    let n = node();
    let _a = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let web_ns = n.sim.pod_ns("web").to_string();
    assert!(tcp_echo(&web_ns, "10.0.2.5:443").unwrap());
    let pin = n.sim.map_pin(enforcer_common::map_names::PORT_EXACT);
    let mut rules: HashMap<MapData, PortKey, PortRule> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&pin).unwrap())).unwrap();
    let tcp443: Vec<_> = rules
        .keys()
        .map(Result::unwrap)
        .filter(|k| k.proto == 6 && k.port() == 443)
        .collect();
    assert!(!tcp443.is_empty());
    for k in &tcp443 {
        rules.remove(k).unwrap();
    }
    let (e, ok) = explain(&n, "--to", "10.0.2.5:443");
    assert!(!ok, "exit 1 on disagreement");
    assert_eq!(e["verdict"], "allow", "the model allows: {e:#}");
    assert_eq!(e["kernel"]["verdict"], "drop");
    assert_eq!(e["kernel"]["agrees"], false);
    assert!(
        !tcp_echo(&web_ns, "10.0.2.5:443").unwrap(),
        "and the kernel does drop it"
    );
    let table = run(&n, &["--pod", "shop/web", "--to", "10.0.2.5:443"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("THE KERNEL'S MAPS DISAGREE"));
}
