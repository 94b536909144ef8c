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
        .map(|g| {
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
            json!({
                "GroupId": g.group_id(),
                "GroupName": g.group_name(),
                "IpPermissions": perms(g.ip_permissions()),
                "IpPermissionsEgress": perms(g.ip_permissions_egress()),
            })
        })
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
    })
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
