//! The standard test_run scenario: a client pod (on `lo`, so `pod_egress` sees its
//! frames) and a server pod, each with its own group.
//!
//! - sg-client: inbound TCP 8080 from 10.0.3.0/24 and fd00:10:3::/64; outbound TCP 443
//!   to 10.0.2.0/24 and fd00:10:2::/64, UDP 53 to one host per family, ICMP echo and
//!   ICMPv6 echo to the /24 and /64, GRE (47) to 10.0.2.9.
//! - sg-server: inbound TCP 80 from sg-client's members; outbound everything.
use crate::frames::{Frame, L4};
use crate::harness::*;

pub const GROUPS: &str = r#"{"SecurityGroups":[
 {"GroupId":"sg-client","GroupName":"client",
  "IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.3.0/24"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:3::/64"}]}],
  "IpPermissionsEgress":[
    {"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.0/24"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},
    {"IpProtocol":"udp","FromPort":53,"ToPort":53,"IpRanges":[{"CidrIp":"10.0.2.53/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::53/128"}]},
    {"IpProtocol":"icmp","FromPort":8,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.2.0/24"}]},
    {"IpProtocol":"icmpv6","FromPort":128,"ToPort":-1,"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},
    {"IpProtocol":"47","IpRanges":[{"CidrIp":"10.0.2.9/32"}]}]},
 {"GroupId":"sg-server","GroupName":"server",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"UserIdGroupPairs":[{"GroupId":"sg-client"}]}],
  "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}
]}"#;

pub fn k8s() -> String {
    format!(
        "{}{}{}",
        r#"
kind: SecurityGroupPolicy
metadata: {name: client, namespace: test}
spec: {podSelector: {matchLabels: {app: client}}, securityGroups: {groupIds: [sg-client]}}
---
kind: SecurityGroupPolicy
metadata: {name: server, namespace: test}
spec: {podSelector: {matchLabels: {app: server}}, securityGroups: {groupIds: [sg-server]}}
"#,
        pod_yaml(&CLIENT, "{app: client}"),
        pod_yaml(&SERVER, "{app: server}")
    )
}

pub fn setup() -> Harness {
    let mut h = Harness::new();
    let p = h.apply(GROUPS, &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    h
}

/// From the client pod, as its host veth receives it.
pub fn out(dst: &str, l4: L4) -> Frame {
    let src = if dst.contains(':') {
        CLIENT.ipv6
    } else {
        CLIENT.ipv4
    };
    Frame::new(CLIENT.mac, HOST_MAC, src, dst, l4)
}

/// Toward the client pod, as the trunk receives it.
pub fn into(src: &str, l4: L4) -> Frame {
    let dst = if src.contains(':') {
        CLIENT.ipv6
    } else {
        CLIENT.ipv4
    };
    Frame::new(GW_MAC, CLIENT.mac, src, dst, l4).tagged(CLIENT.vlan)
}
