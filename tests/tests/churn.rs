//! Churn: 1000 pod add/delete events (each pod a new name, as a Deployment's pods are)
//! through the daemon's own apply sequence into the real maps leave nothing behind:
//! no map entry, no remembered pod, no counter slot, and no memory growth.
use integration_tests::harness::*;

const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-a","IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"IpRanges":[{"CidrIp":"10.0.3.0/24"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]}]}
]}"#;

/// Pod `name` with the branch ENI of `n`, selected by the policy.
fn pod(name: &str, n: usize) -> String {
    format!(
        "---\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: test\n  labels: {{app: a}}\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"eniId\":\"eni-{n}\",\"ifAddress\":\"02:00:00:02:{:02x}:{:02x}\",\"privateIp\":\"10.0.4.{}\",\"ipv6Addr\":\"fd00:10:4::{:x}\",\"vlanId\":{}}}]'\n",
        n >> 8,
        n & 0xff,
        10 + n % 200,
        0x10 + n,
        100 + n % 200,
    )
}

const POLICY: &str = "kind: SecurityGroupPolicy\nmetadata: {name: a, namespace: test}\nspec: {podSelector: {matchLabels: {app: a}}, securityGroups: {groupIds: [sg-a]}}\n";

/// Entries in the kernel's own tables (not the daemon's idea of them).
fn kernel_entries(h: &Harness) -> [usize; 5] {
    use aya::maps::{HashMap, LpmTrie};
    use enforcer_common::*;
    let m = |name| h.dp.map(name).unwrap();
    // Each rule table is a trie and a hash (datapath::peers): both count.
    let peers4: LpmTrie<_, PeerKeyV4, PeerClass> = LpmTrie::try_from(m("PEER_V4")).unwrap();
    let peers6: LpmTrie<_, PeerKeyV6, PeerClass> = LpmTrie::try_from(m("PEER_V6")).unwrap();
    let ports: LpmTrie<_, PortKey, PortRule> = LpmTrie::try_from(m("PORT_RULES")).unwrap();
    let hashed4: HashMap<_, PeerHashKeyV4, PeerClass> =
        HashMap::try_from(m("PEER_HASH_V4")).unwrap();
    let hashed6: HashMap<_, PeerHashKeyV6, PeerClass> =
        HashMap::try_from(m("PEER_HASH_V6")).unwrap();
    let exact: HashMap<_, PortKey, PortRule> = HashMap::try_from(m("PORT_EXACT")).unwrap();
    let vlans: HashMap<_, u32, PodInfo> = HashMap::try_from(m("POD_BY_VLAN")).unwrap();
    let ips: HashMap<_, [u8; 4], u32> = HashMap::try_from(m("POD_BY_IPV4")).unwrap();
    [
        peers4.iter().count() + hashed4.keys().count(),
        peers6.iter().count() + hashed6.keys().count(),
        ports.iter().count() + exact.keys().count(),
        vlans.keys().count(),
        ips.keys().count(),
    ]
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_pod_events_leave_nothing_behind() {
    let mut h = Harness::new();
    // Two pods that stay, so the tables are never trivially empty.
    let stay = format!("{POLICY}{}{}", pod("stay-0", 900), pod("stay-1", 901));
    h.apply(GROUPS, &stay);
    let baseline = h.dp.current().clone();
    let kernel_baseline = kernel_entries(&h);
    let (mem_modes, mem_claims) = (h.mem.modes.len(), h.mem.claims.len());
    let mut rss_after_warmup = 0;
    for i in 0..500 {
        let name = format!("web-7d9f8-{i:05}");
        let plan = h.apply(GROUPS, &format!("{stay}{}", pod(&name, i % 200)));
        assert_eq!(plan.pods.len(), 3);
        h.apply(GROUPS, &stay);
        if i == 50 {
            rss_after_warmup = rss_kib();
        }
    }
    assert_eq!(
        h.dp.current(),
        &baseline,
        "the daemon's view is what it was"
    );
    assert_eq!(
        kernel_entries(&h),
        kernel_baseline,
        "and so are the kernel's tables"
    );
    assert_eq!(h.dp.flows().unwrap().len(), 0);
    assert_eq!(
        (h.mem.modes.len(), h.mem.claims.len()),
        (mem_modes, mem_claims),
        "nothing remembered of deleted pods"
    );
    let grown = rss_kib().saturating_sub(rss_after_warmup);
    assert!(
        grown < 4096,
        "RSS grew by {grown} KiB over 450 add/delete pairs"
    );
}

/// Files under the daemon's pinned links directory.
fn link_pins(sim: &integration_tests::sim::SimNode) -> usize {
    std::fs::read_dir(sim.bpffs_dir.join("links"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Links in the kernel running one of `progs` (our programs), pinned or not.
fn kernel_links(progs: &std::collections::BTreeSet<u64>) -> usize {
    let out = integration_tests::sim::sh(&["bpftool", "-j", "link", "show"]).unwrap();
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    links
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| progs.contains(&p)))
        .count()
}

/// The programs the pinned links run.
fn our_programs(sim: &integration_tests::sim::SimNode) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(sim.bpffs_dir.join("links"))
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let out = integration_tests::sim::sh(&[
                "bpftool",
                "-j",
                "link",
                "show",
                "pinned",
                &p.display().to_string(),
            ])
            .ok()?;
            serde_json::from_str::<serde_json::Value>(&out).ok()?["prog_id"].as_u64()
        })
        .collect()
}

fn daemon_rss_kib(sim: &integration_tests::sim::SimNode) -> u64 {
    let pid = sim.daemon_pid().unwrap();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The same churn on a simulated node with real interfaces, through the Kubernetes API:
/// a pod deleted (object and interface) and created again (a new interface, a new
/// ifindex) 100 times. Every link and pin made for it goes with it; the kernel holds no
/// link of ours beyond the live pods'; the tables and the daemon's memory are where
/// they were.
#[test]
fn pods_coming_and_going_on_a_node_leave_no_links_or_pins_behind() {
    use integration_tests::kube_fake::FakeApi;
    use integration_tests::net::{echo_server, tcp_echo};
    use integration_tests::shop::REMOTE;
    use integration_tests::sim::{SimNode, pods_yaml, sim_pod, write_config};
    let pods = [sim_pod("test", "stay", 1), sim_pod("test", "churn", 2)];
    let mut sim = SimNode::build(&pods, REMOTE).unwrap();
    let api = FakeApi::start(&sim.node_ns).unwrap();
    let kubeconfig = sim.workdir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let object = |i: usize| {
        let mut v: serde_json::Value =
            serde_yaml::from_str(&pods_yaml(&pods[i..=i], &|_| "{app: a}".into())).unwrap();
        v["apiVersion"] = "v1".into();
        v["spec"] = serde_json::json!({ "nodeName": "node-1", "containers": [] });
        v
    };
    api.put(
        "securitygrouppolicies",
        serde_yaml::from_str(POLICY).unwrap(),
    );
    api.put("pods", object(0));
    api.put("pods", object(1));
    let cfg = write_config(&sim, GROUPS, "", "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "kubernetesApi: {{nodeName: node-1, kubeconfig: {}}}\n",
        kubeconfig.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    sim.start_daemon(&integration_tests::enforcer_bin(), &cfg)
        .unwrap();
    let baseline_pins = link_pins(&sim);
    sim.wait_status("both pods enforced and attached", |st| {
        st.enforced() == 2 && link_pins(&sim) == baseline_pins
    });
    let baseline_pins = link_pins(&sim);
    let progs = our_programs(&sim);
    let baseline_links = kernel_links(&progs);
    let baseline_maps = sim.status().unwrap().maps;
    assert!(
        baseline_links >= baseline_pins && baseline_pins >= 4,
        "{baseline_pins} pins"
    );
    let mut rss_after_warmup = 0;
    for i in 0..100 {
        api.delete("pods", "test", "churn");
        sim.disconnect_pod("churn").unwrap();
        sim.wait_status("churn gone, its links and pins too", |st| {
            st.pods.len() == 1 && link_pins(&sim) < baseline_pins
        });
        sim.reconnect_pod("churn").unwrap();
        api.put("pods", object(1));
        sim.wait_status("churn back, attached", |st| {
            st.enforced() == 2 && link_pins(&sim) == baseline_pins
        });
        if i == 10 {
            rss_after_warmup = daemon_rss_kib(&sim);
        }
    }
    assert_eq!(link_pins(&sim), baseline_pins, "no pin left behind");
    assert_eq!(kernel_links(&progs), baseline_links, "no link left behind");
    assert_eq!(
        sim.status().unwrap().maps,
        baseline_maps,
        "the tables as they were"
    );
    let grown = daemon_rss_kib(&sim).saturating_sub(rss_after_warmup);
    assert!(
        grown < 4096,
        "daemon RSS grew by {grown} KiB over 90 deletions and creations"
    );
    // The last incarnation is enforced: its group's rule passes, nothing else.
    let _a = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let _b = echo_server(&sim.fabric_ns, "10.0.2.6:80").unwrap();
    let ns = sim.pod_ns("churn").to_string();
    assert!(tcp_echo(&ns, "10.0.2.5:443").unwrap());
    assert!(!tcp_echo(&ns, "10.0.2.6:80").unwrap());
}
