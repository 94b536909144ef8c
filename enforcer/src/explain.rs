//! `enforcer explain`: the verdict for one packet of one pod, and why — the rule that
//! allows it, or the rules that nearly did and what differs — from the groups as the
//! daemon knows them, beside what the kernel's live maps say (`KernelView`).
//!
//! This walks the pod's rules one by one: it answers a person, once, not a packet.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode};
use crate::model::group::{Direction, GroupCatalog, Peer, Protocol, Rule};
use crate::policy::compile::Peers;

/// The packet asked about, seen from the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub namespace: String,
    pub name: String,
    /// Outbound: the pod sends to `remote`; inbound: `remote` sends to the pod.
    pub direction: Direction,
    pub remote: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// TCP/UDP: the destination port (the remote's outbound, the pod's inbound);
    /// ICMP: the type (code 0).
    pub port: u16,
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

impl Query {
    /// `ADDR[:PORT][/PROTO]`: `10.0.2.5:443`, `[fd00::5]:53/udp`, `10.0.2.5/icmp`,
    /// `10.0.2.5/47`. TCP when no protocol is given; ICMP means an echo request.
    pub fn parse_target(text: &str) -> Result<(IpAddr, u8, u16), String> {
        let (addr_port, proto) = match text.rsplit_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let (addr, port) = if let Some(rest) = addr_port.strip_prefix('[') {
            let (a, p) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: a [ without its ]"))?;
            (a, p.strip_prefix(':'))
        } else {
            match addr_port.split_once(':') {
                // More than one colon: a bare IPv6 address.
                Some((a, p)) if !p.contains(':') => (a, Some(p)),
                _ => (addr_port, None),
            }
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
        let port: Option<u16> = port
            .map(|p| {
                p.parse()
                    .map_err(|_| format!("{text:?}: {p:?} is not a port"))
            })
            .transpose()?;
        let icmp = if addr.is_ipv4() { 1 } else { 58 };
        let proto = match proto.map(str::to_ascii_lowercase).as_deref() {
            None | Some("tcp") => TCP,
            Some("udp") => UDP,
            Some("icmp") | Some("icmpv6") => icmp,
            Some(n) => n
                .parse()
                .map_err(|_| format!("{text:?}: protocol {n:?} (tcp, udp, icmp or a number)"))?,
        };
        let port = match proto {
            TCP | UDP => {
                port.ok_or_else(|| format!("{text:?}: a {} port is needed", name(proto)))?
            }
            1 => 8,    // echo request
            58 => 128, // echo request
            _ => 0,
        };
        Ok((addr, proto, port))
    }
}

fn name(proto: u8) -> String {
    match proto {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => format!("protocol {n}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Drop,
}

/// A rule, as a person finds it in the console: group, direction, its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub group: String,
    /// The rule's place among the group's rules of that direction (from 0), as
    /// `describe-security-groups` lists them.
    pub index: usize,
    pub rule: String,
    /// EC2's `SecurityGroupRuleId`, when the source has it.
    pub rule_id: Option<String>,
    /// The prefix of the rule's peer the address fell in.
    pub peer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearMiss {
    pub group: String,
    pub index: usize,
    pub rule: String,
    pub rule_id: Option<String>,
    /// What differs from the packet: one thing (port, protocol or peer).
    pub differs: String,
}

/// What the kernel's live maps say for the same packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelView {
    pub verdict: Verdict,
    /// The rule its entry names (from the cookie), or always-allowed.
    pub by: Option<String>,
    pub agrees: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub query: Query,
    pub mode: Option<Mode>,
    pub groups: Vec<String>,
    /// Standard mode: the node's groups must allow too.
    pub node_groups: Vec<String>,
    pub verdict: Verdict,
    /// The counter the packet lands in (`allow_policy`, `drop_no_rule`...).
    pub reason: String,
    pub allowed_by: Option<RuleMatch>,
    pub node_allowed_by: Option<RuleMatch>,
    pub near_misses: Vec<NearMiss>,
    /// Where it goes beyond the rules: source NAT, always-allowed, fail-closed.
    pub notes: Vec<String>,
    pub kernel: Option<KernelView>,
}

/// A rule in words: `tcp 443 from 10.0.2.0/24`, `all to sg-1`, `udp 53 to pl-9`.
pub fn rule_text(rule: &Rule, dir: Direction) -> String {
    let port = |p: Option<i32>| p.map_or("any".to_string(), |p| p.to_string());
    let what = match rule.protocol {
        Protocol::All => "all traffic".to_string(),
        Protocol::Tcp | Protocol::Udp => {
            let proto = if rule.protocol == Protocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            match (rule.from_port, rule.to_port) {
                (Some(a), Some(b)) if a == b => format!("{proto} {a}"),
                (a, b) => format!("{proto} {}-{}", port(a), port(b)),
            }
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            let proto = if rule.protocol == Protocol::Icmp {
                "icmp"
            } else {
                "icmpv6"
            };
            let any = |p: Option<i32>| {
                p.filter(|p| *p >= 0)
                    .map_or("any".into(), |p| p.to_string())
            };
            format!(
                "{proto} type {} code {}",
                any(rule.from_port),
                any(rule.to_port)
            )
        }
        Protocol::Other(n) => format!("protocol {n}"),
    };
    let peer = match &rule.peer {
        Peer::Cidr(n) => n.to_string(),
        Peer::PrefixList(p) => p.clone(),
        Peer::Group(g) => g.clone(),
    };
    let dir = if dir == Direction::Inbound {
        "from"
    } else {
        "to"
    };
    format!("{what} {dir} {peer}")
}

/// What of the packet a rule does not cover: protocol, port, then peer. `peers` is what
/// its peer expands to (or why it can't).
fn differences(rule: &Rule, q: &Query, peers: &Result<Vec<IpNet>, String>) -> Vec<String> {
    let mut out = Vec::new();
    let icmp_rule = matches!(rule.protocol, Protocol::Icmp | Protocol::Icmpv6);
    match rule.protocol.number() {
        Some(p) if p != q.proto => out.push(format!("protocol: the rule is {}", name(p))),
        Some(TCP) | Some(UDP) => {
            let (lo, hi) = (rule.from_port.unwrap_or(-1), rule.to_port.unwrap_or(-1));
            let any = lo == -1 && hi == -1;
            if !any && !(lo..=hi).contains(&i32::from(q.port)) {
                out.push(format!("port: the rule covers {lo}-{hi}, not {}", q.port));
            }
        }
        Some(_) if icmp_rule => {
            let ty = rule.from_port.unwrap_or(-1);
            if ty >= 0 && ty != i32::from(q.port) {
                out.push(format!(
                    "ICMP type: the rule covers type {ty}, not {}",
                    q.port
                ));
            }
        }
        _ => {}
    }
    match peers {
        Ok(nets) => {
            if !nets.iter().any(|n| n.contains(&q.remote)) {
                out.push(format!(
                    "peer: {} is not in {}",
                    q.remote,
                    peer_text(rule, nets)
                ));
            }
        }
        Err(why) => out.push(format!("peer: unusable ({why})")),
    }
    out
}

fn peer_text(rule: &Rule, nets: &[IpNet]) -> String {
    match &rule.peer {
        Peer::Cidr(n) => n.to_string(),
        Peer::PrefixList(p) | Peer::Group(p) if nets.is_empty() => format!("{p} (no addresses)"),
        Peer::PrefixList(p) | Peer::Group(p) => {
            let shown: Vec<String> = nets.iter().take(4).map(|n| n.to_string()).collect();
            let more = if nets.len() > 4 { ", ..." } else { "" };
            format!("{p} ({}{more})", shown.join(", "))
        }
    }
}

/// The first rule of `groups` allowing `q`, and every rule off by one thing.
pub fn match_rules(
    groups: &[String],
    catalog: &GroupCatalog,
    peers: &Peers,
    q: &Query,
) -> (Option<RuleMatch>, Vec<NearMiss>) {
    let mut near = Vec::new();
    for g in groups {
        let Some(group) = catalog.groups.get(g) else {
            continue;
        };
        for (index, rule) in group.rules(q.direction).iter().enumerate() {
            let expanded = peers.expand(&rule.peer);
            let other_family = expanded.as_ref().is_ok_and(|nets| {
                !nets.is_empty()
                    && nets
                        .iter()
                        .all(|n| n.addr().is_ipv4() != q.remote.is_ipv4())
            });
            let mut diff = differences(rule, q, &expanded);
            if other_family {
                // A rule for the other address family is never "nearly" this packet's.
                continue;
            }
            let text = rule_text(rule, q.direction);
            let rule_id = catalog
                .rule_ids
                .get(&(g.clone(), q.direction, index))
                .cloned();
            if diff.is_empty() {
                let peer = expanded
                    .ok()
                    .and_then(|n| {
                        n.into_iter()
                            .filter(|n| n.contains(&q.remote))
                            .max_by_key(|n| n.prefix_len())
                    })
                    .map(|n| n.to_string());
                return (
                    Some(RuleMatch {
                        group: g.clone(),
                        index,
                        rule: text,
                        rule_id,
                        peer,
                    }),
                    Vec::new(),
                );
            }
            if diff.len() == 1 {
                near.push(NearMiss {
                    group: g.clone(),
                    index,
                    rule: text,
                    rule_id,
                    differs: diff.remove(0),
                });
            }
        }
    }
    // The closest first: this protocol and peer but another port, then this protocol
    // and port but another peer, then another protocol.
    near.sort_by_key(|n| match n.differs.split(':').next() {
        Some("port") | Some("ICMP type") => 0,
        Some("peer") => 1,
        _ => 2,
    });
    (None, near)
}

/// Why no rule is shown as nearly matching: how many rules there were to consider.
fn no_near_rule(groups: &[String], catalog: &GroupCatalog, dir: Direction) -> String {
    let dirword = if dir == Direction::Inbound {
        "inbound"
    } else {
        "outbound"
    };
    let n: usize = groups
        .iter()
        .filter_map(|g| catalog.groups.get(g))
        .map(|g| g.rules(dir).len())
        .sum();
    if n == 0 {
        format!(
            "no {dirword} rule at all in {}: nothing admits it",
            list(groups)
        )
    } else {
        format!(
            "none of the {n} {dirword} rules of {} is one difference away (protocol, port or peer) from this packet",
            list(groups)
        )
    }
}

/// Where the packet goes beyond the rules (SPEC §5, §6).
pub fn notes(cfg: &Config, mode: Option<Mode>, q: &Query) -> (bool, Vec<String>) {
    let mut notes = Vec::new();
    let always = cfg.always_allowed().iter().any(|n| n.contains(&q.remote));
    if always {
        notes.push(format!(
            "{} is always allowed (node.alwaysAllow and the defaults: VPC resolver, IMDS, time sync); no rule is consulted",
            q.remote
        ));
    }
    let in_vpc = cfg.node.vpc_cidrs.iter().any(|n| n.contains(&q.remote));
    if mode == Some(Mode::Standard)
        && q.direction == Direction::Outbound
        && q.remote.is_ipv4()
        && !in_vpc
        && !always
    {
        let excluded = cfg
            .node
            .exclude_snat_cidrs
            .iter()
            .any(|n| n.contains(&q.remote));
        notes.push(if !cfg.snat_enabled() {
            "off the VPC: not source-NATed (externalSnat, or no primaryInterface/primaryIPv4); it leaves through the trunk".into()
        } else if excluded {
            "off the VPC but in excludeSnatCidrs: leaves through the trunk, not source-NATed".into()
        } else {
            format!(
                "off the VPC: source-NATed to {} and out of the primary ENI (after the pod's and the node's groups allow it)",
                cfg.node.primary_ipv4.map_or("the node".into(), |a| a.to_string())
            )
        });
    }
    (always, notes)
}

/// The explanation from the model: the pod as the daemon last applied it (`pod`), its
/// groups' rules as the sources say now. The kernel's view is added by the caller.
pub fn explain(
    cfg: &Config,
    snap: &crate::sources::files::Snapshot,
    pod: &crate::status::PodStatus,
    q: Query,
) -> Explanation {
    use crate::status::PodState;
    let resolved = crate::policy::resolve::resolve_pods(
        &snap.kube,
        &snap.catalog,
        &cfg.node.node_groups,
        cfg.node.unmatched_pods,
        cfg.node.quotas.groups_per_pod,
    );
    let local = crate::plan::local_members(cfg, &resolved);
    let peers = Peers {
        catalog: &snap.catalog,
        local: &local,
    };
    let (always, mut notes) = notes(cfg, pod.mode, &q);
    let standard = pod.mode == Some(Mode::Standard);
    let mut e = Explanation {
        query: q,
        mode: pod.mode,
        groups: pod.groups.clone(),
        node_groups: if standard {
            cfg.node.node_groups.clone()
        } else {
            Vec::new()
        },
        verdict: Verdict::Drop,
        reason: String::new(),
        allowed_by: None,
        node_allowed_by: None,
        near_misses: Vec::new(),
        notes: Vec::new(),
        kernel: None,
    };
    let q = &e.query;
    let host_local = standard && cfg.node_addresses().iter().any(|n| n.contains(&q.remote));
    let (verdict, reason) = if always {
        (Verdict::Allow, "allow_always")
    } else if pod.state != PodState::Enforced {
        notes.push(match (pod.state, &pod.error) {
            (PodState::NotBranch, _) => {
                "not a branch-ENI pod: podsg does not enforce it (the node's groups on its primary ENI apply)".into()
            }
            (PodState::Pending, _) => format!(
                "the pod is pending ({}): everything but the always-allowed is dropped",
                pod.waiting.as_deref().unwrap_or("waiting")
            ),
            (_, Some(err)) => format!("the pod is fail-closed: {err}"),
            _ => "the pod is fail-closed".into(),
        });
        (Verdict::Drop, "drop_fail_closed")
    } else if host_local {
        notes.push(format!(
            "{} is this node's: standard mode delivers host-local traffic without consulting groups",
            q.remote
        ));
        (Verdict::Allow, "allow_host_local")
    } else {
        let (m, near) = match_rules(&e.groups, &snap.catalog, &peers, q);
        e.near_misses = near;
        match m {
            None => {
                if e.near_misses.is_empty() {
                    notes.push(no_near_rule(&e.groups, &snap.catalog, q.direction));
                }
                (Verdict::Drop, "drop_no_rule")
            }
            Some(m) => {
                e.allowed_by = Some(m);
                if standard {
                    let (n, near) = match_rules(&e.node_groups, &snap.catalog, &peers, q);
                    match n {
                        None => {
                            e.near_misses = near;
                            notes.push("the pod's groups allow it but the node's groups do not (standard mode needs both)".into());
                            (Verdict::Drop, "drop_no_node_rule")
                        }
                        Some(n) => {
                            e.node_allowed_by = Some(n);
                            (Verdict::Allow, "allow_policy")
                        }
                    }
                } else {
                    (Verdict::Allow, "allow_policy")
                }
            }
        }
    };
    e.verdict = verdict;
    e.reason = reason.into();
    e.notes = notes;
    e
}

impl Explanation {
    pub fn render(&self) -> String {
        let q = &self.query;
        let verdict = match self.verdict {
            Verdict::Allow => "ALLOW",
            Verdict::Drop => "DROP",
        };
        let dir = match q.direction {
            Direction::Outbound => format!("to {}", q.remote),
            Direction::Inbound => format!("from {}", q.remote),
        };
        let mut out = format!(
            "{}/{} {dir} {} {}: {verdict} ({})\n",
            q.namespace,
            q.name,
            name(q.proto),
            q.port,
            self.reason
        );
        let mode = self
            .mode
            .map_or("-".to_string(), |m| format!("{m:?}").to_lowercase());
        out.push_str(&format!("  mode {mode}; groups {}\n", list(&self.groups)));
        if !self.node_groups.is_empty() {
            out.push_str(&format!(
                "  node groups (must allow too) {}\n",
                list(&self.node_groups)
            ));
        }
        let dirword = if q.direction == Direction::Inbound {
            "inbound"
        } else {
            "outbound"
        };
        for (what, m) in [
            ("allowed by", &self.allowed_by),
            ("node groups: allowed by", &self.node_allowed_by),
        ] {
            if let Some(m) = m {
                out.push_str(&format!(
                    "  {what} {} {dirword} rule #{}{}: {}{}\n",
                    m.group,
                    m.index,
                    id(&m.rule_id),
                    m.rule,
                    m.peer
                        .as_ref()
                        .map_or(String::new(), |p| format!(" (matched {p})"))
                ));
            }
        }
        if self.verdict == Verdict::Drop && !self.near_misses.is_empty() {
            out.push_str("  nearest rules:\n");
            for n in self.near_misses.iter().take(5) {
                out.push_str(&format!(
                    "    {} {dirword} rule #{}{}: {} — {}\n",
                    n.group,
                    n.index,
                    id(&n.rule_id),
                    n.rule,
                    n.differs
                ));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("  {n}\n"));
        }
        match &self.kernel {
            Some(k) if k.agrees => out.push_str(&format!(
                "  kernel maps agree{}\n",
                k.by.as_ref().map_or(String::new(), |b| format!(" ({b})"))
            )),
            Some(k) => out.push_str(&format!(
                "  !!! THE KERNEL'S MAPS DISAGREE: they {} this packet{} — the maps are not what the daemon wants; check `enforcer status` for write errors and reload\n",
                if k.verdict == Verdict::Allow { "allow" } else { "drop" },
                k.by.as_ref().map_or(String::new(), |b| format!(" ({b})"))
            )),
            None => out.push_str("  kernel maps not consulted (the pod has no entry)\n"),
        }
        out
    }
}

fn id(rule_id: &Option<String>) -> String {
    rule_id
        .as_ref()
        .map_or(String::new(), |i| format!(" ({i})"))
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::group::SecurityGroup;
    use std::collections::BTreeMap;

    fn rule(protocol: Protocol, from: i32, to: i32, cidr: &str) -> Rule {
        Rule {
            protocol,
            from_port: Some(from),
            to_port: Some(to),
            peer: Peer::Cidr(cidr.parse().unwrap()),
            description: None,
        }
    }

    fn q(target: &str) -> Query {
        let (remote, proto, port) = Query::parse_target(target).unwrap();
        Query {
            namespace: "shop".into(),
            name: "web".into(),
            direction: Direction::Outbound,
            remote,
            proto,
            port,
        }
    }

    #[test]
    fn targets_parse_as_written() {
        for (text, want) in [
            ("10.0.2.5:443", Ok(("10.0.2.5", TCP, 443))),
            ("10.0.2.5:53/udp", Ok(("10.0.2.5", UDP, 53))),
            ("[fd00::5]:53/UDP", Ok(("fd00::5", UDP, 53))),
            ("fd00::5/icmp", Ok(("fd00::5", 58, 128))),
            ("10.0.2.5/icmp", Ok(("10.0.2.5", 1, 8))),
            ("10.0.2.5/47", Ok(("10.0.2.5", 47, 0))),
            ("10.0.2.5", Err("a tcp port is needed")),
            ("web:80", Err("is not an IP address")),
            ("10.0.2.5:80/sctpx", Err("protocol \"sctpx\"")),
        ] {
            let got = Query::parse_target(text);
            match (got, want) {
                (Ok((a, p, port)), Ok((wa, wp, wport))) => {
                    assert_eq!((a, p, port), (wa.parse().unwrap(), wp, wport), "{text}")
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: {got:?}, wanted {want:?}"),
            }
        }
    }

    /// One table: each packet, the rule that allows it or the near miss named.
    #[test]
    fn the_allowing_rule_or_what_differs() {
        let mut catalog = GroupCatalog::default();
        catalog.groups.insert(
            "sg-web".into(),
            std::sync::Arc::new(SecurityGroup {
                id: "sg-web".into(),
                name: "web".into(),
                inbound: vec![],
                outbound: vec![
                    rule(Protocol::Tcp, 443, 443, "10.0.2.5/32"),
                    rule(Protocol::Udp, 53, 53, "10.0.2.0/24"),
                ],
                tags: Default::default(),
            }),
        );
        let local = BTreeMap::new();
        let peers = Peers {
            catalog: &catalog,
            local: &local,
        };
        let groups = vec!["sg-web".to_string()];
        for (target, allowed, near) in [
            ("10.0.2.5:443", Some(0), None),
            ("10.0.2.9:53/udp", Some(1), None),
            (
                "10.0.2.5:80",
                None,
                Some("port: the rule covers 443-443, not 80"),
            ),
            (
                "10.0.2.6:443",
                None,
                Some("peer: 10.0.2.6 is not in 10.0.2.5/32"),
            ),
            // Same protocol and peer, another port, comes before another protocol.
            (
                "10.0.2.5:53",
                None,
                Some("port: the rule covers 443-443, not 53"),
            ),
            ("10.0.2.9:53", None, Some("protocol: the rule is udp")),
            ("192.0.2.1:80", None, None),
        ] {
            let (m, n) = match_rules(&groups, &catalog, &peers, &q(target));
            assert_eq!(m.map(|m| m.index), allowed, "{target}");
            assert_eq!(
                n.first().map(|n| n.differs.as_str()),
                near,
                "{target}: {n:?}"
            );
        }
    }

    #[test]
    fn rules_read_as_in_the_console() {
        assert_eq!(
            rule_text(
                &rule(Protocol::Tcp, 443, 443, "10.0.0.0/8"),
                Direction::Inbound
            ),
            "tcp 443 from 10.0.0.0/8"
        );
        assert_eq!(
            rule_text(
                &rule(Protocol::Udp, 1000, 2000, "::/0"),
                Direction::Outbound
            ),
            "udp 1000-2000 to ::/0"
        );
        assert_eq!(
            rule_text(
                &rule(Protocol::Icmp, -1, -1, "0.0.0.0/0"),
                Direction::Outbound
            ),
            "icmp type any code any to 0.0.0.0/0"
        );
    }
}
