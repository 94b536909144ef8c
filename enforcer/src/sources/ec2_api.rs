//! EC2 as a source (aws-sdk-ec2): the security groups (`DescribeSecurityGroups`), the
//! members of every group a rule references (`DescribeNetworkInterfaces` filtered by
//! group id: every private IPv4 and IPv6 address carrying it anywhere in the VPC) and
//! the prefix lists rules name (`GetManagedPrefixListEntries`), polled every
//! `pollSeconds` (plus up to `jitterSeconds`, so a fleet does not poll in step). The
//! answers are turned into the documents the file source reads (the same parsers,
//! per-group errors). Credentials, region and endpoint come from the SDK's standard
//! chain (`AWS_REGION`, `AWS_ENDPOINT_URL_EC2`, …) unless the config names them.
//!
//! A poll that fails (throttled, unreachable, refused) keeps the last good answer in
//! use and is reported in status; nothing from EC2 is applied before the first poll
//! succeeded, so a daemon (re)starting while EC2 is away keeps what the pinned maps
//! enforce. Throttling (`RequestLimitExceeded`) doubles the interval, up to 16 times.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, IpPermission};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::model::group::GroupCatalog;
use crate::sources::ec2;
use crate::sources::rule_ids::{self, RuleIds};

/// `ec2Api` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ec2ApiConfig {
    /// Otherwise the SDK's (`AWS_REGION`, the profile, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// Otherwise the SDK's (`AWS_ENDPOINT_URL_EC2`, or EC2's own).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Only the groups of this VPC (a filter on every Describe call).
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    #[serde(default = "default_jitter")]
    pub jitter_seconds: u64,
}

fn default_poll() -> u64 {
    30
}
fn default_jitter() -> u64 {
    5
}

/// One successful poll, as the file source's documents.
#[derive(Clone, Default, PartialEq)]
pub struct Answer {
    /// `describe-security-groups` output.
    pub groups: String,
    /// `{"pl-…": get-managed-prefix-list-entries output}`.
    pub prefix_lists: String,
    /// group id -> member addresses.
    pub members: BTreeMap<String, BTreeSet<IpAddr>>,
    /// `rule_key` -> `SecurityGroupRuleId` (DescribeSecurityGroupRules).
    pub rule_ids: RuleIds,
}

#[derive(Default)]
struct State {
    last_good: Option<Answer>,
    /// `last_good` parsed (once per new answer, not per apply): its groups, prefix
    /// lists and members, and what could not be used.
    parsed: Option<(GroupCatalog, Vec<String>)>,
    error: Option<String>,
    polls: u64,
    /// When a poll last succeeded.
    last_ok: Option<std::time::Instant>,
    /// The last error, even once recovered, and when.
    last_error: Option<(String, std::time::Instant)>,
}

/// An answer as the catalog takes it, parsed like the files (per-group errors).
fn parse(a: &Answer) -> (GroupCatalog, Vec<String>) {
    let mut catalog = GroupCatalog::default();
    let mut errors = Vec::new();
    match ec2::parse_security_groups(&a.groups, "EC2 DescribeSecurityGroups") {
        Ok(g) => {
            errors.extend(g.unnamed.iter().cloned());
            catalog.add_groups(g);
        }
        Err(e) => errors.push(e.to_string()),
    }
    match ec2::parse_prefix_lists(&a.prefix_lists, "EC2 GetManagedPrefixListEntries") {
        Ok(l) => catalog.add_prefix_lists(l),
        Err(e) => errors.push(e.to_string()),
    }
    for (g, ips) in &a.members {
        catalog.members.entry(g.clone()).or_default().extend(ips);
    }
    rule_ids::attach(&mut catalog, &a.rule_ids);
    (catalog, errors)
}

pub struct Ec2ApiSource {
    state: Arc<Mutex<State>>,
}

/// What the source holds now (its groups, prefix lists and members are added to the
/// caller's catalog).
pub struct Ec2Snapshot {
    pub ready: bool,
    pub errors: Vec<String>,
    pub summary: String,
    pub health: crate::status::SourceHealth,
}

impl Ec2ApiSource {
    pub async fn start(cfg: &Ec2ApiConfig, changed: UnboundedSender<()>) -> Ec2ApiSource {
        let client = client(cfg).await;
        let state: Arc<Mutex<State>> = Arc::default();
        let (st, cfg) = (state.clone(), cfg.clone());
        tokio::spawn(async move {
            let mut backoff = 1u32;
            loop {
                let result = poll(&client, cfg.vpc_id.as_deref()).await;
                let wake = {
                    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                    s.polls += 1;
                    match result {
                        Ok(a) => {
                            backoff = 1;
                            s.last_ok = Some(std::time::Instant::now());
                            let new = s.last_good.as_ref() != Some(&a) || s.error.is_some();
                            if s.last_good.as_ref() != Some(&a) {
                                s.parsed = Some(parse(&a));
                            }
                            s.last_good = Some(a);
                            s.error = None;
                            new
                        }
                        Err(e) => {
                            if throttled(&e) {
                                backoff = (backoff * 2).min(16);
                            }
                            log::warn!("EC2: {e}");
                            let new = s.error.as_deref() != Some(e.as_str());
                            s.last_error = Some((e.clone(), std::time::Instant::now()));
                            s.error = Some(e);
                            new
                        }
                    }
                };
                if wake {
                    let _ = changed.send(());
                }
                tokio::time::sleep(cfg.wait(backoff)).await;
            }
        });
        Ec2ApiSource { state }
    }

    /// Adds the last good answer to `catalog`, parsed like the files (per-group errors).
    pub fn snapshot(&self, catalog: &mut GroupCatalog) -> Ec2Snapshot {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut errors = Vec::new();
        if let Some(e) = &s.error {
            errors.push(format!(
                "EC2: {e} ({})",
                if s.last_good.is_some() {
                    "the last good answer stays in use"
                } else {
                    "no answer yet: nothing from EC2 is applied"
                }
            ));
        }
        let since = s.last_ok.map_or("never".to_string(), |t| {
            format!("{} s ago", t.elapsed().as_secs())
        });
        let last_error = s.last_error.as_ref().map_or(String::new(), |(e, t)| {
            format!("; last error {} s ago: {e}", t.elapsed().as_secs())
        });
        let mut summary = format!("EC2: {} polls, last success {since}{last_error}", s.polls);
        if let Some((parsed, problems)) = &s.parsed {
            summary = format!(
                "EC2: {} groups, {} referenced groups' members ({} polls, last success {since}{last_error})",
                parsed.groups.len() + parsed.invalid_groups.len(),
                parsed.members.len(),
                s.polls
            );
            errors.extend(problems.iter().cloned());
            catalog.merge(parsed);
        }
        Ec2Snapshot {
            ready: s.last_good.is_some(),
            errors,
            summary,
            health: crate::status::SourceHealth {
                source: "ec2".into(),
                last_success: s
                    .last_ok
                    .map(|t| crate::status::SourceHealth::unix_time(t.elapsed())),
                failing: s.error.is_some(),
            },
        }
    }
}

impl Ec2ApiConfig {
    /// The wait before the next poll: the interval (times `backoff` while throttled)
    /// plus a random share of the jitter (RandomState is seeded per process), so a
    /// fleet's pollers drift apart.
    pub fn wait(&self, backoff: u32) -> Duration {
        let jitter = if self.jitter_seconds == 0 {
            0
        } else {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(backoff)
                % (self.jitter_seconds * 1000)
        };
        Duration::from_millis(self.poll_seconds.max(1) * 1000 * backoff as u64 + jitter)
    }
}

/// Whether a poll's error is EC2 throttling (the interval then backs off).
pub fn throttled(error: &str) -> bool {
    error.contains("RequestLimitExceeded") || error.contains("Throttl")
}

/// A client from the SDK's standard chain, with the config's region and endpoint.
pub async fn client(cfg: &Ec2ApiConfig) -> aws_sdk_ec2::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &cfg.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &cfg.endpoint {
        loader = loader.endpoint_url(e);
    }
    aws_sdk_ec2::Client::new(&loader.load().await)
}

fn sdk_error(call: &str, e: impl std::error::Error) -> String {
    // The SDK's Display is terse ("service error"); its source chain names the code.
    let mut text = format!("{call}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(&format!(": {s}"));
        src = s.source();
    }
    text
}

/// One poll: every group (of the VPC), then the members of the referenced groups and
/// the named prefix lists.
pub async fn poll(client: &aws_sdk_ec2::Client, vpc: Option<&str>) -> Result<Answer, String> {
    let vpc_filter = vpc.map(|v| Filter::builder().name("vpc-id").values(v).build());
    let mut groups = Vec::new();
    let mut pages = client
        .describe_security_groups()
        .set_filters(vpc_filter.clone().map(|f| vec![f]))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_error("DescribeSecurityGroups", e))?;
        groups.extend(page.security_groups.unwrap_or_default());
    }
    let mut referenced = BTreeSet::new();
    let mut lists = BTreeSet::new();
    let doc: Vec<Value> = groups
        .iter()
        .map(|g| group_doc(g, &mut referenced, &mut lists))
        .collect();
    let mut members = BTreeMap::new();
    for g in &referenced {
        let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
        let mut pages = client
            .describe_network_interfaces()
            .filters(Filter::builder().name("group-id").values(g).build())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("DescribeNetworkInterfaces", e))?;
            for eni in page.network_interfaces() {
                for a in eni.private_ip_addresses() {
                    ips.extend(
                        a.private_ip_address()
                            .and_then(|s| s.parse::<IpAddr>().ok()),
                    );
                }
                for a in eni.ipv6_addresses() {
                    ips.extend(a.ipv6_address().and_then(|s| s.parse::<IpAddr>().ok()));
                }
            }
        }
        members.insert(g.clone(), ips);
    }
    let mut pl_doc = serde_json::Map::new();
    for pl in &lists {
        let mut entries = Vec::new();
        let mut pages = client
            .get_managed_prefix_list_entries()
            .prefix_list_id(pl)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => entries.extend(p.entries().iter().map(|e| json!({"Cidr": e.cidr()}))),
                // One unreadable list fails the rules naming it, not the poll.
                Err(e) => {
                    log::warn!(
                        "{}",
                        sdk_error(&format!("GetManagedPrefixListEntries {pl}"), e)
                    );
                    entries.clear();
                    break;
                }
            }
        }
        pl_doc.insert(pl.clone(), json!({ "Entries": entries }));
    }
    Ok(Answer {
        groups: json!({ "SecurityGroups": doc }).to_string(),
        prefix_lists: Value::Object(pl_doc).to_string(),
        members,
        rule_ids: rule_ids(client).await?,
    })
}

/// `SecurityGroupRuleId`s of the groups' rules (DescribeSecurityGroupRules), as the
/// CLI prints them, read by the parser the file source uses.
async fn rule_ids(client: &aws_sdk_ec2::Client) -> Result<RuleIds, String> {
    let mut doc = Vec::new();
    let mut pages = client
        .describe_security_group_rules()
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_error("DescribeSecurityGroupRules", e))?;
        doc.extend(page.security_group_rules().iter().map(rule_doc));
    }
    rule_ids::parse(
        &json!({ "SecurityGroupRules": doc }).to_string(),
        "EC2 DescribeSecurityGroupRules",
    )
    .map_err(|e| e.to_string())
}

/// One rule in `describe-security-group-rules` JSON.
fn rule_doc(r: &aws_sdk_ec2::types::SecurityGroupRule) -> Value {
    without_nulls(json!({
        "SecurityGroupRuleId": r.security_group_rule_id(),
        "GroupId": r.group_id(),
        "IsEgress": r.is_egress(),
        "IpProtocol": r.ip_protocol(),
        "FromPort": r.from_port(),
        "ToPort": r.to_port(),
        "CidrIpv4": r.cidr_ipv4(),
        "CidrIpv6": r.cidr_ipv6(),
        "PrefixListId": r.prefix_list_id(),
        "ReferencedGroupInfo": r.referenced_group_info().map(|g| json!({"GroupId": g.group_id()})),
    }))
}

/// One group in `describe-security-groups` JSON (what the file source reads too);
/// notes the groups and prefix lists its rules name.
fn group_doc(
    g: &aws_sdk_ec2::types::SecurityGroup,
    referenced: &mut BTreeSet<String>,
    lists: &mut BTreeSet<String>,
) -> Value {
    let mut perms = |p: &[IpPermission]| -> Vec<Value> {
        p.iter()
            .map(|p| {
                for pair in p.user_id_group_pairs() {
                    referenced.extend(pair.group_id().map(str::to_string));
                }
                for pl in p.prefix_list_ids() {
                    lists.extend(pl.prefix_list_id().map(str::to_string));
                }
                permission(p)
            })
            .collect()
    };
    without_nulls(json!({
        "GroupId": g.group_id(),
        "GroupName": g.group_name(),
        "IpPermissions": perms(g.ip_permissions()),
        "IpPermissionsEgress": perms(g.ip_permissions_egress()),
        "Tags": g.tags().iter().map(|t| json!({"Key": t.key(), "Value": t.value()})).collect::<Vec<_>>(),
    }))
}

/// The SDK's absent fields (`None`) left out, as the CLI's output leaves them: `null`
/// where the parser expects a string would make the whole group unusable.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        v => v,
    }
}

/// One permission in `describe-security-groups` JSON.
fn permission(p: &IpPermission) -> Value {
    json!({
        "IpProtocol": p.ip_protocol(),
        "FromPort": p.from_port(),
        "ToPort": p.to_port(),
        "IpRanges": p.ip_ranges().iter().map(|r| json!({"CidrIp": r.cidr_ip(), "Description": r.description()})).collect::<Vec<_>>(),
        "Ipv6Ranges": p.ipv6_ranges().iter().map(|r| json!({"CidrIpv6": r.cidr_ipv6(), "Description": r.description()})).collect::<Vec<_>>(),
        "PrefixListIds": p.prefix_list_ids().iter().map(|r| json!({"PrefixListId": r.prefix_list_id(), "Description": r.description()})).collect::<Vec<_>>(),
        "UserIdGroupPairs": p.user_id_group_pairs().iter().map(|r| json!({"GroupId": r.group_id(), "Description": r.description()})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves a group's tags from the SDK reach the model (`doctor`'s cluster-tag
    /// check reads them), the groups its rules reference are noted, and fields the SDK
    /// leaves out (no name, no ports) do not make the group unusable.
    #[test]
    fn tags_and_references_carried_from_the_sdk() {
        use aws_sdk_ec2::types::{SecurityGroup, Tag, UserIdGroupPair};
        let g = SecurityGroup::builder()
            .group_id("sg-1")
            .tags(
                Tag::builder()
                    .key("kubernetes.io/cluster/prod")
                    .value("owned")
                    .build(),
            )
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("-1")
                    .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-2").build())
                    .build(),
            )
            .build();
        let (mut referenced, mut lists) = (BTreeSet::new(), BTreeSet::new());
        let doc = json!({ "SecurityGroups": [group_doc(&g, &mut referenced, &mut lists)] });
        let parsed = ec2::parse_security_groups(&doc.to_string(), "t").unwrap();
        assert!(parsed.invalid.is_empty(), "{:?}", parsed.invalid);
        assert_eq!(
            parsed.groups[0]
                .tags
                .get("kubernetes.io/cluster/prod")
                .map(String::as_str),
            Some("owned")
        );
        assert_eq!(referenced.into_iter().collect::<Vec<_>>(), ["sg-2"]);
    }

    /// Proves an SDK rule reaches the parser the files use in the CLI's spelling (-1
    /// ports, a referenced group) and names the group's rule.
    #[test]
    fn sdk_rules_name_the_groups_rules() {
        use crate::model::group::Direction;
        use aws_sdk_ec2::types::{ReferencedSecurityGroup, SecurityGroupRule};
        let groups = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissionsEgress":[
            {"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]},
            {"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-dns"}]}]}]}"#;
        let all = SecurityGroupRule::builder()
            .security_group_rule_id("sgr-all")
            .group_id("sg-1")
            .is_egress(true)
            .ip_protocol("-1")
            .from_port(-1)
            .to_port(-1)
            .cidr_ipv4("0.0.0.0/0")
            .build();
        let dns = SecurityGroupRule::builder()
            .security_group_rule_id("sgr-dns")
            .group_id("sg-1")
            .is_egress(true)
            .ip_protocol("udp")
            .from_port(53)
            .to_port(53)
            .referenced_group_info(
                ReferencedSecurityGroup::builder()
                    .group_id("sg-dns")
                    .build(),
            )
            .build();
        let doc = json!({ "SecurityGroupRules": [rule_doc(&all), rule_doc(&dns)] });
        let a = Answer {
            groups: groups.into(),
            prefix_lists: "{}".into(),
            rule_ids: rule_ids::parse(&doc.to_string(), "t").unwrap(),
            ..Answer::default()
        };
        let (catalog, errors) = parse(&a);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            catalog.rule_name("sg-1", Direction::Outbound, 0),
            "sg-1 outbound rule #0 (sgr-all)"
        );
        assert_eq!(
            catalog.rule_name("sg-1", Direction::Outbound, 1),
            "sg-1 outbound rule #1 (sgr-dns)"
        );
    }
}
