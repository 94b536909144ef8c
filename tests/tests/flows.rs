//! `enforcer flows` on the shop's simulated node, with real traffic: each denied packet
//! and each new allowed flow is reported with its pod, 5-tuple, reason and allowing
//! rule; a flood of denied packets costs a bounded number of events (the rest counted
//! as lost, every packet still judged); `--follow` streams new events.
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::*;
use serde_json::Value;

fn flows(n: &Node, pod: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(enforcer_bin());
    cmd.args(["flows", "-o", "json", "--state-dir"])
        .arg(n.sim.workdir.join("state"));
    if let Some(p) = pod {
        cmd.args(["--pod", p]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The events of `pod` once `ok` holds for them (5 s at most).
fn flows_until(n: &Node, pod: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = flows(n, Some(pod));
        if ok(&f) || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn to<'a>(events: &'a [Value], remote: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["remote"] == remote).collect()
}

/// Proves each event carries what a person needs: the pod, the tuple from the pod's
/// side, the verdict and reason, and for an allow the group and rule; and that
/// `--pod` shows that pod's only.
#[test]
fn each_drop_and_each_new_allowed_flow_is_reported_with_its_rule() {
    let n = node();
    let _a = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&n.sim.fabric_ns, "10.0.2.6:443").unwrap();
    let web = n.sim.pod_ns("web").to_string();
    assert!(tcp_echo(&web, "10.0.2.5:443").unwrap());
    assert!(!tcp_echo(&web, "10.0.2.6:443").unwrap());
    assert!(tcp_echo(n.sim.pod_ns("client"), "10.0.2.6:443").unwrap());
    let events = flows_until(&n, "shop/web", |f| {
        !to(f, "10.0.2.5:443").is_empty() && !to(f, "10.0.2.6:443").is_empty()
    });
    let allowed = to(&events, "10.0.2.5:443");
    assert_eq!(
        allowed.len(),
        1,
        "one event for the new flow, none for its later packets: {allowed:?}"
    );
    let a = allowed[0];
    for (field, want) in [
        ("verdict", "allow"),
        ("reason", "allow_policy"),
        ("rule", "sg-web outbound rule #0"),
        ("protocol", "tcp"),
        ("direction", "egress"),
        ("namespace", "shop"),
        ("pod", "web"),
    ] {
        assert_eq!(a[field], want, "{field}: {a:#}");
    }
    assert!(
        a["local"].as_str().unwrap().starts_with("10.0.1.11:"),
        "{a:#}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - a["time"].as_f64().unwrap()).abs() < 30.0,
        "wall-clock time: {a:#}"
    );
    let denied = to(&events, "10.0.2.6:443");
    assert!(!denied.is_empty());
    for d in denied {
        // The SYN and its retransmissions, each a denied packet.
        assert_eq!(
            (d["verdict"].as_str(), d["reason"].as_str()),
            (Some("drop"), Some("drop_no_rule")),
            "{d:#}"
        );
        assert!(d["rule"].is_null());
    }
    assert!(events.iter().all(|e| e["pod"] == "web"), "--pod filters");
    let all = flows(&n, None);
    assert!(
        all.iter().any(|e| e["pod"] == "client"
            && e["remote"] == "10.0.2.6:443"
            && e["verdict"] == "allow"),
        "client's allowed flow is in the unfiltered stream"
    );
}

/// Proves the budget: 3000 denied datagrams in a burst are all dropped and counted,
/// but reported as a bounded number of events; the rest are counted as lost.
#[test]
fn a_flood_of_denied_packets_costs_a_bounded_number_of_events() {
    let n = node();
    let web = n.sim.pod_ns("web").to_string();
    let before = counter_reaching(&n.sim, "web", "drop_no_rule", 0);
    let sent = integration_tests::sim::spawn_in_netns(&web, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        (0..3000)
            .filter(|_| s.send_to(b"flood", "10.0.2.6:5353").is_ok())
            .count() as u64
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(sent, 3000);
    let dropped = counter_reaching(&n.sim, "web", "drop_no_rule", before + 3000) - before;
    assert!(
        dropped >= 3000,
        "every packet judged and counted ({dropped})"
    );
    let events = flows_until(&n, "shop/web", |f| to(f, "10.0.2.6:5353").len() >= 100);
    let reported = to(&events, "10.0.2.6:5353").len() as u64;
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let budget = (enforcer_common::EVENT_BURST + enforcer_common::EVENTS_PER_SECOND * 5) * cpus;
    assert!(
        reported >= 100 && reported <= budget.min(2999),
        "{reported} events for 3000 drops"
    );
    let st = n.sim.status().unwrap();
    let lost = st
        .pods
        .iter()
        .find(|p| p.name == "web")
        .unwrap()
        .events_lost;
    assert!(
        reported + lost >= 3000,
        "each drop reported or counted lost: {reported} + {lost}"
    );
}

/// Proves `--follow` streams events read after it started.
#[test]
fn follow_streams_new_events() {
    let n = node();
    let mut child = Command::new(enforcer_bin())
        .args([
            "flows",
            "--follow",
            "--pod",
            "shop/web",
            "-o",
            "json",
            "--state-dir",
        ])
        .arg(n.sim.workdir.join("state"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let web = n.sim.pod_ns("web").to_string();
    assert!(!udp_echo(&web, "10.0.2.6:7").unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["remote"] == "10.0.2.6:7" {
                seen = Some(v);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = seen.expect("the denied datagram streamed");
    assert_eq!(v["reason"], "drop_no_rule");
}

fn flows_cmd(n: &Node, args: &[&str]) -> (bool, String) {
    let out = Command::new(enforcer_bin())
        .arg("flows")
        .args(args)
        .arg("--state-dir")
        .arg(n.sim.workdir.join("state"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Proves `flows table` shows a pod's live entries as the programs keep them, and
/// `flows flush` removes that pod's only: after web's rule is revoked its established
/// connection goes on (EC2 keeps tracked flows) until an operator flushes web's flows;
/// then it stops, and client's connection, not flushed, goes on.
#[test]
fn flush_ends_what_a_revoked_rule_left_open_and_only_for_that_pod() {
    let mut n = node();
    let _a = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&n.sim.fabric_ns, "10.0.2.6:443").unwrap();
    let mut web = tcp_connect(n.sim.pod_ns("web"), "10.0.2.5:443").unwrap();
    let mut client = tcp_connect(n.sim.pod_ns("client"), "10.0.2.6:443").unwrap();
    assert!(exchange(&mut web) && exchange(&mut client));
    // Its age grows while it is used; idle time starts over at each packet.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(exchange(&mut web));

    let (ok, text) = flows_cmd(&n, &["table", "--pod", "shop/web", "-o", "json"]);
    assert!(ok, "{text}");
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    let row = rows
        .iter()
        .find(|r| r["remote"] == "10.0.2.5:443")
        .unwrap_or_else(|| panic!("web's connection in its table: {text}"));
    for (field, want) in [
        ("protocol", "tcp"),
        ("opened", "egress"),
        ("state", "tcp-established"),
        ("path", "vpc"),
        ("rule", "sg-web outbound rule #0"),
    ] {
        assert_eq!(row[field], want, "{field}: {row:#}");
    }
    let (age, idle) = (
        row["age_seconds"].as_u64().unwrap(),
        row["idle_seconds"].as_u64().unwrap(),
    );
    assert!(
        (1..10).contains(&age) && idle < age,
        "age {age}, idle {idle}"
    );
    assert!(
        rows.iter()
            .all(|r| r["local"].as_str().unwrap().starts_with("10.0.1.11:")),
        "web's only"
    );

    let revoked = groups().replace(
        r#""FromPort":443,"ToPort":443"#,
        r#""FromPort":444,"ToPort":444"#,
    );
    std::fs::write(&n.groups_path, revoked).unwrap();
    n.sim.reload_daemon().unwrap();
    assert!(
        exchange(&mut web),
        "a tracked flow outlives its revoked rule"
    );

    let (ok, text) = flows_cmd(&n, &["flush", "--pod", "shop/web"]);
    assert!(ok && text.starts_with("flushed "), "{text}");
    assert!(!text.starts_with("flushed 0 "), "{text}");
    assert!(
        n.sim.daemon_log().contains("flushed"),
        "the daemon logs the operator's flush"
    );
    let (_, text) = flows_cmd(&n, &["table", "--pod", "shop/web", "-o", "json"]);
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(rows.iter().all(|r| r["remote"] != "10.0.2.5:443"), "{text}");
    assert!(
        !exchange(&mut web),
        "flushed: the revoked rule now applies to it"
    );
    assert!(exchange(&mut client), "another pod's flows are not touched");
    // A pod that is not on the node is named.
    let (ok, text) = flows_cmd(&n, &["flush", "--pod", "shop/ghost"]);
    assert!(!ok && text.contains("no enforced pod shop/ghost"), "{text}");
}

/// Proves the per-rule hits: two connections through web's TCP 443 rule count 2 on
/// it (not their later packets), a UDP exchange 1 on the 5353 rule, and rules no
/// traffic met are marked as never matched.
#[test]
fn rules_count_the_flows_they_admitted() {
    let n = node();
    let _a = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&n.sim.fabric_ns, "10.0.2.5:5353").unwrap();
    let web = n.sim.pod_ns("web").to_string();
    for _ in 0..2 {
        let mut c = tcp_connect(&web, "10.0.2.5:443").unwrap();
        assert!(exchange(&mut c) && exchange(&mut c));
    }
    assert!(udp_echo(&web, "10.0.2.5:5353").unwrap());
    let out = Command::new(enforcer_bin())
        .args(["status", "--rules", "-o", "json", "--state-dir"])
        .arg(n.sim.workdir.join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let web_rules = &report.iter().find(|p| p["name"] == "web").unwrap()["rules"];
    let hits = |rule: &str| {
        web_rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap_or_else(|| panic!("{rule} in {web_rules:#}"))["hits"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(hits("tcp 443 to 10.0.2.5/32"), 2, "one per connection");
    assert_eq!(hits("udp 5353 to 10.0.2.5/32"), 1);
    assert_eq!(hits("tcp 443 to fd00:10:2::5/128"), 0);
    let table = Command::new(enforcer_bin())
        .args(["status", "--rules", "--state-dir"])
        .arg(n.sim.workdir.join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("tcp 443 to fd00:10:2::5/128"))
        .unwrap();
    assert!(line.ends_with("never matched"), "{text}");
}
