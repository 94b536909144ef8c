//! The policy model: security groups and their rules, as EC2 defines them (SPEC §3).
use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;

/// Which way a rule applies. Inbound rules match a packet's source, outbound its destination.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Inbound => Direction::Outbound,
            Direction::Outbound => Direction::Inbound,
        }
    }
}

/// `IpProtocol` of a permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `-1`: every protocol, every port.
    All,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Any other protocol number: all of its traffic.
    Other(u8),
}

impl Protocol {
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::All => None,
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
            Protocol::Other(n) => Some(n),
        }
    }
}

/// The remote side of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Cidr(IpNet),
    PrefixList(String),
    Group(String),
}

/// One EC2 security group rule: a permission with exactly one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub protocol: Protocol,
    /// tcp/udp: port range; icmp: type (`from`) and code (`to`), -1 = any. `None` = unset.
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub peer: Peer,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
    /// EC2 tags (key → value): `doctor` looks for `kubernetes.io/cluster/<name>`.
    pub tags: BTreeMap<String, String>,
}

impl SecurityGroup {
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }
}

/// Everything known about groups: the groups, prefix lists and member addresses.
#[derive(Clone, Debug, Default)]
pub struct GroupCatalog {
    /// Shared, so that a catalog copied from a source keeps pointing at the same
    /// groups: an unchanged group is then known unchanged without comparing its rules.
    pub groups: BTreeMap<String, Arc<SecurityGroup>>,
    pub prefix_lists: BTreeMap<String, Vec<IpNet>>,
    /// Private IPs of every interface carrying each group (pods on this node and any other
    /// known members).
    pub members: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// Groups whose description can't be used, and why: pods using them fail closed.
    pub invalid_groups: BTreeMap<String, String>,
    /// Prefix lists whose entries can't be used, and why: rules naming them fail their pods.
    pub invalid_prefix_lists: BTreeMap<String, String>,
    /// EC2's `SecurityGroupRuleId` of (group, direction, place) where the source has
    /// one (the EC2 API does; `describe-security-groups` files do not).
    pub rule_ids: BTreeMap<(String, Direction, usize), String>,
}

impl GroupCatalog {
    /// Adds a DescribeSecurityGroups document's groups, usable or not.
    pub fn add_groups(&mut self, g: crate::sources::ec2::Groups) {
        for group in g.groups {
            self.invalid_groups.remove(&group.id);
            self.groups.insert(group.id.clone(), group);
        }
        for (id, why) in g.invalid {
            self.groups.remove(&id);
            self.invalid_groups.insert(id, why);
        }
    }

    /// Adds everything `other` holds (its groups, prefix lists and their errors win;
    /// members are added).
    pub fn merge(&mut self, other: &GroupCatalog) {
        for (id, g) in &other.groups {
            self.invalid_groups.remove(id);
            self.groups.insert(id.clone(), g.clone());
        }
        for (id, why) in &other.invalid_groups {
            self.groups.remove(id);
            self.invalid_groups.insert(id.clone(), why.clone());
        }
        for (id, nets) in &other.prefix_lists {
            self.invalid_prefix_lists.remove(id);
            self.prefix_lists.insert(id.clone(), nets.clone());
        }
        for (id, why) in &other.invalid_prefix_lists {
            self.prefix_lists.remove(id);
            self.invalid_prefix_lists.insert(id.clone(), why.clone());
        }
        for (g, ips) in &other.members {
            self.members.entry(g.clone()).or_default().extend(ips);
        }
        for (k, id) in &other.rule_ids {
            self.rule_ids.insert(k.clone(), id.clone());
        }
    }

    /// `sg-… outbound rule #N`, with its `SecurityGroupRuleId` when known.
    pub fn rule_name(&self, group: &str, dir: Direction, index: usize) -> String {
        let d = match dir {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        match self.rule_ids.get(&(group.to_string(), dir, index)) {
            Some(id) => format!("{group} {d} rule #{index} ({id})"),
            None => format!("{group} {d} rule #{index}"),
        }
    }

    /// Adds prefix lists, usable or not.
    pub fn add_prefix_lists(&mut self, lists: BTreeMap<String, Result<Vec<IpNet>, String>>) {
        for (id, nets) in lists {
            match nets {
                Ok(n) => {
                    self.invalid_prefix_lists.remove(&id);
                    self.prefix_lists.insert(id, n);
                }
                Err(why) => {
                    self.prefix_lists.remove(&id);
                    self.invalid_prefix_lists.insert(id, why);
                }
            }
        }
    }
}
