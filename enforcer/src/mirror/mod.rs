//! `enforcer mirror`: one poller of EC2 per cluster. EC2 throttles Describe calls per
//! account and region (a bucket refilling at about 20 calls/s that every caller
//! shares), so a poller on each of a thousand nodes cannot work. The mirror runs as a
//! Deployment (two replicas; a Lease elects the one that polls) and publishes what it
//! reads as `MirroredSecurityGroup` and `MirroredPrefixList` objects
//! (`sources::mirror`); every node's daemon watches those like its other objects: the
//! API server is the distribution layer.
//!
//! The leader polls every `ec2Api.pollSeconds` (backing off while throttled) and
//! writes only what changed: a poll that fails leaves the published objects as they
//! are (the last good answer stays enforced), a group gone from EC2 loses its object
//! (pods using it then fail closed on every node).
pub mod lease;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use log::{info, warn};
use serde::Deserialize;

use crate::sources::ec2_api::{self, Ec2ApiConfig};
use crate::sources::mirror::{
    MirroredPrefixList, MirroredPrefixListSpec, MirroredSecurityGroup, MirroredSecurityGroupSpec,
    specs_of,
};

/// The mirror's config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// A kubeconfig; without it, the in-cluster service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    pub ec2_api: Ec2ApiConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// A leader not heard from for this long is replaced.
    pub duration_seconds: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            namespace: "kube-system".into(),
            name: "podsg-mirror".into(),
            duration_seconds: 15,
        }
    }
}

/// This replica's name in the lease: env `POD_NAME` (a Deployment sets it), else the
/// host name and process id.
fn identity() -> String {
    std::env::var(crate::env::POD_NAME).unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// The two kinds, for [`publish`].
trait Mirrored:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    type Spec: PartialEq;
    fn make(name: &str, spec: Self::Spec) -> Self;
    fn spec(&self) -> &Self::Spec;
}

impl Mirrored for MirroredSecurityGroup {
    type Spec = MirroredSecurityGroupSpec;
    fn make(name: &str, spec: Self::Spec) -> Self {
        MirroredSecurityGroup::new(name, spec)
    }
    fn spec(&self) -> &Self::Spec {
        &self.spec
    }
}

impl Mirrored for MirroredPrefixList {
    type Spec = MirroredPrefixListSpec;
    fn make(name: &str, spec: Self::Spec) -> Self {
        MirroredPrefixList::new(name, spec)
    }
    fn spec(&self) -> &Self::Spec {
        &self.spec
    }
}

/// Brings the published objects of one kind to `want`: writes the new and changed
/// ones (server-side apply), deletes those EC2 no longer has. Returns (written, deleted).
async fn publish<K: Mirrored>(
    api: &Api<K>,
    want: BTreeMap<String, K::Spec>,
) -> Result<(usize, usize)> {
    let kind = K::kind(&());
    let have: BTreeMap<String, K> = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {kind}s"))?
        .items
        .into_iter()
        .filter_map(|o| Some((o.meta().name.clone()?, o)))
        .collect();
    let (mut written, mut deleted) = (0, 0);
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting {kind} {name}"))?;
        deleted += 1;
    }
    let pp = PatchParams::apply("podsg-mirror").force();
    for (name, spec) in want {
        if have.get(&name).is_some_and(|o| *o.spec() == spec) {
            continue;
        }
        api.patch(&name, &pp, &Patch::Apply(K::make(&name, spec)))
            .await
            .with_context(|| format!("writing {kind} {name}"))?;
        written += 1;
    }
    Ok((written, deleted))
}

/// Runs the mirror until stopped.
pub async fn run(config_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let cfg: MirrorConfig = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a mirror config", config_path.display()))?;
    let client = crate::sources::kube_api::client(cfg.kubeconfig.as_deref()).await?;
    let ec2 = ec2_api::client(&cfg.ec2_api).await;
    let me = identity();
    let duration = Duration::from_secs(cfg.lease.duration_seconds.max(3));
    let mut elector = lease::Elector::new(
        Api::namespaced(client.clone(), &cfg.lease.namespace),
        &cfg.lease.name,
        &me,
        duration,
    );
    let groups: Api<MirroredSecurityGroup> = Api::all(client.clone());
    let lists: Api<MirroredPrefixList> = Api::all(client);
    info!(
        "mirror {me}: lease {}/{} ({} s), EC2 every {} s",
        cfg.lease.namespace,
        cfg.lease.name,
        duration.as_secs(),
        cfg.ec2_api.poll_seconds
    );
    let mut leading = false;
    let mut next_poll = Instant::now();
    let mut backoff = 1u32;
    loop {
        let lead = match elector.try_lead().await {
            Ok(l) => l,
            Err(e) => {
                warn!("lease {}/{}: {e}", cfg.lease.namespace, cfg.lease.name);
                false
            }
        };
        if lead != leading {
            info!(
                "{}",
                if lead {
                    "leading: polling EC2"
                } else {
                    "following: not polling"
                }
            );
            leading = lead;
            next_poll = Instant::now();
        }
        if lead && Instant::now() >= next_poll {
            match ec2_api::poll(&ec2, cfg.ec2_api.vpc_id.as_deref()).await {
                Ok(a) => {
                    backoff = 1;
                    let members = a
                        .members
                        .iter()
                        .map(|(g, ips)| (g.clone(), ips.iter().map(|ip| ip.to_string()).collect()))
                        .collect();
                    match specs_of(&a.groups, &a.prefix_lists, &members, &a.rule_ids) {
                        Ok((g, l)) => {
                            let n = (g.len(), l.len());
                            match (publish(&groups, g).await, publish(&lists, l).await) {
                                (Ok(g), Ok(l)) if g != (0, 0) || l != (0, 0) => info!(
                                    "published {} groups and {} prefix lists: {} written, {} deleted",
                                    n.0,
                                    n.1,
                                    g.0 + l.0,
                                    g.1 + l.1
                                ),
                                (Ok(_), Ok(_)) => {}
                                (Err(e), _) | (_, Err(e)) => warn!("publishing: {e:#}"),
                            }
                        }
                        Err(e) => warn!("EC2's answer: {e}"),
                    }
                }
                Err(e) => {
                    if ec2_api::throttled(&e) {
                        backoff = (backoff * 2).min(16);
                    }
                    warn!("EC2: {e} (the published objects stay as they are)");
                }
            }
            next_poll = Instant::now() + cfg.ec2_api.wait(backoff);
        }
        // Renew well inside the lease; poll when due.
        let renew = duration / 3;
        let until_poll = next_poll.saturating_duration_since(Instant::now());
        tokio::time::sleep(if lead { renew.min(until_poll) } else { renew }).await;
    }
}

/// The CustomResourceDefinitions of the mirror's kinds, as YAML documents.
pub fn crds() -> Result<String> {
    use kube::CustomResourceExt;
    Ok(format!(
        "{}---\n{}",
        serde_yaml::to_string(&MirroredSecurityGroup::crd())?,
        serde_yaml::to_string(&MirroredPrefixList::crd())?
    ))
}
