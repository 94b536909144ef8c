//! The EKS tutorial (shared/seeds) through the cluster's real APIs rather than files:
//! the SecurityGroupPolicies and pods come from the Kubernetes API (`kube_fake`), the
//! groups from EC2 (moto_server, made with the AWS CLI). `curl my-app` works; the
//! cluster group's DNS rules revoked through the EC2 API, lookup by name fails while
//! fetching by IP still works, and the drops are counted on the CoreDNS pod.
use std::time::{Duration, Instant};

use integration_tests::agents::{curl, dns_server, http_server};
use integration_tests::demo::{NS, POLICIES, SERVICE, wait_for_servers};
use integration_tests::enforcer_bin;
use integration_tests::kube_fake::FakeApi;
use integration_tests::moto::{Moto, SDK_ENV};
use integration_tests::shop::counter_reaching;
use integration_tests::sim::{SimNode, SimPod, pods_yaml, sim_pod, write_config};
use serde_json::{Value, json};

const NODE: &str = "node-1";

#[test]
fn the_tutorial_through_the_kubernetes_and_ec2_apis() {
    let apps: Vec<SimPod> = (0..2)
        .map(|i| sim_pod(NS, &format!("my-deployment-{i}"), i + 1))
        .collect();
    let coredns = sim_pod("kube-system", "coredns", 9);
    let mut all = apps.clone();
    all.push(coredns.clone());
    let mut sim = SimNode::build(&all, &[]).unwrap();

    // The tutorial's groups, made through the EC2 API.
    let moto = Moto::start(&mut sim);
    let pod_sg = moto.bare_group(&sim, "my-pod-security-group");
    let cluster_sg = moto.aws(
        &sim,
        &[
            "create-security-group",
            "--group-name",
            "eks-cluster-sg-my-cluster",
            "--description",
            "cluster",
        ],
    )["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    let self_rule = format!("IpProtocol=-1,UserIdGroupPairs=[{{GroupId={pod_sg}}}]");
    moto.aws(
        &sim,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &pod_sg,
            "--ip-permissions",
            &self_rule,
        ],
    );
    moto.egress(&sim, "authorize", &pod_sg, &self_rule);
    let dns = |proto: &str, to: &str, what: &str| {
        format!(
            "IpProtocol={proto},FromPort=53,ToPort=53,UserIdGroupPairs=[{{GroupId={to},Description={what}}}]"
        )
    };
    for proto in ["tcp", "udp"] {
        moto.egress(&sim, "authorize", &pod_sg, &dns(proto, &cluster_sg, "dns"));
    }
    let dns_in = [
        dns("tcp", &pod_sg, "my_tcp_rule"),
        dns("udp", &pod_sg, "my_udp_rule"),
    ];
    for rule in &dns_in {
        moto.aws(
            &sim,
            &[
                "authorize-security-group-ingress",
                "--group-id",
                &cluster_sg,
                "--ip-permissions",
                rule,
            ],
        );
    }

    // The policies and pods, through the Kubernetes API.
    let api = FakeApi::start(&sim.node_ns).unwrap();
    let kubeconfig = sim.workdir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let policies = POLICIES
        .replace("sg-0my-pod-sg", &pod_sg)
        .replace("sg-0cluster", &cluster_sg);
    let pods = pods_yaml(&all, &|p| {
        if p.name == "coredns" {
            "{k8s-app: kube-dns}".into()
        } else {
            "{app: my-app, role: my-role}".into()
        }
    });
    for doc in format!("{policies}\n---\n{pods}").split("\n---\n") {
        let Ok(mut v) = serde_yaml::from_str::<Value>(doc) else {
            continue;
        };
        match v["kind"].as_str() {
            Some("Pod") => {
                v["apiVersion"] = "v1".into();
                v["spec"] = json!({ "nodeName": NODE, "containers": [] });
                api.put("pods", v);
            }
            Some("SecurityGroupPolicy") => api.put("securitygrouppolicies", v),
            _ => {}
        }
    }

    // Real servers: HTTP in the app pods, dnsmasq as CoreDNS answering for my-app.
    for (i, p) in apps.iter().enumerate() {
        let dir = sim.workdir.join(format!("www{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), format!("served by {}\n", p.name)).unwrap();
        let ns = sim.pod_ns(&p.name).to_string();
        http_server(&mut sim, &ns, 80, &dir).unwrap();
        sim.set_resolver(
            &ns,
            &coredns.ipv4,
            &format!("{NS}.svc.cluster.local svc.cluster.local"),
        )
        .unwrap();
    }
    let dns_ns = sim.pod_ns("coredns").to_string();
    dns_server(&mut sim, &dns_ns, &coredns.ipv4, SERVICE, &apps[1].ipv4).unwrap();

    let cfg = write_config(&sim, r#"{"SecurityGroups":[]}"#, "", "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "ec2Api: {{endpoint: '{}', region: us-east-1, pollSeconds: 1, jitterSeconds: 0}}\n",
        moto.endpoint()
    ));
    std::fs::write(&cfg, text).unwrap();
    // The Kubernetes API source from `enforcer run`'s flags alone.
    sim.daemon_args = vec![
        "--node-name".into(),
        NODE.into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ];
    sim.daemon_env = SDK_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
    sim.wait_status("every pod enforced", |st| st.enforced() == 3);
    wait_for_servers(&sim, &apps).unwrap();

    let client = sim.pod_ns(&apps[0].name).to_string();
    let (ok, out) = curl(&sim, &client, "http://my-app");
    assert!(ok, "curl my-app: {out}");
    assert!(out.contains("served by my-deployment-1"), "{out}");
    let (ok, found) = doctor(&sim);
    assert!(
        ok && !found.contains("dns-egress"),
        "the tutorial's groups are sound: {found}"
    );

    // The cluster group's DNS rules revoked through the EC2 API.
    for rule in &dns_in {
        moto.aws(
            &sim,
            &[
                "revoke-security-group-ingress",
                "--group-id",
                &cluster_sg,
                "--ip-permissions",
                rule,
            ],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while curl(&sim, &client, "http://my-app").0 {
        assert!(
            Instant::now() < deadline,
            "name lookup still works 15 s after the revocation"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let by_ip = format!("http://{}", apps[1].ipv4);
    let (ok, out) = curl(&sim, &client, &by_ip);
    assert!(ok, "curl {by_ip}: {out}");
    assert!(
        counter_reaching(&sim, "coredns", "drop_no_rule", 1) >= 1,
        "the queries are dropped by CoreDNS's inbound rules"
    );
    // enforcer doctor names each app pod whose DNS CoreDNS's group no longer admits,
    // with the fix, and exits 1.
    let (ok, found) = doctor(&sim);
    assert!(!ok, "errors found: exit 1\n{found}");
    for app in &apps {
        assert!(
            found.contains(&format!(
                "ERROR [dns-egress] pod {}/{}",
                app.namespace, app.name
            )),
            "{found}"
        );
    }
    assert!(
        found.contains("fix: add outbound TCP and UDP 53"),
        "{found}"
    );
}

/// `enforcer doctor` against the daemon: (exit 0, its table).
fn doctor(sim: &SimNode) -> (bool, String) {
    let out = std::process::Command::new(enforcer_bin())
        .args(["doctor", "--state-dir"])
        .arg(sim.workdir.join("state"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
