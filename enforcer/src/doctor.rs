//! `enforcer doctor`: the node's pods and policies checked against AWS's advice for
//! security groups per pod (`shared/seeds`), each finding with its object, severity and
//! the fix. Checks reuse `explain`'s rule matching: "does this pod's group admit DNS to
//! CoreDNS" is a packet asked about, not a second reading of the rules.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode};
use crate::explain::{Query, TCP, UDP, match_rules};
use crate::model::group::{Direction, GroupCatalog};
use crate::policy::compile::Peers;
use crate::policy::resolve::Resolved;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which check: `dns-egress`, `nodelocal-dns`, `probe-ingress`, `grace-period`,
    /// `cluster-tag`, `off-vpc-strict`, `policy-without-eni`, `group-quota`.
    pub check: String,
    pub severity: Severity,
    /// `pod NS/NAME`, `group sg-…`.
    pub object: String,
    pub problem: String,
    pub fix: String,
}

/// Pods labelled as the cluster DNS.
const DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// NodeLocal DNSCache's pods (a host-network DaemonSet).
const NODE_LOCAL_DNS_LABEL: (&str, &str) = ("k8s-app", "node-local-dns");
/// The tag the AWS Load Balancer Controller looks for on exactly one of a pod's groups.
const CLUSTER_TAG_PREFIX: &str = "kubernetes.io/cluster/";
/// A group this full (of a quota) is reported.
const NEAR_QUOTA: f64 = 0.9;

fn finding(check: &str, severity: Severity, object: String, problem: String, fix: &str) -> Finding {
    Finding {
        check: check.into(),
        severity,
        object,
        problem,
        fix: fix.into(),
    }
}

/// A pod with more than one group needs exactly one tagged
/// `kubernetes.io/cluster/<cluster>` (`shared` or `owned`) for the AWS Load Balancer
/// Controller to know which to add its rules to. Without `clusterName` any cluster's tag
/// counts. Groups not known (yet) are not judged.
fn cluster_tag(cfg: &Config, catalog: &GroupCatalog, r: &Resolved) -> Option<Finding> {
    if r.groups.len() < 2 {
        return None;
    }
    let known: Vec<_> = r
        .groups
        .iter()
        .filter_map(|g| catalog.groups.get(g))
        .collect();
    if known.len() < r.groups.len() {
        return None;
    }
    let ours = |k: &str, v: &str| {
        matches!(v, "shared" | "owned")
            && match &cfg.node.cluster_name {
                Some(c) => k.strip_prefix(CLUSTER_TAG_PREFIX) == Some(c.as_str()),
                None => k.starts_with(CLUSTER_TAG_PREFIX),
            }
    };
    let tagged: Vec<&str> = known
        .iter()
        .filter(|g| g.tags.iter().any(|(k, v)| ours(k, v)))
        .map(|g| g.id.as_str())
        .collect();
    let tag = format!(
        "{CLUSTER_TAG_PREFIX}{}",
        cfg.node.cluster_name.as_deref().unwrap_or("<cluster>")
    );
    let problem = match tagged.len() {
        1 => return None,
        0 => format!(
            "it has {} groups ({}) and none is tagged {tag} (shared or owned): the AWS Load Balancer Controller can't tell which one to add its rules to, so load balancer traffic to the pod is not allowed",
            r.groups.len(),
            r.groups.join(", ")
        ),
        _ => format!(
            "{} of its groups are tagged {tag} ({}): the AWS Load Balancer Controller expects exactly one and refuses the pod's targets",
            tagged.len(),
            tagged.join(", ")
        ),
    };
    Some(finding(
        "cluster-tag",
        Severity::Warning,
        format!("pod {}", r.pod.key()),
        problem,
        "tag exactly one of the pod's groups kubernetes.io/cluster/<cluster name> = shared (rules are additive: one is enough)",
    ))
}

/// Every finding for the resolved pods, errors first. `mode_of`: a pod's mode
/// (`NAMESPACE/NAME`), as the daemon enforces it.
pub fn check(
    cfg: &Config,
    catalog: &GroupCatalog,
    resolved: &[Resolved],
    mode_of: &dyn Fn(&str) -> Mode,
) -> Vec<Finding> {
    let local = crate::plan::local_members(cfg, resolved);
    let peers = Peers {
        catalog,
        local: &local,
    };
    // CoreDNS pods of this node with their address and groups (one elsewhere is not
    // known to this node's daemon).
    let dns: Vec<(IpAddr, &Resolved)> = resolved
        .iter()
        .filter(|r| r.pod.labels.get(DNS_LABEL.0).map(String::as_str) == Some(DNS_LABEL.1))
        .filter_map(|r| Some((IpAddr::V4(r.eni.as_ref()?.ipv4?), r)))
        .collect();
    let labelled =
        |r: &Resolved, (k, v): (&str, &str)| r.pod.labels.get(k).map(String::as_str) == Some(v);
    // NodeLocal DNSCache runs on this node: its addresses among the node's own.
    let node_local_dns: Vec<IpAddr> = if resolved.iter().any(|r| labelled(r, NODE_LOCAL_DNS_LABEL))
    {
        cfg.node
            .node_local_addresses
            .iter()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| n.addr())
            .collect()
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for r in resolved {
        let pod = format!("pod {}", r.pod.key());
        if r.eni.is_none() {
            if !r.policies.is_empty() {
                out.push(finding(
                    "policy-without-eni",
                    Severity::Error,
                    pod,
                    format!(
                        "SecurityGroupPolicy {} selects it, but it has no branch ENI (no vpc.amazonaws.com/pod-eni annotation): it runs with the node's groups, not {}",
                        r.policies.join(", "),
                        r.groups.join(", ")
                    ),
                    "the VPC resource controller's webhook did not act on it (failed open, or the pod predates the policy): check the controller, then delete the pod so it is created again",
                ));
            }
            continue;
        }
        if r.error.is_some() {
            continue; // `enforcer status` names it; its rules are not what runs.
        }
        if r.pod.grace_period == Some(0) {
            out.push(finding(
                "grace-period",
                Severity::Warning,
                pod.clone(),
                "terminationGracePeriodSeconds is 0: the VPC CNI does not remove the pod's network from the node, and the branch ENI is not cleaned up".into(),
                "leave it unset (30 s) or set it above 0",
            ));
        }
        if let Some(f) = cluster_tag(cfg, catalog, r) {
            out.push(f);
        }
        let ask = |direction, remote, proto, port| {
            let q = Query {
                namespace: r.pod.namespace.clone(),
                name: r.pod.name.clone(),
                direction,
                remote,
                proto,
                port,
            };
            match_rules(&r.groups, catalog, &peers, &q).0.is_some()
        };
        let own_ip = r.eni.as_ref().and_then(|e| e.ipv4).map(IpAddr::V4);
        for (ip, d) in &dns {
            // Out through the pod's groups, and in through CoreDNS's.
            let admitted = |proto| {
                let q = Query {
                    namespace: d.pod.namespace.clone(),
                    name: d.pod.name.clone(),
                    direction: Direction::Inbound,
                    remote: own_ip.unwrap_or(*ip),
                    proto,
                    port: 53,
                };
                d.eni.is_none() || match_rules(&d.groups, catalog, &peers, &q).0.is_some()
            };
            let missing: Vec<&str> = [(UDP, "UDP"), (TCP, "TCP")]
                .into_iter()
                .filter(|(p, _)| !ask(Direction::Outbound, *ip, *p, 53) || !admitted(*p))
                .map(|(_, n)| n)
                .collect();
            if !missing.is_empty()
                && r.pod.labels.get(DNS_LABEL.0).map(String::as_str) != Some(DNS_LABEL.1)
            {
                out.push(finding(
                    "dns-egress",
                    Severity::Error,
                    pod.clone(),
                    format!(
                        "{} 53 to CoreDNS at {ip} is not allowed both ways (out by its groups {}, in by CoreDNS's {}): name lookups fail",
                        missing.join(" and "),
                        r.groups.join(", "),
                        d.groups.join(", ")
                    ),
                    "add outbound TCP and UDP 53 to the group CoreDNS pods carry (the cluster security group) to one of the pod's groups — and inbound 53 from it on CoreDNS's",
                ));
            }
        }
        let mode = mode_of(&r.pod.key());
        if mode == Mode::Strict
            && let Some(IpAddr::V4(node)) = cfg.node.primary_ipv4
        {
            for p in &r.pod.probe_ports {
                if !ask(Direction::Inbound, IpAddr::V4(node), TCP, p.port) {
                    out.push(finding(
                        "probe-ingress",
                        Severity::Error,
                        pod.clone(),
                        format!(
                            "the {} probe of container {} reaches TCP {} from the node ({node}), which its groups ({}) do not allow in: in strict mode kubelet's probes meet the pod's inbound rules, so the pod is restarted or never ready",
                            p.probe,
                            p.container,
                            p.port,
                            r.groups.join(", ")
                        ),
                        "allow inbound TCP on the probe port from the node's security group, or run the pod in standard mode (host-local traffic skips the groups)",
                    ));
                }
            }
        }
        // CoreDNS itself resolves upstream, not through the cache.
        if mode == Mode::Strict && !labelled(r, DNS_LABEL) {
            for a in &node_local_dns {
                let missing: Vec<&str> = [(UDP, "UDP"), (TCP, "TCP")]
                    .into_iter()
                    .filter(|(p, _)| !ask(Direction::Outbound, *a, *p, 53))
                    .map(|(_, n)| n)
                    .collect();
                if !missing.is_empty() {
                    out.push(finding(
                        "nodelocal-dns",
                        Severity::Error,
                        pod.clone(),
                        format!(
                            "NodeLocal DNSCache runs on this node, and in strict mode the pod's queries to it ({a}) meet its groups ({}), which do not allow {} 53 there: lookups through the cache fail",
                            r.groups.join(", "),
                            missing.join(" and ")
                        ),
                        "allow outbound TCP and UDP 53 to the cache's address in one of the pod's groups, or run the pod in standard mode (host-local traffic skips the groups)",
                    ));
                }
            }
        }
        if mode == Mode::Strict && !cfg.node.vpc_cidrs.is_empty() {
            let link_local: ipnet::IpNet = "169.254.0.0/16".parse().expect("a CIDR");
            let off_vpc: Vec<String> = r
                .groups
                .iter()
                .filter_map(|g| catalog.groups.get(g))
                .flat_map(|g| g.outbound.iter())
                .filter_map(|rule| match &rule.peer {
                    // Link-local (IMDS, NodeLocal DNSCache) never leaves the node.
                    crate::model::group::Peer::Cidr(n)
                        if n.addr().is_ipv4()
                            && !link_local.contains(n)
                            && !cfg.node.vpc_cidrs.iter().any(|v| v.contains(n)) =>
                    {
                        Some(n.to_string())
                    }
                    _ => None,
                })
                .collect();
            if !off_vpc.is_empty() && !cfg.node.external_snat {
                out.push(finding(
                    "off-vpc-strict",
                    Severity::Warning,
                    pod.clone(),
                    format!(
                        "its groups allow IPv4 out of the VPC ({}), but strict mode never source-NATs: that traffic leaves with the pod's private address",
                        off_vpc.join(", ")
                    ),
                    "run the node in a private subnet whose route table has a NAT gateway, or use standard mode (source NAT to the node's address)",
                ));
            }
        }
    }
    let q = &cfg.node.quotas;
    let mut used: Vec<&String> = resolved
        .iter()
        .filter(|r| r.eni.is_some())
        .flat_map(|r| &r.groups)
        .collect();
    used.sort();
    used.dedup();
    for g in used {
        let Some(group) = catalog.groups.get(g) else {
            continue;
        };
        for (dir, rules) in [("inbound", &group.inbound), ("outbound", &group.outbound)] {
            for (family, v4) in [("IPv4", true), ("IPv6", false)] {
                let n = rules
                    .iter()
                    .filter(|r| match &r.peer {
                        crate::model::group::Peer::Cidr(c) => c.addr().is_ipv4() == v4,
                        _ => true,
                    })
                    .count();
                let limit = q.rules_per_group_per_family;
                if limit > 0 && n as f64 >= limit as f64 * NEAR_QUOTA {
                    out.push(finding(
                        "group-quota",
                        if n > limit { Severity::Error } else { Severity::Warning },
                        format!("group {g}"),
                        format!("{n} {dir} {family} rules of {limit} allowed (node.quotas.rulesPerGroupPerFamily)"),
                        "merge rules (ranges, prefix lists) before the next one fails its pods closed",
                    ));
                }
            }
        }
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.object.cmp(&b.object)));
    out
}

pub fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no findings\n".into();
    }
    findings
        .iter()
        .map(|f| {
            let sev = if f.severity == Severity::Error {
                "ERROR"
            } else {
                "warning"
            };
            format!(
                "{sev} [{}] {}: {}\n  fix: {}\n",
                f.check, f.object, f.problem, f.fix
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::objects::KubeObjects;
    use crate::sources::ec2::parse_security_groups;

    /// sg-app: DNS out to sg-dns (UDP only unless `tcp_dns`), HTTP in on 8080 from the
    /// node group; sg-dns: the CoreDNS pod's.
    fn groups(tcp_dns: bool, extra_out: &str) -> String {
        let tcp = if tcp_dns {
            r#",{"IpProtocol":"tcp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-dns"}]}"#
        } else {
            ""
        };
        format!(
            r#"{{"SecurityGroups":[
            {{"GroupId":"sg-app","IpPermissions":[{{"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"UserIdGroupPairs":[{{"GroupId":"sg-node"}}]}}],
             "IpPermissionsEgress":[{{"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{{"GroupId":"sg-dns"}}]}}{tcp}{extra_out}]}},
            {{"GroupId":"sg-dns","IpPermissions":[{{"IpProtocol":"-1","UserIdGroupPairs":[{{"GroupId":"sg-app"}}]}}]}},
            {{"GroupId":"sg-node"}}]}}"#
        )
    }

    fn pod(name: &str, n: u8, labels: &str, spec: &str, eni: bool) -> String {
        let ann = if eni {
            format!(
                "\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"ifAddress\":\"02:00:00:00:00:{n:02x}\",\"privateIp\":\"10.0.1.{n}\",\"vlanId\":{n}}}]'"
            )
        } else {
            String::new()
        };
        format!(
            "---\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: ns\n  labels: {labels}{ann}\nspec: {spec}\n"
        )
    }

    const PROBE: &str = "{containers: [{name: web, ports: [{name: http, containerPort: 8081}], readinessProbe: {httpGet: {port: http}}}]}";

    fn findings(groups_json: &str, app_spec: &str, app_eni: bool, mode: Mode) -> Vec<Finding> {
        findings_with(groups_json, app_spec, app_eni, mode, "")
    }

    fn findings_with(
        groups_json: &str,
        app_spec: &str,
        app_eni: bool,
        mode: Mode,
        extra_yaml: &str,
    ) -> Vec<Finding> {
        let mut catalog = GroupCatalog::default();
        catalog.add_groups(parse_security_groups(groups_json, "t").unwrap());
        let mut kube = KubeObjects::default();
        let yaml = format!(
            "kind: SecurityGroupPolicy\nmetadata: {{name: app, namespace: ns}}\nspec: {{podSelector: {{matchLabels: {{app: a}}}}, securityGroups: {{groupIds: [sg-app]}}}}\n---\nkind: SecurityGroupPolicy\nmetadata: {{name: dns, namespace: ns}}\nspec: {{podSelector: {{matchLabels: {{k8s-app: kube-dns}}}}, securityGroups: {{groupIds: [sg-dns]}}}}\n{}{}",
            pod("app", 11, "{app: a}", app_spec, app_eni),
            pod("coredns", 12, "{k8s-app: kube-dns}", "{}", true),
        ) + extra_yaml;
        kube.add_documents(&yaml, "t").unwrap();
        let cfg: Config = serde_yaml::from_str(
            "node: {trunkInterface: t, gatewayMac: '02:00:00:00:00:01', primaryIPv4: 10.0.0.10, vpcCidrs: [10.0.0.0/16], nodeGroups: [sg-node]}",
        )
        .unwrap();
        let resolved = crate::policy::resolve::resolve_pods(
            &kube,
            &catalog,
            &cfg.node.node_groups,
            cfg.node.unmatched_pods,
            cfg.node.quotas.groups_per_pod,
        );
        check(&cfg, &catalog, &resolved, &|_| mode)
    }

    fn checks(f: &[Finding]) -> Vec<(&str, &str)> {
        f.iter()
            .map(|f| (f.check.as_str(), f.object.as_str()))
            .collect()
    }

    /// The cluster tag: a pod with two groups needs exactly one tagged for the cluster
    /// (`shared` or `owned`); one group needs none; `clusterName` narrows it to ours.
    #[test]
    fn cluster_tag_wants_exactly_one_of_several_groups_tagged() {
        const PROD: &str = "kubernetes.io/cluster/prod";
        const OTHER: &str = "kubernetes.io/cluster/other";
        let tags = |t: Option<(&str, &str)>| {
            t.map_or(String::new(), |(k, v)| {
                format!(r#","Tags":[{{"Key":"{k}","Value":"{v}"}}]"#)
            })
        };
        type Tag<'a> = Option<(&'a str, &'a str)>;
        // (sg-a's tag, sg-b's tag, the pod's groups, clusterName, a finding?, why)
        type Case<'a> = (Tag<'a>, Tag<'a>, &'a str, Option<&'a str>, bool, &'a str);
        let cases: [Case; 7] = [
            (
                None,
                None,
                "[sg-a]",
                None,
                false,
                "one group: the tag is optional",
            ),
            (None, None, "[sg-a, sg-b]", None, true, "none tagged"),
            (
                Some((PROD, "shared")),
                None,
                "[sg-a, sg-b]",
                None,
                false,
                "one tagged",
            ),
            (
                Some((PROD, "owned")),
                Some((PROD, "shared")),
                "[sg-a, sg-b]",
                None,
                true,
                "both tagged",
            ),
            (
                Some((OTHER, "shared")),
                None,
                "[sg-a, sg-b]",
                Some("prod"),
                true,
                "another cluster's",
            ),
            (
                Some((PROD, "shared")),
                None,
                "[sg-a, sg-b]",
                Some("prod"),
                false,
                "ours",
            ),
            (
                Some((PROD, "nope")),
                None,
                "[sg-a, sg-b]",
                None,
                true,
                "neither shared nor owned",
            ),
        ];
        for (a, b, pod_groups, cluster, want, why) in cases {
            let mut catalog = GroupCatalog::default();
            let json = format!(
                r#"{{"SecurityGroups":[{{"GroupId":"sg-a"{}}},{{"GroupId":"sg-b"{}}}]}}"#,
                tags(a),
                tags(b)
            );
            catalog.add_groups(parse_security_groups(&json, "t").unwrap());
            let mut kube = KubeObjects::default();
            kube.add_documents(
                &format!(
                    "kind: SecurityGroupPolicy\nmetadata: {{name: p, namespace: ns}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: {pod_groups}}}}}\n{}",
                    pod("app", 11, "{app: a}", "{}", true)
                ),
                "t",
            )
            .unwrap();
            let mut cfg: Config =
                serde_yaml::from_str("node: {trunkInterface: t, gatewayMac: '02:00:00:00:00:01'}")
                    .unwrap();
            cfg.node.cluster_name = cluster.map(str::to_string);
            let resolved = crate::policy::resolve::resolve_pods(
                &kube,
                &catalog,
                &[],
                cfg.node.unmatched_pods,
                cfg.node.quotas.groups_per_pod,
            );
            let f: Vec<Finding> = check(&cfg, &catalog, &resolved, &|_| Mode::Strict)
                .into_iter()
                .filter(|f| f.check == "cluster-tag")
                .collect();
            assert_eq!(f.len(), usize::from(want), "{why}: {f:#?}");
        }
    }

    /// One line per finding: the set-up that shows it, and the one that does not.
    #[test]
    fn each_finding_appears_when_its_advice_is_broken_and_only_then() {
        let ok = findings(&groups(true, ""), "{}", true, Mode::Strict);
        assert_eq!(checks(&ok), [], "a sound set-up has no findings: {ok:#?}");
        // DNS: UDP allowed to CoreDNS's group, TCP not.
        let f = findings(&groups(false, ""), "{}", true, Mode::Strict);
        assert_eq!(checks(&f), [("dns-egress", "pod ns/app")]);
        assert!(
            f[0].problem.contains("TCP 53") && !f[0].problem.contains("UDP"),
            "{}",
            f[0].problem
        );
        // CoreDNS's group lets only UDP in from the pods.
        let dns_in_udp = groups(true, "").replace(
            r#"{"IpProtocol":"-1","UserIdGroupPairs":[{"GroupId":"sg-app"}]}"#,
            r#"{"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-app"}]}"#,
        );
        let f = findings(&dns_in_udp, "{}", true, Mode::Strict);
        assert_eq!(checks(&f), [("dns-egress", "pod ns/app")]);
        assert!(f[0].problem.starts_with("TCP 53"), "{}", f[0].problem);
        // A probe on a named port (8081) the inbound rule (8080) does not cover; strict
        // mode only (standard mode delivers it without the groups).
        let spec = PROBE;
        assert_eq!(
            checks(&findings(&groups(true, ""), spec, true, Mode::Strict)),
            [("probe-ingress", "pod ns/app")]
        );
        assert_eq!(
            checks(&findings(&groups(true, ""), spec, true, Mode::Standard)),
            []
        );
        let covered = spec.replace("8081", "8080");
        assert_eq!(
            checks(&findings(&groups(true, ""), &covered, true, Mode::Strict)),
            []
        );
        // terminationGracePeriodSeconds: 0.
        assert_eq!(
            checks(&findings(
                &groups(true, ""),
                "{terminationGracePeriodSeconds: 0}",
                true,
                Mode::Strict
            )),
            [("grace-period", "pod ns/app")]
        );
        // Off-VPC egress in strict mode; none in standard mode.
        let internet = r#",{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]}"#;
        assert_eq!(
            checks(&findings(&groups(true, internet), "{}", true, Mode::Strict)),
            [("off-vpc-strict", "pod ns/app")]
        );
        assert_eq!(
            checks(&findings(
                &groups(true, internet),
                "{}",
                true,
                Mode::Standard
            )),
            []
        );
        // A policy selects a pod that got no branch ENI.
        let f = findings(&groups(true, ""), "{}", false, Mode::Strict);
        assert_eq!(checks(&f), [("policy-without-eni", "pod ns/app")]);
        assert_eq!(f[0].severity, Severity::Error);
        // NodeLocal DNSCache on the node: strict-mode pods need 53 out to its address;
        // standard mode delivers it without the groups.
        let cache = pod(
            "node-local-dns-x",
            13,
            "{k8s-app: node-local-dns}",
            "{}",
            false,
        );
        assert_eq!(
            checks(&findings_with(
                &groups(true, ""),
                "{}",
                true,
                Mode::Strict,
                &cache
            )),
            [("nodelocal-dns", "pod ns/app")]
        );
        assert_eq!(
            checks(&findings_with(
                &groups(true, ""),
                "{}",
                true,
                Mode::Standard,
                &cache
            )),
            []
        );
        let to_cache = r#",{"IpProtocol":"-1","IpRanges":[{"CidrIp":"169.254.20.10/32"}]}"#;
        assert_eq!(
            checks(&findings_with(
                &groups(true, to_cache),
                "{}",
                true,
                Mode::Strict,
                &cache
            )),
            []
        );
        // A group at 90 % of the per-family quota (60): 54 outbound IPv4 rules.
        let many: String = (0..52)
            .map(|i| format!(r#",{{"IpProtocol":"tcp","FromPort":{p},"ToPort":{p},"IpRanges":[{{"CidrIp":"10.0.9.0/24"}}]}}"#, p = 1000 + i))
            .collect();
        let f = findings(&groups(true, &many), "{}", true, Mode::Strict);
        assert_eq!(checks(&f), [("group-quota", "group sg-app")], "{f:#?}");
        assert_eq!(f[0].severity, Severity::Warning);
    }
}
