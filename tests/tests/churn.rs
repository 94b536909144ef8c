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
    let peers4: LpmTrie<_, PeerKeyV4, PeerClass> = LpmTrie::try_from(m("PEER_V4")).unwrap();
    let peers6: LpmTrie<_, PeerKeyV6, PeerClass> = LpmTrie::try_from(m("PEER_V6")).unwrap();
    let ports: LpmTrie<_, PortKey, PortRule> = LpmTrie::try_from(m("PORT_RULES")).unwrap();
    let vlans: HashMap<_, u32, PodInfo> = HashMap::try_from(m("POD_BY_VLAN")).unwrap();
    let ips: HashMap<_, [u8; 4], u32> = HashMap::try_from(m("POD_BY_IPV4")).unwrap();
    [
        peers4.iter().count(),
        peers6.iter().count(),
        ports.iter().count(),
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
