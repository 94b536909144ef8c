//! `enforcer run`: load (or adopt what a previous daemon pinned), attach, program the
//! maps from the sources, and keep them current: re-read when a watched file changes,
//! on SIGHUP or when asked on the control socket; refresh status and sweep idle flows
//! on timers. SIGINT/SIGTERM end the process, not the enforcement.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use enforcer_common::{NodeConfig, Reason};
use log::{error, info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::datapath::kernel::{Datapath, kernel_node_config};
use crate::engine::{self, Recorder};
use crate::netdev;
use crate::plan::Memory;
use crate::sources::files;
use crate::status::{NodeStatus, PodState, STATUS_FILE};

struct Daemon {
    config_path: PathBuf,
    /// Why the daemon is not ready (`/readyz`), if it is not.
    not_ready: Option<String>,
    /// Apply durations (`/metrics`).
    apply_seconds: prometheus_client::metrics::histogram::Histogram,
    /// `Memory::tables_fingerprint` when last saved.
    tables_saved: Option<(usize, u32, usize)>,
    /// The last applied catalog's rule ids (only those: names for events and tables).
    names: crate::model::group::GroupCatalog,
    /// The programs' flow events (None when the map could not be opened).
    events: Option<crate::flows::Events>,
    /// When every source file (and the config) last read and parsed cleanly.
    files_ok_at: Option<std::time::SystemTime>,
    /// `enforcer run`'s flags, applied over the config at every reload.
    flags: crate::config::Overrides,
    /// Why the config file could not be re-read (the previous one stays in use).
    config_error: Option<String>,
    files: files::FileSource,
    /// The Kubernetes API source, when configured (started once; a changed
    /// `kubernetesApi` needs a restart).
    kube_api: Option<crate::sources::kube_api::KubeApiSource>,
    /// The EC2 source, when configured (likewise started once).
    ec2_api: Option<crate::sources::ec2_api::Ec2ApiSource>,
    cfg: Config,
    dp: Datapath,
    node: NodeConfig,
    mem: Memory,
    status: NodeStatus,
    /// Status is published only once the trunk is attached too: a reader that sees
    /// generation 1 sees a datapath that is complete.
    attached: bool,
}

fn counters_map(dp: &Datapath, slot: u32) -> std::collections::BTreeMap<String, [u64; 2]> {
    dp.counters(slot)
        .unwrap_or_default()
        .into_iter()
        .map(|(r, c): (Reason, _)| (r.name().to_string(), [c.packets, c.bytes]))
        .collect()
}

impl Daemon {
    /// Reads every source (files, then what the API sources hold now), noting each
    /// one's summary and health in status. `waiting`: sources with no first answer yet.
    fn gather(&mut self) -> (crate::sources::files::Loaded, Vec<&'static str>) {
        let mut loaded = self.files.load(&self.cfg);
        self.status.sources.clear();
        let files_failing = loaded.unreadable > 0 || self.config_error.is_some();
        if !files_failing {
            self.files_ok_at = Some(std::time::SystemTime::now());
        }
        self.status.source_health = vec![crate::status::SourceHealth {
            source: "files".into(),
            last_success: self
                .files_ok_at
                .and_then(|t| Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())),
            failing: files_failing,
        }];
        let mut waiting = Vec::new();
        if let Some(api) = &self.kube_api {
            let snap = api.snapshot(&mut loaded.snapshot.catalog);
            self.status
                .sources
                .extend(snap.counts.iter().map(|c| c.to_string()));
            self.status
                .source_health
                .extend(snap.counts.iter().map(|c| c.health.clone()));
            if !snap.ready {
                waiting.push("the Kubernetes API's first list of every kind");
            }
            loaded.errors.extend(snap.errors);
            loaded.errors.extend(snap.kube.errors.iter().cloned());
            loaded.snapshot.kube.extend(snap.kube);
        }
        if let Some(ec2) = &self.ec2_api {
            let snap = ec2.snapshot(&mut loaded.snapshot.catalog);
            self.status.sources.push(snap.summary);
            self.status.source_health.push(snap.health);
            if !snap.ready {
                waiting.push("EC2's first answer");
            }
            loaded.errors.extend(snap.errors);
        }
        (loaded, waiting)
    }

    /// The counter slot of pod `NAMESPACE/NAME`, whose flows are its.
    fn slot_of(&self, pod: &str) -> Result<u32> {
        self.status
            .pods
            .iter()
            .find(|p| pod.split_once('/') == Some((&p.namespace, &p.name)))
            .filter(|p| p.slot != 0)
            .map(|p| p.slot)
            .with_context(|| {
                format!(
                    "no enforced pod {pod} on this node (`enforcer status` lists the pods it knows)"
                )
            })
    }

    /// `enforcer explain`: the model's verdict for the packet, from the sources as
    /// they are now and the pod as last applied, beside the live maps'.
    fn explain(&mut self, q: crate::explain::Query) -> Result<crate::explain::Explanation> {
        let pod = self
            .status
            .pods
            .iter()
            .find(|p| p.namespace == q.namespace && p.name == q.name)
            .cloned()
            .with_context(|| {
                format!(
                    "no pod {}/{} on this node (`enforcer status` lists the pods it knows)",
                    q.namespace, q.name
                )
            })?;
        let (loaded, _) = self.gather();
        let mut e = crate::explain::explain(&self.cfg, &loaded.snapshot, &pod, q);
        e.kernel = self.dp.kernel_view(&pod, &e, &self.mem.cookies)?;
        Ok(e)
    }

    /// Reads the sources and brings the kernel in line. Never fails: problems become
    /// status errors, and the last good state stays enforced when the sources can't be read.
    fn apply(&mut self) {
        let started = std::time::Instant::now();
        let (loaded, waiting) = self.gather();
        if !waiting.is_empty() {
            // Applying a partial view would remove (or fail closed) pods whose objects
            // or groups are only not known yet: what the maps enforce stays meanwhile.
            let why = format!(
                "waiting for {}: nothing new applied yet",
                waiting.join(" and ")
            );
            info!("{why}");
            self.status.source_errors = loaded.errors;
            self.status.source_errors.push(why.clone());
            self.not_ready = Some(why);
            return;
        }
        self.not_ready = None;
        self.status.generation += 1;
        for e in &loaded.errors {
            error!("{e}");
        }
        self.status.source_errors = loaded.errors;
        self.status
            .source_errors
            .extend(self.config_error.iter().cloned());
        self.names.rule_ids = loaded.snapshot.catalog.rule_ids.clone();
        let state_dir = self.cfg.state_dir.clone();
        let host_veths = self.host_veths();
        let applied = engine::apply(
            &self.cfg,
            &loaded.snapshot,
            &mut self.mem,
            &netdev::lookup,
            &host_veths,
            &mut self.dp,
            &mut |m| save_memory(m, &state_dir),
        );
        for e in &applied.errors {
            error!("{e}");
        }
        self.status.source_errors.extend(applied.errors);
        let p = applied.plan;
        let gone = self
            .status
            .pods
            .iter()
            .any(|old| old.slot != 0 && !p.pods.iter().any(|new| new.slot == old.slot));
        if gone {
            // A deleted pod's flows go now, before its slot or address serves anyone else.
            if let Err(e) = self.dp.sweep_flows(&self.node) {
                warn!("removing flows of deleted pods: {e:#}");
            }
        }
        // Links of interfaces that went away (a pod deleted while no daemon ran, or
        // whose link this daemon never took over) would stay allocated by their pins.
        for stale in self.dp.remove_stale_link_pins() {
            info!("removed pinned link {stale}: its interface is gone");
        }
        for pod in &p.pods {
            if let Some(e) = &pod.error {
                warn!("pod {}/{} ({:?}): {e}", pod.namespace, pod.name, pod.state);
            }
        }
        self.status.pods = p.pods;
        info!(
            "applied generation {}: {} pods, {} enforced, {} attached",
            self.status.generation,
            self.status.pods.len(),
            self.status.enforced(),
            self.dp.attached_pods()
        );
        self.apply_seconds.observe(started.elapsed().as_secs_f64());
        if !self.attached
            && self.dp.migration().is_some()
            && let Err(e) = self.attach_edges()
        {
            error!("attaching after the first apply: {e:#}");
            self.status.source_errors.push(format!("attaching: {e:#}"));
        }
        self.refresh_status();
        give_back_memory();
    }

    /// Attaches the trunk's and the primary ENI's programs (adopting their pinned
    /// links); when upgrading from another layout, then moves every other pinned link
    /// and retires the old maps. Called once the pods' state is written: on start-up,
    /// or, while an older datapath still enforces, after the first full apply.
    fn attach_edges(&mut self) -> Result<()> {
        let trunk = self.cfg.node.trunk_interface.clone();
        self.dp.attach_trunk(&trunk, self.cfg.node.trunk_xdp)?;
        self.status.trunk_xdp = match self.dp.trunk_xdp() {
            Ok(()) => "attached (native)".into(),
            Err(why) => format!("not attached: {why}"),
        };
        match self.dp.trunk_xdp() {
            Ok(()) => info!("{trunk}: XDP pre-filter attached (native mode)"),
            Err(why) if self.cfg.node.trunk_xdp => warn!(
                "{trunk}: XDP pre-filter not attached, TC alone enforces (denied frames cost more): {why}"
            ),
            Err(_) => {}
        }
        if let Some(name) = self.cfg.node.primary_interface.clone() {
            self.dp.attach_primary(&name)?;
            info!("attached to primary interface {name}");
        }
        self.attached = true;
        info!("attached to trunk {}", self.cfg.node.trunk_interface);
        if self.dp.migration().is_some() {
            match self.dp.finish_migration() {
                Ok(done) => info!("{done}"),
                Err(e) => error!(
                    "finishing the upgrade: {e:#}; the old maps stay pinned and a restart copies their entries again"
                ),
            }
        }
        Ok(())
    }

    /// Answers the HTTP endpoints' questions (counters read now).
    fn answer(&mut self, ask: crate::http::Ask) {
        match ask {
            crate::http::Ask::Ready(tx) => {
                let r = match (&self.not_ready, self.attached) {
                    (Some(why), _) => Err(why.clone()),
                    (None, false) => Err("the datapath is not attached yet".into()),
                    (None, true) => Ok(()),
                };
                let _ = tx.send(r);
            }
            crate::http::Ask::Metrics(tx) => {
                self.refresh_status();
                let _ = tx.send(crate::http::render(&self.status, &self.apply_seconds));
            }
        }
    }

    /// A pod waits for its interface, an attached interface is gone or re-created, or
    /// a host interface no pod is known for appeared (it must be closed).
    fn interfaces_changed(&self) -> bool {
        self.status
            .pods
            .iter()
            .any(|p| p.state == PodState::Pending)
            || self.dp.links_stale()
            || self.host_veths().iter().any(|n| !self.dp.is_attached(n))
    }

    /// Interfaces in the node's namespace shaped like a pod's host interface.
    fn host_veths(&self) -> Vec<String> {
        let prefix = &self.cfg.node.host_veth_prefix;
        netdev::names()
            .into_iter()
            .filter(|n| crate::config::is_host_veth_name(prefix, n))
            .collect()
    }

    /// Watches the config and source files; `None` (logged) when the watch can't be set
    /// up: SIGHUP and the control socket still reload.
    fn watch_sources(
        &self,
        tx: &tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        let files = crate::watch::watched_files(&self.config_path, &self.cfg);
        match crate::watch::watch(files, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("watching the source files: {e} (SIGHUP or `enforcer reload` re-read them)");
                None
            }
        }
    }

    /// One control-socket request: a line in, a JSON line out (bounded in time; a
    /// client that says nothing is dropped).
    async fn serve(&mut self, stream: tokio::net::UnixStream) {
        use crate::control::Request;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        let mut r = BufReader::new(r);
        let read = r.read_line(&mut line);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), read).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let request = Request::parse(&line);
        if let Some(Request::Flows { pod, follow }) = request {
            self.drain_events();
            return self.serve_flows(w, pod, follow).await;
        }
        let reply = match request {
            Some(Request::Flows { .. }) => unreachable!("answered above"),
            Some(Request::Reload) => {
                info!("control socket: re-reading sources");
                self.reload();
                serde_json::to_string(&self.status)
            }
            Some(Request::Status) => {
                self.refresh_status();
                serde_json::to_string(&self.status)
            }
            Some(Request::FlowTable { pod }) => match self.slot_of(&pod) {
                Ok(slot) => {
                    let now = crate::datapath::sweep::coarse_now_ns();
                    let rows: Vec<crate::flows::FlowRow> = self
                        .dp
                        .flows()
                        .unwrap_or_default()
                        .iter()
                        .filter(|(_, v)| v.slot == slot)
                        .map(|(k, v)| crate::flows::row(k, v, now, &self.mem.cookies, &self.names))
                        .collect();
                    serde_json::to_string(&rows)
                }
                Err(e) => Ok(serde_json::json!({ "error": format!("{e:#}") }).to_string()),
            },
            Some(Request::FlowFlush { pod }) => {
                match self
                    .slot_of(&pod)
                    .and_then(|slot| self.dp.flush_flows(slot))
                {
                    Ok(n) => {
                        info!("control socket: flushed {n} flows of {pod} (an operator's request)");
                        Ok(serde_json::json!({ "flushed": n }).to_string())
                    }
                    Err(e) => Ok(serde_json::json!({ "error": format!("{e:#}") }).to_string()),
                }
            }
            Some(Request::Doctor) => {
                let (loaded, _) = self.gather();
                let snap = &loaded.snapshot;
                let resolved = crate::policy::resolve::resolve_pods(
                    &snap.kube,
                    &snap.catalog,
                    &self.cfg.node.node_groups,
                    self.cfg.node.unmatched_pods,
                    self.cfg.node.quotas.groups_per_pod,
                );
                let default = self.cfg.mode();
                let pods = &self.status.pods;
                let mode_of = |key: &str| {
                    pods.iter()
                        .find(|p| key.split_once('/') == Some((&p.namespace, &p.name)))
                        .and_then(|p| p.mode)
                        .unwrap_or(default)
                };
                serde_json::to_string(&crate::doctor::check(
                    &self.cfg,
                    &snap.catalog,
                    &resolved,
                    &mode_of,
                ))
            }
            Some(Request::Rules) => {
                let (loaded, _) = self.gather();
                let hits = self.dp.rule_hits().unwrap_or_default();
                serde_json::to_string(&crate::hits::report(
                    &self.status.pods,
                    &self.cfg.node.node_groups,
                    &loaded.snapshot.catalog,
                    &self.mem.cookies,
                    &hits,
                ))
            }
            Some(Request::Explain(q)) => match self.explain(q) {
                Ok(e) => serde_json::to_string(&e),
                Err(e) => Ok(serde_json::json!({ "error": format!("{e:#}") }).to_string()),
            },
            None => Ok(
                serde_json::json!({ "error": format!("unknown request {:?}", line.trim()) })
                    .to_string(),
            ),
        };
        let reply =
            reply.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            w.write_all(format!("{reply}\n").as_bytes()),
        )
        .await;
    }

    /// Reads the programs' flow events (named by the pods and rules known now).
    fn drain_events(&mut self) {
        if let Some(ev) = &mut self.events {
            ev.drain(&self.status.pods, &self.mem.cookies, &self.names);
        }
    }

    /// `enforcer flows`: the kept events as JSON lines; following, each new one after
    /// (a task of its own, so the daemon's loop goes on).
    async fn serve_flows(
        &mut self,
        mut w: tokio::net::unix::OwnedWriteHalf,
        pod: Option<String>,
        follow: bool,
    ) {
        use tokio::io::AsyncWriteExt;
        let Some(ev) = &self.events else {
            let _ = w
                .write_all(b"{\"error\":\"flow events are not available (the EVENTS map could not be opened; see the daemon's log)\"}\n")
                .await;
            return;
        };
        let mut text = String::new();
        for r in ev.recent(pod.as_deref()) {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
        let mut rx = ev.subscribe();
        let write = async move {
            w.write_all(text.as_bytes()).await?;
            if follow {
                info!(
                    "control socket: following flow events{}",
                    pod.as_ref().map_or(String::new(), |p| format!(" of {p}"))
                );
                loop {
                    match rx.recv().await {
                        Ok(r) if r.is_of(pod.as_deref()) => {
                            let line =
                                format!("{}\n", serde_json::to_string(&r).unwrap_or_default());
                            w.write_all(line.as_bytes()).await?;
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let line = format!("{{\"lagged\":{n}}}\n");
                            w.write_all(line.as_bytes()).await?;
                        }
                        Err(_) => break,
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        };
        if follow {
            tokio::spawn(write);
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(10), write).await;
        }
    }

    fn sweep(&mut self) {
        match self.dp.sweep_flows(&self.node) {
            Ok(n) if n > 0 => info!("swept {n} idle flows"),
            Ok(_) => {}
            Err(e) => warn!("sweeping flows: {e:#}"),
        }
    }

    fn refresh_status(&mut self) {
        let flows = self.dp.flow_counts().unwrap_or_default();
        for pod in &mut self.status.pods {
            if pod.slot != 0 {
                pod.counters = counters_map(&self.dp, pod.slot);
                pod.flows = flows.get(pod.slot as usize).copied().unwrap_or(0);
                pod.events_lost = self.dp.events_lost(pod.slot).unwrap_or(0);
                pod.would_drop = self.dp.would_drop(pod.slot).unwrap_or(0);
            }
        }
        self.status.unattributed = counters_map(&self.dp, 0);
        self.status.flows = self.dp.flows().map(|f| f.len()).unwrap_or(0);
        self.status.maps = self.dp.fill_levels(self.status.flows);
        if !self.attached {
            return;
        }
        if let Err(e) = write_status(&self.cfg.state_dir, &self.status) {
            warn!("writing status: {e:#}");
        }
    }

    fn reload(&mut self) {
        match Config::load_with(&self.config_path, &self.flags) {
            Ok(c) => {
                if c.node.trunk_interface != self.cfg.node.trunk_interface {
                    warn!("node.trunkInterface changed; restart the daemon to move to it");
                }
                if c.node.primary_interface != self.cfg.node.primary_interface {
                    warn!("node.primaryInterface changed; restart the daemon to move to it");
                }
                if c.node.trunk_xdp != self.cfg.node.trunk_xdp {
                    warn!("node.trunkXdp changed; restart the daemon to apply it");
                }
                self.cfg = c;
                let (trunk, primary) = (self.node.trunk_ifindex, self.node.primary_ifindex);
                self.node = kernel_node_config(&self.cfg, trunk, primary);
                self.status.node_local = node_local_summary(&self.cfg);
                self.status.snat = snat_summary(&self.cfg);
                reserve_snat_ports(&self.cfg);
                if let Err(e) = self.dp.set_node_config(&self.node) {
                    error!("updating node settings: {e:#}");
                }
            }
            Err(e) => {
                error!("config unreadable, keeping the previous one: {e:#}");
                self.config_error = Some(format!("{e:#} (the previous config stays in use)"));
                self.apply();
                return;
            }
        }
        self.config_error = None;
        self.apply();
    }
}

/// A re-plan, or serialising the tables, allocates and frees megabytes; give what is
/// free back to the system rather than holding the peak for the daemon's life.
fn give_back_memory() {
    // SAFETY: glibc's malloc_trim takes no pointers and only releases free memory.
    unsafe { libc::malloc_trim(0) };
}

fn save_memory(mem: &Memory, state_dir: &Path) {
    if let Err(e) = mem.save(state_dir) {
        warn!("{e} (a restart would not know this daemon's ids, modes and slots)");
    }
}

impl Daemon {
    /// Saves the class ids and cookies if they changed since last saved: on the 2 s
    /// tick and at exit, not on every apply (they are megabytes; see
    /// `memory::TABLES_FILE` for what losing their latest changes costs).
    fn save_tables(&mut self) {
        let now = self.mem.tables_fingerprint();
        if Some(now) == self.tables_saved {
            return;
        }
        match self.mem.save_tables(&self.cfg.state_dir) {
            Ok(()) => self.tables_saved = Some(now),
            Err(e) => warn!("{e} (a restart would rewrite more of the maps)"),
        }
        give_back_memory();
    }
}

/// The programs log rare internal failures with aya-log; relay them to our log.
fn forward_kernel_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("kernel-side logging unavailable: {e}");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for
    // as long as the logger lives, and the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel-side logging unavailable: {}", e.into_parts().1);
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

fn write_status(dir: &Path, status: &NodeStatus) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, dir.join(STATUS_FILE))?;
    Ok(())
}

pub async fn run(config_path: &Path, flags: crate::config::Overrides) -> Result<()> {
    // Before anything else: a SIGHUP during start-up must not kill the daemon (the
    // default action), and SIGTERM must still detach cleanly.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cfg = Config::load_with(config_path, &flags)?;
    let trunk = netdev::ifindex(&cfg.node.trunk_interface).with_context(|| {
        format!(
            "trunk interface {:?} (node.trunkInterface) does not exist in this network namespace",
            cfg.node.trunk_interface
        )
    })?;
    let primary = match &cfg.node.primary_interface {
        Some(name) => netdev::ifindex(name).with_context(|| {
            format!(
                "primary interface {name:?} (node.primaryInterface) does not exist in this network namespace"
            )
        })?,
        None => 0,
    };
    let mut mem = match Memory::load(&cfg.state_dir) {
        Ok(m) => m,
        Err(e) => {
            error!("{e}: starting with no memory of pods' modes and slots");
            Memory::default()
        }
    };
    let mut dp = Datapath::load(Some(&cfg.bpffs_dir))?;
    if let Some(from) = dp.migration() {
        info!(
            "upgrading from {from}: it keeps enforcing until every pod is written to this \
             build's maps (layout v{}), then each link moves over atomically",
            enforcer_common::maps::LAYOUT_VERSION
        );
    }
    if dp.adopted() {
        info!(
            "adopted the pinned datapath in {} ({} pods): enforcement never stopped",
            cfg.bpffs_dir.display(),
            dp.current().pods_by_ifindex.len()
        );
        mem.ids.reserve_past(dp.current());
    }
    for stale in dp.remove_stale_link_pins() {
        info!("removed pinned link {stale}: its interface is gone");
    }
    forward_kernel_logs(dp.ebpf());
    let events = crate::flows::Events::open(dp.ebpf())
        .map_err(|e| error!("flow events: {e:#}; `enforcer flows` will have none"))
        .ok();
    let node = kernel_node_config(&cfg, trunk, primary);
    dp.set_node_config(&node)?;
    reserve_snat_ports(&cfg);
    let status = NodeStatus {
        trunk_interface: cfg.node.trunk_interface.clone(),
        default_mode: Some(cfg.mode()),
        always_allowed: cfg.always_allowed().iter().map(|n| n.to_string()).collect(),
        node_local: node_local_summary(&cfg),
        snat: snat_summary(&cfg),
        ..Default::default()
    };
    let (api_tx, mut api_changed) = tokio::sync::mpsc::unbounded_channel();
    let kube_api = match &cfg.kubernetes_api {
        Some(k) => Some(crate::sources::kube_api::KubeApiSource::start(k, api_tx.clone()).await?),
        None => None,
    };
    let ec2_api = match &cfg.ec2_api {
        Some(e) => Some(crate::sources::ec2_api::Ec2ApiSource::start(e, api_tx.clone()).await),
        None => None,
    };
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        not_ready: None,
        apply_seconds: prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_5, 2.0, 14),
        ),
        tables_saved: None,
        names: Default::default(),
        events,
        files_ok_at: None,
        flags,
        config_error: None,
        files: files::FileSource::default(),
        kube_api,
        ec2_api,
        cfg,
        dp,
        node,
        mem,
        status,
        attached: false,
    };
    // Pods' state exists before the trunk delivers anything to them.
    d.apply();
    if d.dp.migration().is_none() {
        d.attach_edges()?;
    }
    d.refresh_status();

    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = d.watch_sources(&changed_tx);
    let control = bind_control(&d.cfg.state_dir)?;
    let (asks_tx, mut asks) = tokio::sync::mpsc::channel(8);
    if !d.cfg.http_address.is_empty() {
        let listener = tokio::net::TcpListener::bind(&d.cfg.http_address)
            .await
            .with_context(|| format!("httpAddress {}", d.cfg.http_address))?;
        info!(
            "serving /healthz, /readyz and /metrics on {}",
            d.cfg.http_address
        );
        tokio::spawn(crate::http::serve(listener, asks_tx));
    }
    let mut links = crate::link_events::LinkEvents::open()
        .map_err(|e| warn!("subscribing to interface events: {e}; checking every 2 s instead"))
        .ok();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    // The programs never wake us per event: their buffer is read on this clock.
    let mut events_tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = hup.recv() => { info!("SIGHUP: re-reading sources"); d.reload(); }
            Some(()) = changed.recv() => {
                // A writer's burst of events is one change.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changed.try_recv().is_ok() {}
                info!("a source file changed: re-reading sources");
                d.reload();
                // The config may name other files now.
                watcher = d.watch_sources(&changed_tx);
            }
            Ok((stream, _)) = control.accept() => d.serve(stream).await,
            Some(ask) = asks.recv() => d.answer(ask),
            Some(()) = api_changed.recv() => {
                // Applied at once; events already queued (a relist, a rollout) join
                // this apply, and those arriving during it the next.
                tokio::task::yield_now().await;
                while api_changed.try_recv().is_ok() {}
                d.apply();
            }
            () = crate::link_events::next(&mut links) => {
                // A host interface appeared, went or was re-created: attach (or drop
                // the stale link) now.
                if d.interfaces_changed() {
                    info!("interface event: attaching what changed");
                    d.apply();
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                d.save_tables();
                // A safety net for interface events missed (or not subscribed to).
                if d.interfaces_changed() {
                    info!("interface check: attaching what changed");
                    d.apply();
                } else {
                    d.refresh_status();
                }
                // A pod past half its flow share (a SYN flood, say): sweep its half-open
                // entries now rather than at the next regular sweep.
                let share = d.cfg.node.flows_per_pod as u64;
                if d.status.pods.iter().any(|p| p.flows * 2 > share) {
                    d.sweep();
                }
            }
            _ = sweep.tick() => d.sweep(),
            _ = events_tick.tick() => d.drain_events(),
        }
    }
    // The pinned programs keep enforcing with the pinned maps until a new daemon adopts
    // them; `enforcer uninstall` is the way to detach.
    info!(
        "stopping; the datapath stays attached and enforcing (pinned in {})",
        d.cfg.bpffs_dir.display()
    );
    let state_dir = d.cfg.state_dir.clone();
    d.save_tables();
    drop(watcher);
    drop(d);
    let _ = std::fs::remove_file(state_dir.join(STATUS_FILE));
    let _ = std::fs::remove_file(crate::control::socket_path(&state_dir));
    Ok(())
}

/// The control socket, root only (a stale one from a killed daemon is replaced).
fn bind_control(state_dir: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = crate::control::socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// What `run` would enforce with this config, computed without the kernel (interfaces
/// are still looked up, so pods whose interface is missing show as pending).
pub fn dry_run(cfg: &Config) -> Result<NodeStatus> {
    let loaded = files::load(cfg);
    let mut recorder = Recorder::default();
    let applied = engine::apply(
        cfg,
        &loaded.snapshot,
        &mut Memory::default(),
        &netdev::lookup,
        &[],
        &mut recorder,
        &mut |_| {},
    );
    let p = applied.plan;
    Ok(NodeStatus {
        source_errors: loaded.errors,
        maps: recorder
            .written
            .map(|s| s.fill_levels(0))
            .unwrap_or_default(),
        trunk_interface: cfg.node.trunk_interface.clone(),
        default_mode: Some(cfg.mode()),
        always_allowed: cfg.always_allowed().iter().map(|n| n.to_string()).collect(),
        node_local: node_local_summary(cfg),
        snat: snat_summary(cfg),
        pods: p.pods,
        ..Default::default()
    })
}

/// The node's own addresses, as status lists them (host-local delivery).
fn node_local_summary(cfg: &Config) -> Vec<String> {
    cfg.node_addresses().iter().map(|n| n.to_string()).collect()
}

/// Whether and how standard-mode pods' off-VPC traffic is source-NATed, in words.
fn snat_summary(cfg: &Config) -> String {
    let n = &cfg.node;
    if n.external_snat {
        return "off: external SNAT (off-VPC traffic leaves through the trunk)".into();
    }
    match (&n.primary_interface, n.primary_ipv4) {
        (Some(dev), Some(ip)) => {
            let mut s = format!(
                "to {ip} via {dev}, ports {}-{}",
                n.snat_ports.min, n.snat_ports.max
            );
            if !n.exclude_snat_cidrs.is_empty() {
                let ex: Vec<String> = n.exclude_snat_cidrs.iter().map(|c| c.to_string()).collect();
                s.push_str(&format!(", excluding {}", ex.join(", ")));
            }
            s
        }
        _ => "off: node.primaryInterface and node.primaryIPv4 are needed for it".into(),
    }
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Keeps the node's own sockets off the NAT ports: adds the range to the kernel's
/// reserved ports (of the daemon's network namespace, the node's), so a port the
/// kernel picks for the node never equals a mapping's. Failing that, the daemon runs
/// on and says why.
fn reserve_snat_ports(cfg: &Config) {
    if !cfg.snat_enabled() {
        return;
    }
    let r = cfg.node.snat_ports;
    let want = format!("{}-{}", r.min, r.max);
    let current = std::fs::read_to_string(RESERVED_PORTS).unwrap_or_default();
    let current = current.trim();
    if current.split(',').any(|p| p == want) {
        return;
    }
    let new = if current.is_empty() {
        want.clone()
    } else {
        format!("{current},{want}")
    };
    match std::fs::write(RESERVED_PORTS, &new) {
        Ok(()) => info!("reserved NAT ports {want} from the node's own sockets"),
        Err(e) => warn!(
            "could not reserve NAT ports {want} in {RESERVED_PORTS} ({e}): a node socket \
             bound explicitly in that range could collide with a NAT mapping"
        ),
    }
}

pub fn read_status(state_dir: &Path) -> Result<NodeStatus> {
    let path = state_dir.join(STATUS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is `enforcer run` running with this state dir?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a status file", path.display()))
}
