//! Host-local delivery to the node itself, with real programs: a kubelet-style HTTP
//! probe from the node to pods (python3's server, curl) and a NodeLocal-DNS-style
//! resolver on the node at 169.254.20.10 (dnsmasq, the pods' resolv.conf). Strict mode
//! checks both directions against the pod's groups, with flow state; standard mode
//! bypasses groups for the node's own addresses. Neither ever hairpins through the VPC
//! (the fabric sees no frame of it on the pod's VLAN).
use integration_tests::agents::{curl, dns_server, http_server, resolve};
use integration_tests::shop::*;
use integration_tests::sim::NODE_LOCAL_DNS;

/// web admits the node's probe (TCP 8080 from the node's group, which its primary ENI
/// carries) and may ask the node-local resolver; other admits nothing and may send
/// nothing; client sends anything.
fn groups() -> String {
    r#"{"SecurityGroups":[
 {"GroupId":"sg-web","IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"UserIdGroupPairs":[{"GroupId":"sg-node"}]}],
  "IpPermissionsEgress":[
    {"IpProtocol":"udp","FromPort":53,"ToPort":53,"IpRanges":[{"CidrIp":"169.254.20.10/32"}]}]},
 {"GroupId":"sg-client","IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}]}]},
 {"GroupId":"sg-other","IpPermissions":[],"IpPermissionsEgress":[]},
 {"GroupId":"sg-node","IpPermissions":[],"IpPermissionsEgress":[]}
]}"#
    .to_string()
}

const NAME: &str = "probe.test";
const NAME_ADDR: &str = "10.9.9.9";

/// HTTP servers in web and other, the node-local resolver, and each pod's resolv.conf
/// pointing at it (as NodeLocal DNSCache sets pods up).
fn agents(n: &mut Node) {
    let dir = n.sim.workdir.join("www");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("healthz"), "ok\n").unwrap();
    for pod in ["web", "other"] {
        let ns = n.sim.pod_ns(pod).to_string();
        http_server(&mut n.sim, &ns, 8080, &dir).unwrap();
    }
    let node_ns = n.sim.node_ns.clone();
    dns_server(&mut n.sim, &node_ns, NODE_LOCAL_DNS, NAME, NAME_ADDR).unwrap();
    for pod in ["web", "client", "other"] {
        let ns = n.sim.pod_ns(pod).to_string();
        n.sim
            .set_resolver(&ns, NODE_LOCAL_DNS, "cluster.local")
            .unwrap();
    }
}

/// Frames the fabric saw from the trunk on the VLANs of web, client and other.
fn hairpinned(n: &Node) -> u64 {
    [11, 12, 13]
        .map(|v| n.sim.fabric_frames_on_vlan(v))
        .iter()
        .sum()
}

#[test]
fn strict_pods_see_the_node_through_their_own_groups() {
    let mut n = node_with_groups("  nodeGroups: [sg-node]\n", &groups());
    agents(&mut n);
    let node_ns = n.sim.node_ns.clone();
    let before = hairpinned(&n);
    let other_drops = counter_reaching(&n.sim, "other", "drop_no_rule", 0);

    let (ok, out) = curl(&n.sim, &node_ns, "http://10.0.1.11:8080/healthz");
    assert!(
        ok && out.contains("ok"),
        "probe of web (its group admits the node): {out}"
    );
    let (ok, out) = curl(&n.sim, &node_ns, "http://[fd00:10:1::11]:8080/healthz");
    assert!(ok && out.contains("ok"), "the same over IPv6: {out}");
    let (ok, _) = curl(&n.sim, &node_ns, "http://10.0.1.13:8080/healthz");
    assert!(!ok, "probe of other (no inbound rule) fails");

    assert_eq!(
        resolve(&n.sim, n.sim.pod_ns("web"), NAME).as_deref(),
        Some(NAME_ADDR),
        "web asks the node-local resolver (its group allows UDP 53 to it)"
    );
    assert_eq!(
        resolve(&n.sim, n.sim.pod_ns("client"), NAME).as_deref(),
        Some(NAME_ADDR),
        "client may send anything"
    );
    assert_eq!(
        resolve(&n.sim, n.sim.pod_ns("other"), NAME),
        None,
        "other may send nothing, not even to its own node"
    );
    assert!(
        counter_reaching(&n.sim, "other", "drop_no_rule", other_drops + 2) >= other_drops + 2,
        "the refused probe and lookup are counted on other"
    );
    assert_eq!(
        hairpinned(&n),
        before,
        "delivered on the node: the VPC saw none of it"
    );
}

#[test]
fn standard_pods_reach_and_are_reached_by_the_node_without_rules() {
    let mut n = node_with_groups(
        "  enforcingMode: standard\n  nodeGroups: [sg-node]\n",
        &groups(),
    );
    agents(&mut n);
    let node_ns = n.sim.node_ns.clone();
    let before = hairpinned(&n);
    // other's groups (and the node's) admit and allow nothing: host-local bypasses them.
    let (ok, out) = curl(&n.sim, &node_ns, "http://10.0.1.13:8080/healthz");
    assert!(ok && out.contains("ok"), "probe of other: {out}");
    assert_eq!(
        resolve(&n.sim, n.sim.pod_ns("other"), NAME).as_deref(),
        Some(NAME_ADDR),
        "other asks the node-local resolver"
    );
    assert!(
        counter_reaching(&n.sim, "other", "allow_host_local", 4) >= 4,
        "counted as host-local"
    );
    assert_eq!(hairpinned(&n), before, "the VPC saw none of it");
    // The bypass is for what the node itself sends. A VPC host's packets the node's
    // stack forwards to the pod (here the fabric routes other's address to the node's
    // primary ENI) come through the same interface and meet other's groups: refused.
    let fab = n.sim.fabric_ns.clone();
    integration_tests::sim::sh(&[
        "ip",
        "netns",
        "exec",
        &node_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .unwrap();
    integration_tests::sim::sh(&[
        "ip",
        "-n",
        &fab,
        "route",
        "add",
        "10.0.1.13/32",
        "via",
        "10.0.0.10",
        "dev",
        "fab1",
    ])
    .unwrap();
    let dropped = counter_reaching(&n.sim, "other", "drop_no_rule", 0);
    let (ok, _) = curl(&n.sim, &fab, "http://10.0.1.13:8080/healthz");
    assert!(
        !ok,
        "a VPC host through the node's stack: other's groups refuse it"
    );
    assert!(
        counter_reaching(&n.sim, "other", "drop_no_rule", dropped + 1) > dropped,
        "refused by other's rules, counted on other"
    );
    let (ok, _) = curl(&n.sim, &node_ns, "http://10.0.1.13:8080/healthz");
    assert!(ok, "the node's own probe still bypasses");
    // The bypass is the node's addresses only: a VPC host still meets both groups.
    let _srv = integration_tests::net::echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    assert!(
        !integration_tests::net::tcp_echo(n.sim.pod_ns("other"), "10.0.2.5:443").unwrap(),
        "other → a VPC host: its groups allow nothing"
    );
}
