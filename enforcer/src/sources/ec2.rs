//! EC2 shapes: `DescribeSecurityGroups` and `GetManagedPrefixListEntries` output.
use std::collections::BTreeMap;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::group::{Peer, Protocol, Rule, SecurityGroup};
use crate::sources::SourceError;

/// The document's shape only: each group is read on its own, so one bad group fails
/// only the pods that use it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeSecurityGroups {
    security_groups: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ec2Group {
    group_id: String,
    #[serde(default)]
    group_name: String,
    #[serde(default)]
    ip_permissions: Vec<Ec2Permission>,
    #[serde(default)]
    ip_permissions_egress: Vec<Ec2Permission>,
    #[serde(default)]
    tags: Vec<Ec2Tag>,
}

/// One of a group's tags, as `describe-security-groups` prints it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Ec2Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Ec2Permission {
    pub ip_protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i32>,
    #[serde(default)]
    pub ip_ranges: Vec<IpRange>,
    #[serde(default)]
    pub ipv6_ranges: Vec<Ipv6Range>,
    #[serde(default)]
    pub prefix_list_ids: Vec<PrefixListId>,
    #[serde(default)]
    pub user_id_group_pairs: Vec<GroupPair>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct IpRange {
    pub cidr_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Range {
    pub cidr_ipv6: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListId {
    pub prefix_list_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct GroupPair {
    pub group_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PrefixListEntries {
    entries: Vec<PrefixListEntry>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListEntry {
    pub cidr: String,
}

pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "-1" | "all" => Protocol::All,
        "tcp" | "6" => Protocol::Tcp,
        "udp" | "17" => Protocol::Udp,
        "icmp" | "1" => Protocol::Icmp,
        "icmpv6" | "58" => Protocol::Icmpv6,
        other => match other.parse::<u8>() {
            Ok(n) => Protocol::Other(n),
            Err(_) => {
                return Err(format!(
                    "IpProtocol {s:?} is not tcp, udp, icmp, icmpv6, -1 or a protocol number 0-255"
                ));
            }
        },
    })
}

fn cidr(s: &str, what: &str) -> Result<IpNet, String> {
    // EC2 normalises host bits away; accept "10.0.0.5/24" the same way.
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| format!("{what} {s:?} is not a CIDR: {e}"))
}

fn rules(perms: Vec<Ec2Permission>, group: &str, dir: &str) -> Result<Vec<Rule>, SourceError> {
    let mut out = Vec::new();
    for (i, p) in perms.into_iter().enumerate() {
        let bad = |msg: String| SourceError::Invalid {
            object: format!("security group {group}"),
            problem: format!("{dir} permission {i}: {msg}"),
        };
        let protocol = parse_protocol(&p.ip_protocol).map_err(bad)?;
        let mk = |peer, description| Rule {
            protocol,
            from_port: p.from_port,
            to_port: p.to_port,
            peer,
            description,
        };
        for r in p.ip_ranges {
            let net = cidr(&r.cidr_ip, "CidrIp").map_err(bad)?;
            if !matches!(net, IpNet::V4(_)) {
                return Err(bad(format!("CidrIp {:?} is not IPv4", r.cidr_ip)));
            }
            out.push(mk(Peer::Cidr(net), r.description));
        }
        for r in p.ipv6_ranges {
            let net = cidr(&r.cidr_ipv6, "CidrIpv6").map_err(bad)?;
            if !matches!(net, IpNet::V6(_)) {
                return Err(bad(format!("CidrIpv6 {:?} is not IPv6", r.cidr_ipv6)));
            }
            out.push(mk(Peer::Cidr(net), r.description));
        }
        for r in p.prefix_list_ids {
            out.push(mk(Peer::PrefixList(r.prefix_list_id), r.description));
        }
        for r in p.user_id_group_pairs {
            out.push(mk(Peer::Group(r.group_id), r.description));
        }
    }
    Ok(out)
}

/// What a DescribeSecurityGroups document holds: the usable groups, and per group id
/// why a group is unusable (pods that use it fail closed with that error).
#[derive(Clone, Debug, Default)]
pub struct Groups {
    /// Shared: a catalog built from this parse points at the same groups.
    pub groups: Vec<std::sync::Arc<SecurityGroup>>,
    pub invalid: Vec<(String, String)>,
    /// Entries that can't be named (no GroupId): reported, and otherwise ignored.
    pub unnamed: Vec<String>,
}

/// Parses `aws ec2 describe-security-groups` JSON. Only a document that is not JSON,
/// or not of that shape, is an error as a whole.
pub fn parse_security_groups(json: &str, origin: &str) -> Result<Groups, SourceError> {
    let doc: DescribeSecurityGroups =
        serde_json::from_str(json).map_err(|e| SourceError::Invalid {
            object: origin.to_string(),
            problem: format!("not DescribeSecurityGroups output: {e}"),
        })?;
    let mut out = Groups::default();
    for (i, value) in doc.security_groups.into_iter().enumerate() {
        let id = value
            .get("GroupId")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let group = serde_json::from_value::<Ec2Group>(value)
            .map_err(|e| SourceError::Invalid {
                object: format!("security group {}", id.as_deref().unwrap_or("(no GroupId)")),
                problem: format!("not a DescribeSecurityGroups entry: {e}"),
            })
            .and_then(|g| {
                Ok(SecurityGroup {
                    inbound: rules(g.ip_permissions, &g.group_id, "inbound")?,
                    outbound: rules(g.ip_permissions_egress, &g.group_id, "outbound")?,
                    name: g.group_name,
                    id: g.group_id,
                    tags: g.tags.into_iter().map(|t| (t.key, t.value)).collect(),
                })
            });
        match (group, id) {
            (Ok(g), _) => out.groups.push(std::sync::Arc::new(g)),
            (Err(e), Some(id)) => out.invalid.push((id, e.to_string())),
            (Err(e), None) => out
                .unnamed
                .push(format!("{origin} SecurityGroups[{i}]: {e}")),
        }
    }
    Ok(out)
}

/// Parses a map from prefix-list id to `get-managed-prefix-list-entries` output: each
/// list's entries, or why the list is unusable (rules naming it then fail their pods).
pub fn parse_prefix_lists(
    json: &str,
    origin: &str,
) -> Result<BTreeMap<String, Result<Vec<IpNet>, String>>, SourceError> {
    let doc: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| SourceError::Invalid {
            object: origin.to_string(),
            problem: format!("expected {{\"pl-…\": <GetManagedPrefixListEntries output>}}: {e}"),
        })?;
    Ok(doc
        .into_iter()
        .map(|(id, v)| {
            let nets = serde_json::from_value::<PrefixListEntries>(v)
                .map_err(|e| format!("not GetManagedPrefixListEntries output: {e}"))
                .and_then(|e| {
                    e.entries
                        .iter()
                        .map(|x| cidr(&x.cidr, "Cidr"))
                        .collect::<Result<Vec<_>, _>>()
                });
            (id, nets)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_describe_security_groups() {
        let g = parse_security_groups(
            r#"{"SecurityGroups":[{"GroupId":"sg-1","GroupName":"web",
              "IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,
                 "IpRanges":[{"CidrIp":"10.0.0.0/8"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}],
                 "UserIdGroupPairs":[{"GroupId":"sg-2","UserId":"1"}],
                 "PrefixListIds":[{"PrefixListId":"pl-1"}]}],
              "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#,
            "t",
        )
        .unwrap()
        .groups;
        assert_eq!(g[0].inbound.len(), 4);
        assert_eq!(g[0].inbound[2].peer, Peer::PrefixList("pl-1".into()));
        assert_eq!(g[0].inbound[3].peer, Peer::Group("sg-2".into()));
        assert_eq!(g[0].outbound[0].protocol, Protocol::All);
    }

    #[test]
    fn a_bad_group_is_named_and_the_others_stay_usable() {
        let g = parse_security_groups(
            r#"{"SecurityGroups":[{"GroupId":"sg-9","IpPermissions":[
               {"IpProtocol":"tcp","FromPort":1,"ToPort":2,"IpRanges":[{"CidrIp":"10.0.0.300/8"}]}]},
               {"GroupId":"sg-8","IpPermissions":[{"IpProtocol":"foo"}]},
               {"GroupId":"sg-7","IpPermissions":"not a list"},
               {"GroupName":"no id"},
               {"GroupId":"sg-ok"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(g.groups.len(), 1, "{g:?}");
        assert_eq!(g.groups[0].id, "sg-ok");
        let why = |id: &str| g.invalid.iter().find(|(i, _)| i == id).unwrap().1.clone();
        assert!(
            why("sg-9").contains("inbound permission 0"),
            "{}",
            why("sg-9")
        );
        assert!(
            why("sg-8").contains("IpProtocol \"foo\""),
            "{}",
            why("sg-8")
        );
        assert!(why("sg-7").contains("not a DescribeSecurityGroups entry"));
        assert_eq!(g.unnamed.len(), 1);
        assert!(
            parse_security_groups("{", "t").is_err(),
            "not JSON: the file fails"
        );
    }
}
