//! The EC2 mirror's objects (`podsg.io/v1alpha1`, cluster-scoped): one
//! `MirroredSecurityGroup` per security group (its rules and, when some rule references
//! it, the addresses carrying it) and one `MirroredPrefixList` per prefix list rules
//! name. `enforcer mirror` (one leader per cluster) writes them from EC2; every node's
//! daemon watches them like its other objects, so EC2's Describe calls stay one
//! poller's whatever the node count. The shapes inside are EC2's own
//! (`describe-security-groups` JSON), read by the same parsers as the file source.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::group::{Direction, GroupCatalog};
use crate::sources::ec2::{self, Ec2Permission, Ec2Tag, PrefixListEntry};
use crate::sources::rule_ids::{self, RuleIds};

/// One security group as EC2 describes it.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "podsg.io",
    version = "v1alpha1",
    kind = "MirroredSecurityGroup",
    plural = "mirroredsecuritygroups",
    shortname = "msg",
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.groupName"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MirroredSecurityGroupSpec {
    pub group_id: String,
    #[serde(default)]
    pub group_name: String,
    #[serde(default)]
    pub ip_permissions: Vec<Ec2Permission>,
    #[serde(default)]
    pub ip_permissions_egress: Vec<Ec2Permission>,
    /// The group's EC2 tags (key → value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// SecurityGroupRuleIds by the rule's place: `inbound/N`, `outbound/N` (N as
    /// `enforcer status --rules` numbers the group's rules, one per peer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_ids: BTreeMap<String, String>,
    /// Every private address (IPv4 and IPv6) of an interface carrying the group
    /// anywhere in the VPC; present when some rule references the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_ips: Option<Vec<String>>,
}

/// One managed prefix list's entries.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "podsg.io",
    version = "v1alpha1",
    kind = "MirroredPrefixList",
    plural = "mirroredprefixlists",
    shortname = "mpl"
)]
#[serde(rename_all = "camelCase")]
pub struct MirroredPrefixListSpec {
    pub prefix_list_id: String,
    #[serde(default)]
    pub entries: Vec<PrefixListEntry>,
}

/// The kinds' names, as the daemon's watchers and status call them.
pub const GROUP_KIND: &str = "MirroredSecurityGroup";
pub const PREFIX_LIST_KIND: &str = "MirroredPrefixList";

/// The specs of one poll's objects, by object name: groups, prefix lists.
pub type Specs = (
    BTreeMap<String, MirroredSecurityGroupSpec>,
    BTreeMap<String, MirroredPrefixListSpec>,
);

/// A rule's place as `rule_ids` keys it.
fn place(dir: Direction, index: usize) -> String {
    let d = match dir {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    };
    format!("{d}/{index}")
}

/// The objects that stand for one EC2 poll (`groups`: describe-security-groups JSON;
/// `prefix_lists`: `{"pl-…": get-managed-prefix-list-entries JSON}`; `members`: group
/// id -> addresses; `rule_ids`: DescribeSecurityGroupRules'), keyed by object name
/// (the EC2 id).
pub fn specs_of(
    groups: &str,
    prefix_lists: &str,
    members: &BTreeMap<String, Vec<String>>,
    rule_ids: &RuleIds,
) -> Result<Specs, String> {
    // The ids by place, as the daemons' parse of the same permissions will number them.
    let mut named = GroupCatalog::default();
    if let Ok(g) = ec2::parse_security_groups(groups, "EC2") {
        named.add_groups(g);
    }
    rule_ids::attach(&mut named, rule_ids);
    let mut places: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for ((g, dir, i), id) in named.rule_ids {
        places.entry(g).or_default().insert(place(dir, i), id);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc {
        security_groups: Vec<Group>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Group {
        group_id: String,
        #[serde(default)]
        group_name: Option<String>,
        #[serde(default)]
        ip_permissions: Vec<Ec2Permission>,
        #[serde(default)]
        ip_permissions_egress: Vec<Ec2Permission>,
        #[serde(default)]
        tags: Vec<Ec2Tag>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entries {
        entries: Vec<PrefixListEntry>,
    }
    let doc: Doc = serde_json::from_str(groups).map_err(|e| format!("groups: {e}"))?;
    let mut out = BTreeMap::new();
    for g in doc.security_groups {
        let spec = MirroredSecurityGroupSpec {
            member_ips: members.get(&g.group_id).cloned(),
            group_id: g.group_id.clone(),
            group_name: g.group_name.unwrap_or_default(),
            ip_permissions: g.ip_permissions,
            ip_permissions_egress: g.ip_permissions_egress,
            tags: g.tags.into_iter().map(|t| (t.key, t.value)).collect(),
            rule_ids: places.remove(&g.group_id).unwrap_or_default(),
        };
        out.insert(g.group_id, spec);
    }
    // A referenced group outside the described ones still has members to publish.
    for (g, ips) in members {
        out.entry(g.clone())
            .or_insert_with(|| MirroredSecurityGroupSpec {
                group_id: g.clone(),
                group_name: String::new(),
                ip_permissions: vec![],
                ip_permissions_egress: vec![],
                tags: BTreeMap::new(),
                rule_ids: BTreeMap::new(),
                member_ips: Some(ips.clone()),
            });
    }
    let lists: BTreeMap<String, Entries> =
        serde_json::from_str(prefix_lists).map_err(|e| format!("prefix lists: {e}"))?;
    let lists = lists
        .into_iter()
        .map(|(id, e)| {
            let spec = MirroredPrefixListSpec {
                prefix_list_id: id.clone(),
                entries: e.entries,
            };
            (id, spec)
        })
        .collect();
    Ok((out, lists))
}

/// Adds the mirror's objects (as watched: JSON, keyed by "/name") to `catalog`, through
/// the file source's parsers. An object that can't be read makes its group (or list)
/// unusable, named in the error: the pods using it fail closed.
pub fn add_to_catalog(
    groups: &BTreeMap<String, Value>,
    lists: &BTreeMap<String, Value>,
    catalog: &mut GroupCatalog,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut doc = Vec::new();
    let mut unreadable = ec2::Groups::default();
    let mut ids = Vec::new();
    for (key, obj) in groups {
        let name = key.trim_start_matches('/');
        match MirroredSecurityGroupSpec::deserialize(&obj["spec"]) {
            Ok(s) => {
                for (at, id) in &s.rule_ids {
                    let (dir, n) = at.split_once('/').unwrap_or_default();
                    let dir = match dir {
                        "inbound" => Some(Direction::Inbound),
                        "outbound" => Some(Direction::Outbound),
                        _ => None,
                    };
                    match (dir, n.parse::<usize>()) {
                        (Some(d), Ok(n)) => ids.push(((s.group_id.clone(), d, n), id.clone())),
                        _ => errors.push(format!(
                            "{GROUP_KIND} {name}: rule id key {at:?} is not inbound/N or outbound/N (ignored)"
                        )),
                    }
                }
                doc.push(json!({
                    "GroupId": s.group_id,
                    "GroupName": s.group_name,
                    "IpPermissions": s.ip_permissions,
                    "IpPermissionsEgress": s.ip_permissions_egress,
                    "Tags": s.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
                }));
                for ip in s.member_ips.unwrap_or_default() {
                    match ip.parse() {
                        Ok(a) => catalog.members.entry(s.group_id.clone()).or_default().push(a),
                        Err(_) => errors.push(format!(
                            "{GROUP_KIND} {name}: member address {ip:?} is not an IP address (ignored)"
                        )),
                    }
                }
            }
            Err(e) => {
                let why = format!("{GROUP_KIND} {name} can't be read: {e}");
                errors.push(why.clone());
                unreadable.invalid.push((name.to_string(), why));
            }
        }
    }
    let origin = format!("{GROUP_KIND} objects");
    match ec2::parse_security_groups(&json!({ "SecurityGroups": doc }).to_string(), &origin) {
        Ok(g) => {
            errors.extend(g.unnamed.iter().cloned());
            catalog.add_groups(g);
        }
        Err(e) => errors.push(e.to_string()),
    }
    catalog.add_groups(unreadable);
    // Only ids of rules that exist: a stale id never names another rule.
    for ((g, d, n), id) in ids {
        if catalog
            .groups
            .get(&g)
            .is_some_and(|grp| n < grp.rules(d).len())
        {
            catalog.rule_ids.insert((g, d, n), id);
        }
    }
    let mut pl = serde_json::Map::new();
    for (key, obj) in lists {
        let name = key.trim_start_matches('/');
        match MirroredPrefixListSpec::deserialize(&obj["spec"]) {
            Ok(s) => {
                pl.insert(s.prefix_list_id, json!({ "Entries": s.entries }));
            }
            Err(e) => {
                errors.push(format!("{PREFIX_LIST_KIND} {name} can't be read: {e}"));
                // No entries: rules naming it fail their pods rather than open.
                pl.insert(name.to_string(), json!({ "Entries": "unreadable" }));
            }
        }
    }
    let origin = format!("{PREFIX_LIST_KIND} objects");
    match ec2::parse_prefix_lists(&Value::Object(pl).to_string(), &origin) {
        Ok(l) => catalog.add_prefix_lists(l),
        Err(e) => errors.push(e.to_string()),
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: &str = r#"{"SecurityGroups":[{"GroupId":"sg-a","GroupName":"a",
      "Tags":[{"Key":"kubernetes.io/cluster/prod","Value":"shared"}],
      "IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,
        "UserIdGroupPairs":[{"GroupId":"sg-b"}],"PrefixListIds":[{"PrefixListId":"pl-1"}]}]}]}"#;

    #[test]
    fn a_poll_round_trips_through_the_objects_into_the_catalog() {
        let members = BTreeMap::from([("sg-b".to_string(), vec!["10.0.1.9".to_string()])]);
        let lists = r#"{"pl-1":{"Entries":[{"Cidr":"192.168.0.0/24"}]}}"#;
        let ids = rule_ids::parse(
            r#"{"SecurityGroupRules":[{"SecurityGroupRuleId":"sgr-pl","GroupId":"sg-a","IpProtocol":"tcp","FromPort":80,"ToPort":80,"PrefixListId":"pl-1"}]}"#,
            "t",
        )
        .unwrap();
        let (groups, pls) = specs_of(GROUPS, lists, &members, &ids).unwrap();
        assert_eq!(groups.len(), 2, "sg-b is published for its members");
        let as_objects = |m: BTreeMap<String, Value>| m;
        let g = as_objects(
            groups
                .iter()
                .map(|(k, s)| (format!("/{k}"), json!({ "spec": s })))
                .collect(),
        );
        let l = pls
            .iter()
            .map(|(k, s)| (format!("/{k}"), json!({ "spec": s })))
            .collect();
        let mut catalog = GroupCatalog::default();
        let errors = add_to_catalog(&g, &l, &mut catalog);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(catalog.groups["sg-a"].inbound.len(), 2);
        // The rule id crosses by its place (the prefix-list peer is the first rule).
        assert_eq!(
            catalog.rule_name("sg-a", Direction::Inbound, 0),
            "sg-a inbound rule #0 (sgr-pl)"
        );
        assert_eq!(catalog.rule_ids.len(), 1);
        // Tags cross too (doctor's cluster-tag check reads them).
        assert_eq!(
            catalog.groups["sg-a"].tags["kubernetes.io/cluster/prod"],
            "shared"
        );
        assert_eq!(
            catalog.members["sg-b"],
            vec!["10.0.1.9".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            catalog.prefix_lists["pl-1"],
            vec!["192.168.0.0/24".parse().unwrap()]
        );
    }

    #[test]
    fn an_unreadable_object_makes_its_group_unusable_and_names_it() {
        let g = BTreeMap::from([(
            "/sg-x".to_string(),
            json!({"spec": {"groupId": "sg-x", "ipPermissions": "nope"}}),
        )]);
        let mut catalog = GroupCatalog::default();
        let errors = add_to_catalog(&g, &BTreeMap::new(), &mut catalog);
        assert!(
            errors[0].contains("MirroredSecurityGroup sg-x can't be read"),
            "{errors:?}"
        );
        assert!(!catalog.groups.contains_key("sg-x"));
        assert!(catalog.invalid_groups["sg-x"].contains("can't be read"));
    }
}
