//! Groups -> flat rules: one (direction, prefix, protocol, port range) per EC2 rule and
//! peer prefix, with the quotas enforced as errors, never truncation.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::cookies::CookieTable;
use super::untracked::mark_untracked;
use crate::config::Quotas;
use crate::model::group::{Direction, GroupCatalog, Peer, Protocol, Rule};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("security group {group}: {dir:?} rule {index}: {problem}")]
    BadRule {
        group: String,
        dir: Direction,
        index: usize,
        problem: String,
    },
    #[error(
        "security group {group}: {count} {dir:?} {family} rules exceed the quota of {limit} per group"
    )]
    GroupQuota {
        group: String,
        dir: Direction,
        family: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("{count} rules across the pod's groups exceed the quota of {limit} per pod")]
    PodQuota { count: usize, limit: usize },
}

/// One rule with one concrete peer prefix: what both evaluators work on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlatRule {
    pub dir: Direction,
    pub net: IpNet,
    /// `None`: every protocol and port.
    pub proto: Option<u8>,
    /// Inclusive range of destination ports, or ICMP `type << 8 | code`.
    pub lo: u16,
    pub hi: u16,
    pub cookie: u32,
    /// EC2 untracked flow (SPEC §4): no state, so revoking the rule cuts the flow.
    pub untracked: bool,
}

impl FlatRule {
    /// An inbound TCP rule for one port (tests build policies from these).
    #[cfg(test)]
    pub fn tcp_in(net: &str, port: u16, cookie: u32) -> FlatRule {
        FlatRule {
            dir: Direction::Inbound,
            net: net.parse().expect("a CIDR"),
            proto: Some(6),
            lo: port,
            hi: port,
            cookie,
            untracked: false,
        }
    }
}

fn port_range(rule: &Rule) -> Result<(Option<u8>, u16, u16), String> {
    let (from, to) = (rule.from_port, rule.to_port);
    match rule.protocol {
        Protocol::All => Ok((None, 0, 0xffff)),
        Protocol::Other(n) => Ok((Some(n), 0, 0xffff)),
        Protocol::Tcp | Protocol::Udp => {
            let n = rule.protocol.number();
            match (from, to) {
                (None, None) | (Some(-1), Some(-1)) | (Some(-1), None) => Ok((n, 0, 0xffff)),
                (Some(f), Some(t))
                    if (0..=65535).contains(&f) && (0..=65535).contains(&t) && f <= t =>
                {
                    Ok((n, f as u16, t as u16))
                }
                _ => Err(format!(
                    "port range {}..{} is not within 0..65535 with FromPort <= ToPort",
                    port_text(from),
                    port_text(to)
                )),
            }
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            let n = rule.protocol.number();
            let ty = from.unwrap_or(-1);
            let code = to.unwrap_or(-1);
            match (ty, code) {
                (-1, _) => Ok((n, 0, 0xffff)),
                (t, -1) if (0..=255).contains(&t) => {
                    Ok((n, (t as u16) << 8, ((t as u16) << 8) | 0xff))
                }
                (t, c) if (0..=255).contains(&t) && (0..=255).contains(&c) => {
                    let v = ((t as u16) << 8) | c as u16;
                    Ok((n, v, v))
                }
                _ => Err(format!("ICMP type {ty} / code {code} is not -1 or 0..255")),
            }
        }
    }
}

/// A port as EC2 shows it: the number, or "unset".
fn port_text(p: Option<i32>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "unset".into())
}

/// Where a rule's peer expands from: the catalog, plus this node's pods by the groups
/// they carry (they are members of those groups, SPEC §3).
pub struct Peers<'a> {
    pub catalog: &'a GroupCatalog,
    pub local: &'a BTreeMap<String, Vec<IpAddr>>,
}

impl Peers<'_> {
    /// The prefixes a peer stands for, or why it can't be used.
    pub fn expand(&self, peer: &Peer) -> Result<Vec<IpNet>, String> {
        let catalog = self.catalog;
        Ok(match peer {
            Peer::Cidr(n) => vec![*n],
            Peer::PrefixList(id) => match catalog.prefix_lists.get(id) {
                Some(nets) => nets.clone(),
                None => {
                    return Err(match catalog.invalid_prefix_lists.get(id) {
                        Some(why) => format!("prefix list {id} is unusable: {why}"),
                        None => format!(
                            "prefix list {id} is not known (no entries were provided for it)"
                        ),
                    });
                }
            },
            Peer::Group(g) => {
                let mut v: Vec<IpNet> = catalog
                    .members
                    .get(g)
                    .into_iter()
                    .chain(self.local.get(g))
                    .flatten()
                    .map(|ip| IpNet::from(*ip))
                    .collect();
                v.sort();
                v.dedup();
                v
            }
        })
    }
}

pub(super) fn is_v4(n: &IpNet) -> bool {
    matches!(n, IpNet::V4(_))
}

/// Expands a pod's groups into flat rules, enforcing the quotas (SPEC §3) with an error
/// rather than truncation.
pub fn flatten(
    groups: &[String],
    catalog: &GroupCatalog,
    quotas: &Quotas,
    cookies: &mut CookieTable,
) -> Result<Vec<FlatRule>, CompileError> {
    let local = BTreeMap::new();
    flatten_with(
        groups,
        &Peers {
            catalog,
            local: &local,
        },
        quotas,
        cookies,
    )
}

/// [`flatten`], expanding peers through `peers`.
pub fn flatten_with(
    groups: &[String],
    peers: &Peers,
    quotas: &Quotas,
    cookies: &mut CookieTable,
) -> Result<Vec<FlatRule>, CompileError> {
    let catalog = peers.catalog;
    let mut out = Vec::new();
    let mut total = 0usize;
    for gid in groups {
        let Some(group) = catalog.groups.get(gid) else {
            continue; // the resolver reports unknown groups
        };
        for dir in [Direction::Inbound, Direction::Outbound] {
            let (mut n4, mut n6) = (0usize, 0usize);
            for (index, rule) in group.rules(dir).iter().enumerate() {
                let bad = |problem: String| CompileError::BadRule {
                    group: gid.clone(),
                    dir,
                    index,
                    problem,
                };
                let (proto, lo, hi) = port_range(rule).map_err(bad)?;
                let nets = peers.expand(&rule.peer).map_err(bad)?;
                match &rule.peer {
                    Peer::Group(_) => {
                        n4 += 1;
                        n6 += 1;
                        total += 1;
                    }
                    _ => {
                        for n in &nets {
                            if is_v4(n) { n4 += 1 } else { n6 += 1 }
                        }
                        total += nets.len();
                    }
                }
                let cookie = cookies.cookie(gid, dir, index);
                for net in nets {
                    out.push(FlatRule {
                        dir,
                        net: net.trunc(),
                        proto,
                        lo,
                        hi,
                        cookie,
                        untracked: false,
                    });
                }
            }
            for (family, count) in [("IPv4", n4), ("IPv6", n6)] {
                if count > quotas.rules_per_group_per_family {
                    return Err(CompileError::GroupQuota {
                        group: gid.clone(),
                        dir,
                        family,
                        count,
                        limit: quotas.rules_per_group_per_family,
                    });
                }
            }
        }
    }
    if total > quotas.rules_per_pod {
        return Err(CompileError::PodQuota {
            count: total,
            limit: quotas.rules_per_pod,
        });
    }
    mark_untracked(&mut out);
    out.sort();
    out.dedup();
    Ok(out)
}
