//! `SecurityGroupRuleId`s: EC2's names for single rules (`describe-security-group-rules`
//! output, from a file or the EC2 API), matched to the parsed groups' rules by shape —
//! group, direction, protocol, ports as EC2 means them, peer — so that flow events,
//! `explain` and `status --rules` can name a rule as people find it in the console.
//! A rule id that matches no rule is ignored; a rule with no id is named by its place.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::group::{Direction, GroupCatalog, Peer, Protocol, Rule};
use crate::sources::{SourceError, ec2};

/// Rule ids by [`key`].
pub type RuleIds = BTreeMap<String, String>;

/// A rule's identity as both APIs can spell it: DescribeSecurityGroupRules says -1 for
/// "any port" where DescribeSecurityGroups leaves an all-protocols rule's ports out.
pub fn key(group: &str, egress: bool, r: &Rule) -> String {
    let port = |p: Option<i32>| p.filter(|p| *p != -1 && r.protocol != Protocol::All);
    format!(
        "{group}|{egress}|{:?}|{:?}|{:?}|{:?}",
        r.protocol,
        port(r.from_port),
        port(r.to_port),
        r.peer
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Doc {
    security_group_rules: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ec2Rule {
    security_group_rule_id: String,
    group_id: String,
    #[serde(default)]
    is_egress: bool,
    ip_protocol: String,
    from_port: Option<i32>,
    to_port: Option<i32>,
    cidr_ipv4: Option<String>,
    cidr_ipv6: Option<String>,
    prefix_list_id: Option<String>,
    referenced_group_info: Option<Referenced>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Referenced {
    group_id: Option<String>,
}

/// Parses `describe-security-group-rules` output. Only a document not of that shape is
/// an error; an entry that can't be read is left out (its rule is named by its place).
pub fn parse(json: &str, origin: &str) -> Result<RuleIds, SourceError> {
    let doc: Doc = serde_json::from_str(json).map_err(|e| SourceError::Invalid {
        object: origin.to_string(),
        problem: format!("not DescribeSecurityGroupRules output: {e}"),
    })?;
    let mut out = RuleIds::new();
    for v in doc.security_group_rules {
        let Ok(r) = serde_json::from_value::<Ec2Rule>(v) else {
            continue;
        };
        let peer = if let Some(c) = r.cidr_ipv4.or(r.cidr_ipv6) {
            c.parse().ok().map(Peer::Cidr)
        } else if let Some(pl) = r.prefix_list_id {
            Some(Peer::PrefixList(pl))
        } else {
            r.referenced_group_info
                .and_then(|g| g.group_id)
                .map(Peer::Group)
        };
        let (Some(peer), Ok(protocol)) = (peer, ec2::parse_protocol(&r.ip_protocol)) else {
            continue;
        };
        // As the permission's parse reads ports: absent stays absent.
        let rule = Rule {
            protocol,
            from_port: r.from_port,
            to_port: r.to_port,
            peer,
            description: None,
        };
        out.insert(
            key(&r.group_id, r.is_egress, &rule),
            r.security_group_rule_id,
        );
    }
    Ok(out)
}

/// Names the catalog's rules by the ids that match them.
pub fn attach(catalog: &mut GroupCatalog, ids: &RuleIds) {
    if ids.is_empty() {
        return;
    }
    for (id, g) in &catalog.groups {
        for (dir, egress) in [(Direction::Inbound, false), (Direction::Outbound, true)] {
            for (i, r) in g.rules(dir).iter().enumerate() {
                if let Some(rid) = ids.get(&key(id, egress, r)) {
                    catalog.rule_ids.insert((id.clone(), dir, i), rid.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves rules are matched to their ids however each API spells "any port", the
    /// direction tells two rules of the same shape apart, and unreadable entries are
    /// skipped, not fatal.
    #[test]
    fn ids_match_across_the_two_apis_spellings() {
        let groups = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissionsEgress":[
            {"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]},
            {"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"10.0.0.0/8"}]},
            {"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.5/32"}]},
            {"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-dns"}]}]}]}"#;
        let rules = r#"{"SecurityGroupRules":[
            {"SecurityGroupRuleId":"sgr-all","GroupId":"sg-1","IsEgress":true,"IpProtocol":"-1","FromPort":-1,"ToPort":-1,"CidrIpv4":"0.0.0.0/0"},
            {"SecurityGroupRuleId":"sgr-icmp","GroupId":"sg-1","IsEgress":true,"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"CidrIpv4":"10.0.0.0/8"},
            {"SecurityGroupRuleId":"sgr-https","GroupId":"sg-1","IsEgress":true,"IpProtocol":"tcp","FromPort":443,"ToPort":443,"CidrIpv4":"10.0.2.5/32"},
            {"SecurityGroupRuleId":"sgr-in","GroupId":"sg-1","IsEgress":false,"IpProtocol":"tcp","FromPort":443,"ToPort":443,"CidrIpv4":"10.0.2.5/32"},
            {"SecurityGroupRuleId":"sgr-dns","GroupId":"sg-1","IsEgress":true,"IpProtocol":"udp","FromPort":53,"ToPort":53,"ReferencedGroupInfo":{"GroupId":"sg-dns"}},
            {"SecurityGroupRuleId":"sgr-odd","GroupId":"sg-1"}]}"#;
        let mut catalog = GroupCatalog::default();
        catalog.add_groups(ec2::parse_security_groups(groups, "t").unwrap());
        attach(&mut catalog, &parse(rules, "t").unwrap());
        let ids: Vec<(Direction, usize, &str)> = catalog
            .rule_ids
            .iter()
            .map(|((_, d, i), id)| (*d, *i, id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                (Direction::Outbound, 0, "sgr-all"),
                (Direction::Outbound, 1, "sgr-icmp"),
                (Direction::Outbound, 2, "sgr-https"),
                (Direction::Outbound, 3, "sgr-dns"),
            ]
        );
        assert_eq!(
            catalog.rule_name("sg-1", Direction::Outbound, 2),
            "sg-1 outbound rule #2 (sgr-https)"
        );
        assert!(
            parse(r#"{"SecurityGroups":[]}"#, "f").is_err(),
            "another document"
        );
    }
}
