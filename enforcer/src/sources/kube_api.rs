//! The Kubernetes API as a source: kube-runtime watchers for this node's Pods (field
//! selector `spec.nodeName`), every SecurityGroupPolicy and every ServiceAccount. Each
//! watcher keeps its objects; a (re)list replaces them whole — objects missing from it
//! are gone (a watch restart, 410 Gone included, is a full resync). Every change wakes
//! the daemon, which re-plans from the objects through the same parsers as the file
//! source (per-object errors). A watcher that fails keeps its last objects and reports
//! the error until it is back; nothing is applied from the API before every watcher has
//! listed once, so a daemon (re)starting while the API is away keeps what the pinned
//! maps enforce. With `mirroredGroups`, the EC2 mirror's objects are watched too and
//! feed the groups (`sources::mirror`).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::model::objects::KubeObjects;

/// `kubernetesApi` in the config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeApiConfig {
    /// This node's name (the Pods scheduled here); env `NODE_NAME` wins, as a
    /// DaemonSet sets it from `spec.nodeName`.
    #[serde(default)]
    pub node_name: Option<String>,
    /// A kubeconfig file; without it, the in-cluster service account (or the usual
    /// kubeconfig search when not in a cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Read security groups, their members and prefix lists from the objects
    /// `enforcer mirror` publishes (MirroredSecurityGroup, MirroredPrefixList) instead
    /// of polling EC2 from every node.
    #[serde(default)]
    pub mirrored_groups: bool,
}

/// A client from `kubeconfig`, or the in-cluster service account (or the usual
/// kubeconfig search when not in a cluster).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let client_cfg = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster service account and no kubeconfig")?,
    };
    kube::Client::try_from(client_cfg).context("Kubernetes client")
}

/// One watched kind.
struct Kind {
    name: &'static str,
    resource: ApiResource,
    fields: Option<String>,
}

fn kinds(node: &str, mirrored: bool) -> Vec<Kind> {
    let r = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let mut kinds = vec![
        Kind {
            name: "Pod",
            resource: r("", "v1", "Pod", "pods"),
            fields: Some(format!("spec.nodeName={node}")),
        },
        Kind {
            name: "SecurityGroupPolicy",
            resource: r(
                "vpcresources.k8s.aws",
                "v1beta1",
                "SecurityGroupPolicy",
                "securitygrouppolicies",
            ),
            fields: None,
        },
        Kind {
            name: "ServiceAccount",
            resource: r("", "v1", "ServiceAccount", "serviceaccounts"),
            fields: None,
        },
    ];
    if mirrored {
        use crate::sources::mirror::{GROUP_KIND, PREFIX_LIST_KIND};
        for (name, plural) in [
            (GROUP_KIND, "mirroredsecuritygroups"),
            (PREFIX_LIST_KIND, "mirroredprefixlists"),
        ] {
            kinds.push(Kind {
                name,
                resource: r("podsg.io", "v1alpha1", name, plural),
                fields: None,
            });
        }
    }
    kinds
}

/// (API group, plural) of every kind the daemon watches: what its RBAC role must let
/// it list and watch, and nothing more (the deploy test holds `deploy/` to it).
pub fn watched_resources(mirrored: bool) -> Vec<(String, String)> {
    kinds("", mirrored)
        .into_iter()
        .map(|k| (k.resource.group, k.resource.plural))
        .collect()
}

/// What one watcher holds.
#[derive(Default)]
struct Store {
    /// namespace/name -> the object as JSON (kind and apiVersion filled in).
    objects: BTreeMap<String, serde_json::Value>,
    /// Objects of a (re)list in progress: they replace `objects` when it completes.
    relist: Option<BTreeMap<String, serde_json::Value>>,
    /// Has completed a list at least once.
    synced: bool,
    /// The watcher's last error, until it works again.
    error: Option<String>,
    /// The last error, even once recovered, and when.
    last_error: Option<(String, std::time::Instant)>,
    /// Bumped whenever `objects` change.
    generation: u64,
    /// Events applied since the start (for status).
    events: u64,
    /// When the watch last delivered something (an event or a list).
    last_ok: Option<std::time::Instant>,
}

pub struct KubeApiSource {
    stores: Vec<(&'static str, Arc<Mutex<Store>>)>,
    /// The mirror's objects parsed, with the store generations they were parsed at:
    /// parsed again only when those changed, not on every apply.
    mirror: Mutex<Option<MirrorParse>>,
}

/// The mirror stores' generations, what their objects give the catalog, the problems.
type MirrorParse = (Vec<u64>, crate::model::group::GroupCatalog, Vec<String>);

/// One kind's line in status.
pub struct KindCount {
    pub kind: &'static str,
    pub objects: usize,
    pub events: u64,
    /// Seconds since the watch last delivered (None: never).
    pub since: Option<u64>,
    /// The last error (even once recovered) and its age in seconds.
    pub last_error: Option<(String, u64)>,
    pub health: crate::status::SourceHealth,
}

impl std::fmt::Display for KindCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.since.map_or("never".into(), |s| format!("{s} s ago"));
        write!(
            f,
            "Kubernetes API: {} {}s ({} events, last {last}",
            self.objects, self.kind, self.events
        )?;
        if let Some((e, age)) = &self.last_error {
            write!(f, "; last error {age} s ago: {e}")?;
        }
        write!(f, ")")
    }
}

/// What the source holds now.
pub struct KubeApiSnapshot {
    pub kube: KubeObjects,
    /// Every watcher has listed once: the objects are the cluster's, not a partial view.
    pub ready: bool,
    pub errors: Vec<String>,
    /// Per kind, for status.
    pub counts: Vec<KindCount>,
}

impl KubeApiSource {
    /// Connects and starts the watchers; `changed` is told about every change.
    pub async fn start(cfg: &KubeApiConfig, changed: UnboundedSender<()>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let node = std::env::var(crate::env::NODE_NAME)
            .ok()
            .or_else(|| cfg.node_name.clone())
            .context("kubernetesApi: the node's name is needed (nodeName, or env NODE_NAME)")?;
        let client = client(cfg.kubeconfig.as_deref())
            .await
            .context("kubernetesApi")?;
        let mut stores = Vec::new();
        for kind in kinds(&node, cfg.mirrored_groups) {
            let store = Arc::new(Mutex::new(Store::default()));
            stores.push((kind.name, store.clone()));
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource);
            let mut wc = watcher::Config::default();
            if let Some(f) = &kind.fields {
                wc = wc.fields(f);
            }
            let changed = changed.clone();
            tokio::spawn(async move {
                let mut events = watcher(api, wc).default_backoff().boxed();
                while let Some(ev) = events.next().await {
                    if apply_event(&store, &kind, ev) {
                        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
                        s.generation += 1;
                        drop(s);
                        let _ = changed.send(());
                    }
                }
            });
        }
        Ok(KubeApiSource {
            stores,
            mirror: Mutex::default(),
        })
    }

    /// The objects as KubeObjects (parsed like files, per-object errors); the mirror's
    /// objects, if watched, are added to `catalog`.
    pub fn snapshot(&self, catalog: &mut crate::model::group::GroupCatalog) -> KubeApiSnapshot {
        use crate::sources::mirror::{GROUP_KIND, PREFIX_LIST_KIND};
        let mut mirror_generations = Vec::new();
        let mut kube = KubeObjects::default();
        let mut errors = Vec::new();
        let mut ready = true;
        let mut counts = Vec::new();
        for (name, store) in &self.stores {
            let s = store.lock().unwrap_or_else(|p| p.into_inner());
            ready &= s.synced;
            if let Some(e) = &s.error {
                errors.push(format!(
                    "Kubernetes API, {name}s: {e} ({})",
                    if s.synced {
                        "their last listed state stays in use"
                    } else {
                        "not listed yet: nothing from the API is applied"
                    }
                ));
            }
            counts.push(KindCount {
                kind: name,
                objects: s.objects.len(),
                events: s.events,
                since: s.last_ok.map(|t| t.elapsed().as_secs()),
                last_error: s
                    .last_error
                    .as_ref()
                    .map(|(e, t)| (e.clone(), t.elapsed().as_secs())),
                health: crate::status::SourceHealth {
                    source: format!("kubernetes/{name}"),
                    last_success: s
                        .last_ok
                        .map(|t| crate::status::SourceHealth::unix_time(t.elapsed())),
                    failing: s.error.is_some(),
                },
            });
            if [GROUP_KIND, PREFIX_LIST_KIND].contains(name) {
                mirror_generations.push(s.generation);
            } else {
                for (key, obj) in &s.objects {
                    kube.add_object(obj.clone(), &format!("Kubernetes API {name} {key}"));
                }
            }
        }
        if !mirror_generations.is_empty() {
            let mut cache = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
            if cache
                .as_ref()
                .is_none_or(|(g, _, _)| *g != mirror_generations)
            {
                let objects = |kind: &str| {
                    self.stores
                        .iter()
                        .find(|(n, _)| *n == kind)
                        .map(|(_, st)| st.lock().unwrap_or_else(|p| p.into_inner()).objects.clone())
                        .unwrap_or_default()
                };
                let mut parsed = crate::model::group::GroupCatalog::default();
                let problems = crate::sources::mirror::add_to_catalog(
                    &objects(GROUP_KIND),
                    &objects(PREFIX_LIST_KIND),
                    &mut parsed,
                );
                *cache = Some((mirror_generations, parsed, problems));
            }
            if let Some((_, parsed, problems)) = cache.as_ref() {
                catalog.merge(parsed);
                errors.extend(problems.iter().cloned());
            }
        }
        KubeApiSnapshot {
            kube,
            ready,
            errors,
            counts,
        }
    }
}

/// Applies one watcher event to its store; whether the objects changed.
fn apply_event(
    store: &Mutex<Store>,
    kind: &Kind,
    ev: Result<watcher::Event<DynamicObject>, watcher::Error>,
) -> bool {
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            let text = e.to_string();
            let new = s.error.as_deref() != Some(&text);
            log::warn!("Kubernetes API, {}s: {text}", kind.name);
            s.last_error = Some((text.clone(), std::time::Instant::now()));
            s.error = Some(text);
            return new;
        }
    };
    let had_error = s.error.take().is_some();
    s.events += 1;
    s.last_ok = Some(std::time::Instant::now());
    match ev {
        watcher::Event::Init => {
            s.relist = Some(BTreeMap::new());
            had_error
        }
        watcher::Event::InitApply(o) => {
            let (k, v) = entry(kind, o);
            if let Some(r) = s.relist.as_mut() {
                r.insert(k, v);
            }
            had_error
        }
        watcher::Event::InitDone => {
            // Whatever the list did not return is gone (also after a 410 Gone).
            let listed = s.relist.take().unwrap_or_default();
            let changed = listed != s.objects || !s.synced;
            s.objects = listed;
            s.synced = true;
            changed || had_error
        }
        watcher::Event::Apply(o) => {
            let (k, v) = entry(kind, o);
            let changed = s.objects.get(&k) != Some(&v);
            s.objects.insert(k, v);
            changed || had_error
        }
        watcher::Event::Delete(o) => {
            let (k, _) = entry(kind, o);
            s.objects.remove(&k).is_some() || had_error
        }
    }
}

/// namespace/name and the object as the parsers take it (kind and apiVersion set:
/// a watch does not always fill them in).
fn entry(kind: &Kind, o: DynamicObject) -> (String, serde_json::Value) {
    let key = format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or(""),
        o.metadata.name.as_deref().unwrap_or("")
    );
    let mut v = serde_json::to_value(&o).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), kind.resource.kind.clone().into());
        m.insert(
            "apiVersion".into(),
            kind.resource.api_version.clone().into(),
        );
        // Status, managed fields and the like are noise to us and churn on every write.
        m.remove("status");
        if let Some(md) = m.get_mut("metadata").and_then(|md| md.as_object_mut()) {
            md.remove("managedFields");
            md.remove("resourceVersion");
        }
    }
    (key, v)
}
