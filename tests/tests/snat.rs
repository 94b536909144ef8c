//! Source NAT in BPF, with real traffic: standard-mode pods reach the "internet"
//! namespace (outside every VPC CIDR) as the node's primary address, through the
//! primary ENI, under the node's groups; replies and ICMP errors come back to the right
//! pod; two pods' colliding source ports get distinct NAT ports. External SNAT and
//! excluded CIDRs leave through the trunk, untranslated, under the pod's groups.
use std::collections::BTreeSet;
use std::io::ErrorKind;

use integration_tests::net::*;
use integration_tests::shop::*;
use integration_tests::sim::{INTERNET_IPV4, NODE_IPV4, SimNode, sh};

const SERVER: &str = "203.0.113.10:7000";
/// No server listens here: the internet host answers with ICMP port unreachable.
const CLOSED: &str = "203.0.113.10:7001";

/// The shop's groups and the node's: TCP 7000, UDP 7000-7001 and ICMP out to anywhere.
fn groups() -> String {
    integration_tests::shop::groups().replace(
        "\n]}",
        r#",
 {"GroupId":"sg-node","IpPermissions":[],"IpPermissionsEgress":[
   {"IpProtocol":"tcp","FromPort":7000,"ToPort":7000,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]},
   {"IpProtocol":"udp","FromPort":7000,"ToPort":7001,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]},
   {"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]},
   {"IpProtocol":"-1","IpRanges":[{"CidrIp":"10.0.0.0/16"}]}]}
]}"#,
    )
}

fn standard(extra: &str) -> Node {
    node_with_groups(
        &format!("  enforcingMode: standard\n  nodeGroups: [sg-node]\n{extra}"),
        &groups(),
    )
}

/// Entries of a pinned map (bpftool's count of its JSON dump).
fn entries(sim: &SimNode, map: &str) -> usize {
    let path = sim.map_pin(map).display().to_string();
    let out = sh(&["bpftool", "-j", "map", "dump", "pinned", &path]).unwrap();
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .map_or(0, |a| a.len())
}

fn trunk_frames(sim: &SimNode) -> u64 {
    [11, 12, 13]
        .map(|v| sim.fabric_frames_on_vlan(v))
        .iter()
        .sum()
}

#[test]
fn standard_pods_reach_the_internet_as_the_node() {
    let n = standard("");
    let _srv = whoami_server(&n.sim.internet_ns, SERVER).unwrap();
    let before = trunk_frames(&n.sim);
    for pod in ["client", "web"] {
        // web's own groups allow nothing off-VPC: for NATed traffic the node's apply.
        let ns = n.sim.pod_ns(pod).to_string();
        let seen = tcp_whoami(&ns, SERVER).unwrap();
        assert!(
            seen.as_deref()
                .is_some_and(|s| s.starts_with(&format!("{NODE_IPV4}:"))),
            "{pod}: TCP seen as the node: {seen:?}"
        );
        let seen = udp_whoami(&ns, 0, SERVER).unwrap();
        assert!(
            seen.as_ref()
                .is_ok_and(|s| s.starts_with(&format!("{NODE_IPV4}:"))),
            "{pod}: UDP seen as the node: {seen:?}"
        );
        assert!(n.sim.ping(&ns, INTERNET_IPV4), "{pod}: ICMP echo");
        assert_eq!(
            udp_whoami(&ns, 0, CLOSED).unwrap(),
            Err(ErrorKind::ConnectionRefused),
            "{pod}: the port-unreachable error is translated back to the pod's socket"
        );
        assert!(
            tcp_whoami(&ns, "203.0.113.10:7002").unwrap().is_none(),
            "{pod}: TCP 7002: the node's groups do not allow it"
        );
    }
    assert!(
        counter_reaching(&n.sim, "client", "drop_no_node_rule", 1) >= 1,
        "the refused TCP 7002 is the node's groups' doing"
    );
    assert_eq!(
        trunk_frames(&n.sim),
        before,
        "NATed traffic leaves by the primary ENI, never the trunk"
    );
    assert!(
        entries(&n.sim, "SNAT_REV") >= 6,
        "one mapping per translated flow"
    );
}

#[test]
fn two_hundred_connections_from_two_pods_share_the_node_address() {
    let n = standard("");
    let _srv = whoami_server(&n.sim.internet_ns, SERVER).unwrap();
    // 100 open connections from each pod at once, to the same server address and port.
    let handles: Vec<_> = ["client", "other"]
        .map(|pod| {
            let ns = n.sim.pod_ns(pod).to_string();
            std::thread::spawn(move || {
                integration_tests::sim::in_netns(&ns, || {
                    let addr = SERVER.parse().unwrap();
                    let mut conns: Vec<_> = (0..100)
                        .filter_map(|_| {
                            std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()
                        })
                        .collect();
                    conns.iter_mut().map(ask).collect::<Vec<_>>()
                })
                .unwrap()
            })
        })
        .into_iter()
        .collect();
    let seen: Vec<Option<String>> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(seen.len(), 200, "every connection opened");
    let answered: BTreeSet<String> = seen.iter().flatten().cloned().collect();
    assert_eq!(
        answered.len(),
        200,
        "200 answers from 200 distinct node ports: {seen:?}"
    );
    assert!(
        answered
            .iter()
            .all(|s| s.starts_with(&format!("{NODE_IPV4}:")))
    );

    // The same source port from both pods, inside the NAT range: the first keeps it,
    // the second gets another.
    for port in [61000u16, 61001, 62000] {
        let a = udp_whoami(n.sim.pod_ns("client"), port, SERVER)
            .unwrap()
            .unwrap();
        let b = udp_whoami(n.sim.pod_ns("other"), port, SERVER)
            .unwrap()
            .unwrap();
        assert_eq!(a, format!("{NODE_IPV4}:{port}"), "a free port is kept");
        assert_ne!(a, b, "the second pod's flow gets its own port");
        assert!(b.starts_with(&format!("{NODE_IPV4}:")), "{b}");
    }
}

#[test]
fn external_snat_and_excluded_cidrs_leave_through_the_trunk_untranslated() {
    for extra in [
        "  externalSnat: true\n",
        "  excludeSnatCidrs: [203.0.113.0/24]\n",
    ] {
        let n = standard(extra);
        // What an external NAT device would do: route the pods' addresses back.
        sh(&[
            "ip",
            "-n",
            &n.sim.internet_ns,
            "route",
            "add",
            "10.0.1.0/24",
            "via",
            "203.0.113.1",
        ])
        .unwrap();
        let _srv = whoami_server(&n.sim.internet_ns, SERVER).unwrap();
        let before = n.sim.fabric_frames_on_vlan(12);
        let seen = tcp_whoami(n.sim.pod_ns("client"), SERVER).unwrap();
        assert!(
            seen.as_deref().is_some_and(|s| s.starts_with("10.0.1.12:")),
            "{extra}: seen with the pod's own address: {seen:?}"
        );
        assert!(
            n.sim.fabric_frames_on_vlan(12) > before,
            "{extra}: through the trunk, tagged"
        );
        // Untranslated traffic is the pod's: its groups apply (and the node's).
        assert!(
            tcp_whoami(n.sim.pod_ns("web"), SERVER).unwrap().is_none(),
            "{extra}: web's groups allow nothing off-VPC"
        );
        assert!(
            counter_reaching(&n.sim, "web", "drop_no_rule", 1) >= 1,
            "{extra}: counted on web"
        );
        assert_eq!(
            entries(&n.sim, "SNAT_REV"),
            0,
            "{extra}: nothing translated"
        );
    }
}
