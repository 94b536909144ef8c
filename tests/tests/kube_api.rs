//! The Kubernetes API as the source of pods and policies, with real traffic on a
//! simulated node: the daemon's kube-runtime watchers against a list/watch server
//! (`kube_fake`, in the node's namespace). Objects created, changed and deleted through
//! the API are enforced; only this node's pods are watched; a watch that ends in
//! 410 Gone relists, and what the relist lacks is gone.

use integration_tests::enforcer_bin;
use integration_tests::kube_fake::FakeApi;
use integration_tests::net::*;
use integration_tests::shop::{REMOTE, counter_reaching, groups, policies};
use integration_tests::sim::{SimNode, SimPod, pods_yaml, sim_pod, write_config};
use serde_json::Value;

const NODE: &str = "node-1";

/// The YAML documents of `text` as JSON objects.
fn objects(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// A pod object scheduled to `node`.
fn pod_on(p: &SimPod, node: &str) -> Value {
    let mut v = objects(&pods_yaml(std::slice::from_ref(p), &|p| {
        format!("{{app: {}}}", p.name)
    }))
    .remove(0);
    v["apiVersion"] = "v1".into();
    v["spec"] = serde_json::json!({ "nodeName": node, "containers": [] });
    v
}

fn state_of(st: &enforcer::status::NodeStatus, pod: &str) -> Option<enforcer::status::PodState> {
    st.pods.iter().find(|p| p.name == pod).map(|p| p.state)
}

#[test]
fn pods_and_policies_from_the_api_are_enforced_and_followed() {
    let pods: Vec<SimPod> = ["web", "client", "other"]
        .iter()
        .enumerate()
        .map(|(i, n)| sim_pod("shop", n, i as u16 + 1))
        .collect();
    let mut sim = SimNode::build(&pods, REMOTE).expect("build simulated node");
    let api = FakeApi::start(&sim.node_ns).unwrap();
    let kubeconfig = sim.workdir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    for sgp in objects(&policies()) {
        api.put("securitygrouppolicies", sgp);
    }
    for p in &pods {
        api.put("pods", pod_on(p, NODE));
    }
    // A pod scheduled elsewhere: not this node's business.
    api.put("pods", pod_on(&sim_pod("shop", "elsewhere", 9), "node-2"));
    let cfg = write_config(&sim, &groups(), "", "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "kubernetesApi: {{nodeName: {NODE}, kubeconfig: {}}}\n",
        kubeconfig.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).expect("daemon");

    sim.wait_status("the three pods of this node enforced", |st| {
        st.pods.len() == 3 && st.enforced() == 3
    });
    let st = sim.status().unwrap();
    assert!(
        st.sources.iter().any(|s| s.contains("3 Pods")),
        "{:?}",
        st.sources
    );
    let _srv = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let web = sim.pod_ns("web").to_string();
    assert!(
        tcp_echo(&web, "10.0.2.5:443").unwrap(),
        "web's group allows it"
    );
    assert!(!tcp_echo(&web, "10.0.2.6:443").unwrap(), "and nothing else");

    // The policy deleted through the API: web is no longer selected, fails closed.
    api.delete("securitygrouppolicies", "shop", "web");
    sim.wait_status("web fail-closed without its policy", |st| {
        state_of(st, "web") != Some(enforcer::status::PodState::Enforced)
    });
    assert!(
        !tcp_echo(&web, "10.0.2.5:443").unwrap(),
        "web: nothing passes"
    );
    assert!(counter_reaching(&sim, "web", "drop_fail_closed", 1) >= 1);

    // Back through the API.
    api.put(
        "securitygrouppolicies",
        objects(&policies())
            .into_iter()
            .find(|p| p["metadata"]["name"] == "web")
            .unwrap(),
    );
    sim.wait_status("web enforced again", |st| {
        state_of(st, "web") == Some(enforcer::status::PodState::Enforced)
    });
    assert!(tcp_echo(&web, "10.0.2.5:443").unwrap(), "allowed again");

    // A deletion the watch never sees, then every watch ends with 410 Gone: the
    // relist is a full resync, and the pod it lacks is gone.
    api.delete_silently("pods", "shop", "other");
    api.expire_watches();
    sim.wait_status("the relist dropped the pod it lacks", |st| {
        state_of(st, "other").is_none() && st.pods.len() == 2
    });
}
