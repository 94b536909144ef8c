//! The shop: three branch pods on a simulated node and the groups the netns tests
//! share.
//!
//! ```text
//!  [pod ns] eth0 ──veth── vlan<hash> [node ns] trunk0 ──veth── fab0 [fabric ns]
//!  web 10.0.1.11 (VLAN 11), client .12 (12), other .13 (13)   VPC hosts 10.0.2.5/.6
//! ```
//! web may reach TCP 443 and UDP 5353 on 10.0.2.5 and ICMP in 10.0.2.0/24; client may
//! send anything; other has no inbound rule.
use std::path::PathBuf;

use crate::enforcer_bin;
use crate::sim::{SimNode, SimPod, pods_yaml, sim_pod, write_config};

pub const REMOTE: &[&str] = &["10.0.2.5", "fd00:10:2::5", "10.0.2.6", "fd00:10:2::6"];

pub fn groups() -> String {
    r#"{"SecurityGroups":[
 {"GroupId":"sg-web","GroupName":"web",
  "IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"UserIdGroupPairs":[{"GroupId":"sg-client"}]},
    {"IpProtocol":"icmp","FromPort":8,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.5/32"}]},
    {"IpProtocol":"icmpv6","FromPort":128,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]}],
  "IpPermissionsEgress":[
    {"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.5/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]},
    {"IpProtocol":"udp","FromPort":5353,"ToPort":5353,"IpRanges":[{"CidrIp":"10.0.2.5/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]},
    {"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmpv6","FromPort":-1,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]}]},
 {"GroupId":"sg-client","GroupName":"client",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":9000,"ToPort":9000,"UserIdGroupPairs":[{"GroupId":"sg-web"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}]}]},
 {"GroupId":"sg-other","GroupName":"other",
  "IpPermissions":[],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}]}]}
]}"#
    .to_string()
}

pub fn policies() -> String {
    ["web", "client", "other"]
        .iter()
        .map(|n| format!(
            "---\napiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata: {{name: {n}, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: {n}}}}}, securityGroups: {{groupIds: [sg-{n}]}}}}\n"
        ))
        .collect()
}

pub struct Node {
    pub sim: SimNode,
    pub web: SimPod,
    pub client: SimPod,
    pub groups_path: PathBuf,
}

pub fn node() -> Node {
    node_with("")
}

/// The node with extra `node:` settings (YAML lines indented by two spaces).
pub fn node_with(extra_node: &str) -> Node {
    node_with_groups(extra_node, &groups())
}

pub fn node_with_groups(extra_node: &str, groups_json: &str) -> Node {
    let web = sim_pod("shop", "web", 1);
    let client = sim_pod("shop", "client", 2);
    let other = sim_pod("shop", "other", 3);
    let pods = vec![web.clone(), client.clone(), other];
    let mut sim = SimNode::build(&pods, REMOTE).expect("build simulated node");
    let k8s = format!(
        "{}{}",
        policies(),
        pods_yaml(&pods, &|p| format!("{{app: {}}}", p.name))
    );
    let cfg = write_config(&sim, groups_json, &k8s, extra_node).unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).expect("daemon");
    let groups_path = sim.workdir.join("groups.json");
    Node {
        sim,
        web,
        client,
        groups_path,
    }
}

pub fn v4(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}
pub fn v6(ip: &str, port: u16) -> String {
    format!("[{ip}]:{port}")
}

/// A pod's counter for `reason` (packets) once it reaches `min`, or its value after 5 s:
/// the daemon refreshes its status file every 2 s.
pub fn counter_reaching(sim: &SimNode, pod: &str, reason: &str, min: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = sim
            .status()
            .ok()
            .and_then(|st| st.pods.into_iter().find(|p| p.name == pod))
            .and_then(|p| p.counters.get(reason).map(|c| c[0]))
            .unwrap_or(0);
        if v >= min || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
