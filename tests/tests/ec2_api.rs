//! EC2 as the source of security groups, with real traffic on a simulated node: the
//! daemon polls a local EC2 API (moto_server, in the node's namespace) through
//! aws-sdk-ec2. Groups and rules are created and revoked through the EC2 API (the AWS
//! CLI); a revoked rule stops new flows within a poll; the members of a referenced group
//! come from its network interfaces; an EC2 that stops answering keeps the last state.
use std::time::{Duration, Instant};

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::{REMOTE, counter_reaching};
use integration_tests::sim::{SimNode, pods_yaml, sh, sim_pod, write_config};

/// The AWS CLI against the local EC2, from the node's namespace; its JSON output.
fn aws(sim: &SimNode, port: u16, args: &[&str]) -> serde_json::Value {
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut full = vec![
        "env",
        "AWS_ACCESS_KEY_ID=test",
        "AWS_SECRET_ACCESS_KEY=test",
        "AWS_DEFAULT_REGION=us-east-1",
        "aws",
        "--endpoint-url",
        &endpoint,
        "--output",
        "json",
        "ec2",
    ];
    full.extend_from_slice(args);
    let out = sim
        .exec(&sim.node_ns, &full, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("aws {args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// Adds ("authorize") or removes ("revoke") an outbound permission of group `sg`.
fn egress(sim: &SimNode, port: u16, verb: &str, sg: &str, permission: &str) {
    let op = format!("{verb}-security-group-egress");
    aws(
        sim,
        port,
        &[&op, "--group-id", sg, "--ip-permissions", permission],
    );
}

/// A free TCP port in `ns` (bound and released: moto binds it next).
fn free_port(ns: &str) -> u16 {
    integration_tests::sim::in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
    .unwrap()
}

#[test]
fn groups_from_ec2_are_enforced_and_a_revocation_through_the_api_takes_effect() {
    let web = sim_pod("shop", "web", 1);
    let mut sim = SimNode::build(std::slice::from_ref(&web), REMOTE).unwrap();
    let node = sim.node_ns.clone();
    let port = free_port(&node);
    sim.spawn(
        &node,
        &["moto_server", "-H", "127.0.0.1", "-p", &port.to_string()],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let moto = format!("http://127.0.0.1:{port}/moto-api/");
    while !integration_tests::agents::curl(&sim, &node, &moto).0 {
        assert!(Instant::now() < deadline, "moto_server did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    // web's group, made through the API: TCP 443 out to one VPC host (EC2 gives a new
    // group an allow-all egress rule; it goes).
    let sg = aws(
        &sim,
        port,
        &[
            "create-security-group",
            "--group-name",
            "web",
            "--description",
            "web",
        ],
    );
    let sg = sg["GroupId"].as_str().unwrap().to_string();
    egress(
        &sim,
        port,
        "revoke",
        &sg,
        "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]",
    );
    let rule = "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=10.0.2.5/32}]";
    egress(&sim, port, "authorize", &sg, rule);

    let k8s = format!(
        "---\nkind: SecurityGroupPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: web}}}}, securityGroups: {{groupIds: [{sg}]}}}}\n{}",
        pods_yaml(std::slice::from_ref(&web), &|_| "{app: web}".into())
    );
    let cfg = write_config(&sim, r#"{"SecurityGroups":[]}"#, &k8s, "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "ec2Api: {{endpoint: 'http://127.0.0.1:{port}', region: us-east-1, pollSeconds: 1, jitterSeconds: 0}}\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    sim.daemon_env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
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

    // Revoked through the EC2 API: new flows stop within a poll (1 s here).
    egress(&sim, port, "revoke", &sg, rule);
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
    let db = aws(
        &sim,
        port,
        &[
            "create-security-group",
            "--group-name",
            "db",
            "--description",
            "db",
        ],
    );
    let db = db["GroupId"].as_str().unwrap().to_string();
    let subnets = aws(&sim, port, &["describe-subnets"]);
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
    egress(&sim, port, "authorize", &sg, &to_db);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !tcp_echo(&ns, &format!("{member}:5432")).unwrap(),
        "no interface carries db yet: no member"
    );
    aws(
        &sim,
        port,
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
    egress(&sim, port, "authorize", &sg, rule);
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
