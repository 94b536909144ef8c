//! The mirror path, with real components and real traffic: EC2 (moto_server) → two
//! `enforcer mirror` replicas (a Lease elects the one that polls) → the Kubernetes API
//! (`kube_fake`) → the daemon on a simulated node, which polls no EC2 at all. A rule
//! revoked through the EC2 API stops new flows; the leader killed, the other replica
//! takes over and changes keep arriving; a group deleted from EC2 fails its pod closed.
use std::time::{Duration, Instant};

use integration_tests::enforcer_bin;
use integration_tests::kube_fake::FakeApi;
use integration_tests::moto::{Moto, SDK_ENV};
use integration_tests::net::*;
use integration_tests::shop::REMOTE;
use integration_tests::sim::{SimNode, pods_yaml, sim_pod, write_config};
use serde_json::{Value, json};

const NODE: &str = "node-1";

/// Polls `ok` every 200 ms for up to `secs`; panics with `what` if it never holds.
fn eventually(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Who holds the mirror's lease.
fn holder(api: &FakeApi) -> Option<String> {
    api.objects("leases")
        .get("kube-system/podsg-mirror")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[test]
fn groups_reach_the_daemon_through_the_mirror_and_survive_a_leader_crash() {
    let web = sim_pod("shop", "web", 1);
    let mut sim = SimNode::build(std::slice::from_ref(&web), REMOTE).unwrap();
    let moto = Moto::start(&mut sim);
    let (sg, rule) = moto.web_group(&sim);

    let api = FakeApi::start(&sim.node_ns).unwrap();
    let kubeconfig = sim.workdir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let k8s = format!(
        "kind: SecurityGroupPolicy\napiVersion: vpcresources.k8s.aws/v1beta1\nmetadata: {{name: web, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: web}}}}, securityGroups: {{groupIds: [{sg}]}}}}\n---\n{}",
        pods_yaml(std::slice::from_ref(&web), &|_| "{app: web}".into())
    );
    for doc in k8s.split("\n---\n") {
        let mut v: Value = serde_yaml::from_str(doc).unwrap();
        if v["kind"] == "Pod" {
            v["apiVersion"] = "v1".into();
            v["spec"] = json!({ "nodeName": NODE, "containers": [] });
            api.put("pods", v);
        } else {
            api.put("securitygrouppolicies", v);
        }
    }

    // Two mirror replicas.
    let mirror_cfg = sim.workdir.join("mirror.yaml");
    std::fs::write(
        &mirror_cfg,
        format!(
            "kubeconfig: {}\nec2Api: {{endpoint: '{}', region: us-east-1, pollSeconds: 1, jitterSeconds: 0}}\nlease: {{namespace: kube-system, name: podsg-mirror, durationSeconds: 3}}\n",
            kubeconfig.display(),
            moto.endpoint()
        ),
    )
    .unwrap();
    let bin = enforcer_bin();
    let node = sim.node_ns.clone();
    let mut replicas = Vec::new();
    for name in ["mirror-a", "mirror-b"] {
        let mut args = vec!["env".to_string(), format!("POD_NAME={name}")];
        args.extend(SDK_ENV.iter().map(|(k, v)| format!("{k}={v}")));
        args.extend([
            bin.display().to_string(),
            "mirror".into(),
            "--config".into(),
            mirror_cfg.display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        replicas.push((name, sim.spawn(&node, &args).unwrap()));
    }
    let published = |api: &FakeApi| {
        api.objects("mirroredsecuritygroups")
            .get(&format!("/{sg}"))
            .cloned()
    };
    eventually(30, "the mirror publishing web's group", || {
        published(&api).is_some()
    });
    let leader = holder(&api).expect("a leader");
    assert!(leader == "mirror-a" || leader == "mirror-b", "{leader}");

    // The daemon: groups only from the mirror's objects (its files have none, and it
    // has no EC2 endpoint).
    let cfg = write_config(&sim, r#"{"SecurityGroups":[]}"#, "", "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "kubernetesApi: {{nodeName: {NODE}, kubeconfig: {}, mirroredGroups: true}}\n",
        kubeconfig.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    sim.start_daemon(&bin, &cfg).unwrap();
    sim.wait_status("web enforced with the mirrored group", |st| {
        st.enforced() == 1
    });
    let st = sim.status().unwrap();
    assert!(
        st.sources
            .iter()
            .any(|s| s.contains("MirroredSecurityGroup")),
        "{:?}",
        st.sources
    );
    let _a = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&sim.fabric_ns, "10.0.2.6:443").unwrap();
    let ns = sim.pod_ns("web").to_string();
    assert!(tcp_echo(&ns, "10.0.2.5:443").unwrap(), "the mirrored rule");
    assert!(!tcp_echo(&ns, "10.0.2.6:443").unwrap(), "nothing else");

    // Revoked through EC2: EC2 → mirror → API → daemon.
    moto.egress(&sim, "revoke", &sg, rule);
    eventually(15, "the revocation enforced", || {
        !tcp_echo(&ns, "10.0.2.5:443").unwrap()
    });

    // The leader crashes: the other replica takes the lease once it has expired and
    // keeps publishing.
    let (_, i) = replicas.iter().find(|(n, _)| *n == leader).unwrap();
    sim.kill_child(*i);
    moto.egress(&sim, "authorize", &sg, rule);
    eventually(30, "the other replica leading", || {
        holder(&api).is_some_and(|h| h != leader)
    });
    eventually(15, "the new rule enforced after the failover", || {
        tcp_echo(&ns, "10.0.2.5:443").unwrap()
    });
    assert!(
        !tcp_echo(&ns, "10.0.2.6:443").unwrap(),
        "still nothing else"
    );

    // The group deleted from EC2: its object goes, and the pod fails closed.
    moto.aws(&sim, &["delete-security-group", "--group-id", &sg]);
    eventually(15, "the object deleted", || published(&api).is_none());
    sim.wait_status("web fail-closed without its group", |st| {
        st.pods.iter().any(|p| {
            p.name == "web"
                && p.state == enforcer::status::PodState::FailClosed
                && p.error
                    .as_deref()
                    .is_some_and(|e| e.contains("does not exist"))
        })
    });
    assert!(!tcp_echo(&ns, "10.0.2.5:443").unwrap(), "fail-closed");
}
