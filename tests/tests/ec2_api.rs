//! EC2 as the source of security groups, with real traffic on a simulated node: the
//! daemon polls a local EC2 API (moto_server, in the node's namespace) through
//! aws-sdk-ec2. Groups and rules are created and revoked through the EC2 API (the AWS
//! CLI); a revoked rule stops new flows within a poll; the members of a referenced group
//! come from its network interfaces; an EC2 that stops answering keeps the last state.
use std::time::{Duration, Instant};

use integration_tests::enforcer_bin;
use integration_tests::moto::{Moto, SDK_ENV};
use integration_tests::net::*;
use integration_tests::shop::{REMOTE, counter_reaching};
use integration_tests::sim::{SimNode, SimPod, pods_yaml, sh, sim_pod, write_config};

/// The daemon with web's policy and pod from files and its groups from EC2 at
/// `endpoint`, polled every second.
fn start_daemon_on_ec2(sim: &mut SimNode, web: &SimPod, sg: &str, endpoint: &str) {
    let k8s = format!(
        "---\nkind: SecurityGroupPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: web}}}}, securityGroups: {{groupIds: [{sg}]}}}}\n{}",
        pods_yaml(std::slice::from_ref(web), &|_| "{app: web}".into())
    );
    let cfg = write_config(sim, r#"{"SecurityGroups":[]}"#, &k8s, "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "ec2Api: {{endpoint: '{endpoint}', region: us-east-1, pollSeconds: 1, jitterSeconds: 0}}\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    sim.daemon_env = SDK_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
}

#[test]
fn groups_from_ec2_are_enforced_and_a_revocation_through_the_api_takes_effect() {
    let web = sim_pod("shop", "web", 1);
    let mut sim = SimNode::build(std::slice::from_ref(&web), REMOTE).unwrap();
    let moto = Moto::start(&mut sim);
    let (sg, rule) = moto.web_group(&sim);

    start_daemon_on_ec2(&mut sim, &web, &sg, &moto.endpoint());
    let st = sim.status().unwrap();
    let web_st = st.pods.iter().find(|p| p.name == "web").unwrap();
    assert_eq!(
        web_st.state,
        enforcer::status::PodState::Enforced,
        "{}",
        st.render_table()
    );
    assert!(
        st.sources.iter().any(|s| s.starts_with("EC2:")),
        "{:?}",
        st.sources
    );

    let _a = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&sim.fabric_ns, "10.0.2.6:443").unwrap();
    let ns = sim.pod_ns("web").to_string();
    assert!(
        tcp_echo(&ns, "10.0.2.5:443").unwrap(),
        "allowed by the rule from EC2"
    );
    assert!(!tcp_echo(&ns, "10.0.2.6:443").unwrap(), "nothing else");

    // The rule is named by EC2's SecurityGroupRuleId where people look for it:
    // explain, the flow events and the rule hits.
    let rules = moto.aws(
        &sim,
        &[
            "describe-security-group-rules",
            "--filters",
            &format!("Name=group-id,Values={sg}"),
        ],
    );
    let id = rules["SecurityGroupRules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["IsEgress"] == true && r["FromPort"] == 443)
        .and_then(|r| r["SecurityGroupRuleId"].as_str())
        .expect("EC2 names the rule")
        .to_string();
    let ask = |args: &[&str]| {
        let out = std::process::Command::new(enforcer_bin())
            .args(args)
            .arg("--state-dir")
            .arg(sim.workdir.join("state"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let e: serde_json::Value = serde_json::from_str(&ask(&[
        "explain",
        "--pod",
        "shop/web",
        "--to",
        "10.0.2.5:443",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(e["allowed_by"]["rule_id"], id.as_str(), "{e:#}");
    let named = format!("{sg} outbound rule #0 ({id})");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ask(&["flows", "--pod", "shop/web"]).contains(&named) {
        assert!(Instant::now() < deadline, "no event names {named}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ask(&["status", "--rules"]).contains(&id),
        "status --rules shows {id}"
    );

    // Revoked through the EC2 API: new flows stop within a poll (1 s here).
    moto.egress(&sim, "revoke", &sg, rule);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_echo(&ns, "10.0.2.5:443").unwrap() {
        assert!(
            Instant::now() < deadline,
            "the revocation was not enforced within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(counter_reaching(&sim, "web", "drop_no_rule", 2) >= 2);

    // A rule naming another group: its members are the private addresses of the
    // network interfaces carrying it, learned from EC2 (here one ENI, its address
    // hosted by the fabric).
    let db = moto.bare_group(&sim, "db");
    let subnets = moto.aws(&sim, &["describe-subnets"]);
    let subnet = subnets["Subnets"][0]["SubnetId"]
        .as_str()
        .unwrap()
        .to_string();
    let cidr: ipnet::Ipv4Net = subnets["Subnets"][0]["CidrBlock"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let member = cidr.hosts().nth(40).unwrap().to_string();
    sh(&[
        "ip",
        "-n",
        &sim.fabric_ns,
        "addr",
        "add",
        &format!("{member}/32"),
        "dev",
        "lo",
    ])
    .unwrap();
    let _db = echo_server(&sim.fabric_ns, &format!("{member}:5432")).unwrap();
    let to_db =
        format!("IpProtocol=tcp,FromPort=5432,ToPort=5432,UserIdGroupPairs=[{{GroupId={db}}}]");
    moto.egress(&sim, "authorize", &sg, &to_db);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !tcp_echo(&ns, &format!("{member}:5432")).unwrap(),
        "no interface carries db yet: no member"
    );
    moto.aws(
        &sim,
        &[
            "create-network-interface",
            "--subnet-id",
            &subnet,
            "--groups",
            &db,
            "--private-ip-address",
            &member,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_echo(&ns, &format!("{member}:5432")).unwrap() {
        assert!(
            Instant::now() < deadline,
            "the db member was not learned within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // EC2 goes away: the last good state stays (still revoked, still enforced), and
    // status says why.
    moto.egress(&sim, "authorize", &sg, rule);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_echo(&ns, "10.0.2.5:443").unwrap() {
        assert!(
            Instant::now() < deadline,
            "the new rule was not enforced within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sim.stop_children();
    sim.wait_status("EC2's error in status", |st| {
        st.source_errors
            .iter()
            .any(|e| e.contains("EC2") && e.contains("last good"))
    });
    assert!(
        tcp_echo(&ns, "10.0.2.5:443").unwrap(),
        "the last good rules stay enforced"
    );
    assert!(!tcp_echo(&ns, "10.0.2.6:443").unwrap(), "and nothing opens");
}

/// EC2 throttling the account (`RequestLimitExceeded`, after the SDK's own retries):
/// the last good answer stays enforced — a rule revoked meanwhile is not seen, nothing
/// opens — status names the throttling, and once EC2 answers again the revocation
/// takes effect.
#[test]
fn throttled_ec2_keeps_the_last_good_state_until_it_answers_again() {
    let web = sim_pod("shop", "web", 1);
    let mut sim = SimNode::build(std::slice::from_ref(&web), REMOTE).unwrap();
    let moto = Moto::start(&mut sim);
    let (sg, rule) = moto.web_group(&sim);
    let front = moto.throttling_front();
    start_daemon_on_ec2(
        &mut sim,
        &web,
        &sg,
        &format!("http://127.0.0.1:{}", front.port),
    );
    sim.wait_status("web enforced from EC2", |st| st.enforced() == 1);
    let _a = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&sim.fabric_ns, "10.0.2.6:443").unwrap();
    let ns = sim.pod_ns("web").to_string();
    assert!(tcp_echo(&ns, "10.0.2.5:443").unwrap());

    front
        .throttle
        .store(true, std::sync::atomic::Ordering::Relaxed);
    sim.wait_status("the throttling in status", |st| {
        st.source_errors
            .iter()
            .any(|e| e.contains("RequestLimitExceeded") && e.contains("last good"))
    });
    moto.egress(&sim, "revoke", &sg, rule);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        tcp_echo(&ns, "10.0.2.5:443").unwrap(),
        "the last good answer stays enforced"
    );
    assert!(!tcp_echo(&ns, "10.0.2.6:443").unwrap(), "and nothing opens");

    // EC2 answers again: after the backed-off wait (at most 16 polls), the revocation.
    front
        .throttle
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(40);
    while tcp_echo(&ns, "10.0.2.5:443").unwrap() {
        assert!(
            Instant::now() < deadline,
            "the revocation was not enforced within 40 s of EC2 answering"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = sim.status().unwrap();
    assert!(
        st.sources
            .iter()
            .any(|s| s.contains("last error") && s.contains("RequestLimitExceeded")),
        "the recovered error stays named: {:?}",
        st.sources
    );
}
