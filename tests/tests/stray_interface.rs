//! A host interface that appears before its pod is known (the CNI is faster than the
//! API, or the pod object is bad) is closed, not routed by the node unfiltered: it gets
//! the pod programs at once (interface event), which, finding no pod, drop everything.
//! Once the pod is known it is enforced as any other.
use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::{REMOTE, groups, policies};
use integration_tests::sim::{SimNode, pods_yaml, sh, sim_pod, write_config};

#[test]
fn an_interface_with_no_known_pod_is_closed_until_the_pod_is_known() {
    let web = sim_pod("shop", "web", 1);
    let late = sim_pod("shop", "client", 2);
    let mut sim = SimNode::build(&[web.clone(), late.clone()], REMOTE).unwrap();
    // As on any node: were the interface unfiltered, the node would route its traffic.
    sh(&[
        "ip",
        "netns",
        "exec",
        &sim.node_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .unwrap();
    let label = |p: &integration_tests::sim::SimPod| format!("{{app: {}}}", p.name);
    let only_web = format!(
        "{}{}",
        policies(),
        pods_yaml(std::slice::from_ref(&web), &label)
    );
    let cfg = write_config(&sim, &groups(), &only_web, "").unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
    let _srv = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();

    // client's interface exists, its pod is not known: nothing passes either way.
    let client = sim.pod_ns("client").to_string();
    assert!(
        !tcp_echo(&client, "10.0.2.5:443").unwrap(),
        "closed, not routed by the node"
    );
    assert!(
        !sim.ping(&sim.node_ns, &late.ipv4),
        "the node can't reach it either"
    );
    let st = sim.status().unwrap();
    assert!(
        st.unattributed.get("drop_unknown_pod").map_or(0, |c| c[0]) >= 1,
        "counted under no pod: {:?}",
        st.unattributed
    );

    // The pod object arrives: enforced as any other (client's group allows it all).
    let both = format!("{}{}", policies(), pods_yaml(&[web, late], &label));
    std::fs::write(sim.workdir.join("k8s.yaml"), both).unwrap();
    sim.reload_daemon().unwrap();
    assert!(
        tcp_echo(&client, "10.0.2.5:443").unwrap(),
        "enforced once known"
    );
}
