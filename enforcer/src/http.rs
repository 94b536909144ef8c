//! The daemon's HTTP endpoints (`httpAddress`): `/healthz` (the process answers),
//! `/readyz` (the datapath is attached and every source has answered once) and
//! `/metrics` (Prometheus text, prometheus-client). Readiness and metrics are answered
//! by the daemon's loop, so counters are read from the maps at the moment of the scrape.
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::status::NodeStatus;

/// A question for the daemon's loop.
pub enum Ask {
    /// Ok, or why not ready.
    Ready(oneshot::Sender<Result<(), String>>),
    /// The metrics text.
    Metrics(oneshot::Sender<String>),
}

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, asks: mpsc::Sender<Ask>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(asks);
    if let Err(e) = axum::serve(listener, app).await {
        log::warn!("HTTP endpoints stopped: {e}");
    }
}

async fn ready(State(asks): State<mpsc::Sender<Ask>>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    let answer = match asks.send(Ask::Ready(tx)).await {
        Ok(()) => rx.await.unwrap_or(Err("the daemon did not answer".into())),
        Err(_) => Err("the daemon's loop is gone".into()),
    };
    match answer {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(asks): State<mpsc::Sender<Ask>>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    let text = match asks.send(Ask::Metrics(tx)).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    match text {
        Some(t) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            t,
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            "the daemon did not answer\n".to_string(),
        ),
    }
}

type Labels = Vec<(String, String)>;

/// The metrics of `st` (read from the maps just before) and the apply-latency
/// histogram. Labels are bounded: pod and reason, map, state — never a flow.
pub fn render(st: &NodeStatus, apply_seconds: &Histogram) -> String {
    let mut r = Registry::with_prefix("podsg");
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for p in st.pods.iter().filter(|p| p.slot != 0) {
        for (reason, [n, b]) in &p.counters {
            let l = vec![
                ("namespace".to_string(), p.namespace.clone()),
                ("pod".to_string(), p.name.clone()),
                ("reason".to_string(), reason.clone()),
            ];
            packets.get_or_create(&l).inc_by(*n);
            bytes.get_or_create(&l).inc_by(*b);
        }
    }
    for (reason, [n, b]) in &st.unattributed {
        let l = vec![
            ("namespace".to_string(), String::new()),
            ("pod".to_string(), String::new()),
            ("reason".to_string(), reason.clone()),
        ];
        packets.get_or_create(&l).inc_by(*n);
        bytes.get_or_create(&l).inc_by(*b);
    }
    r.register(
        "packets",
        "Packets judged, per pod and reason (allow_*, drop_*); no pod: traffic of no known pod",
        packets,
    );
    r.register("bytes", "Bytes judged, per pod and reason", bytes);
    let lost = Family::<Labels, Counter>::default();
    for p in st.pods.iter().filter(|p| p.slot != 0) {
        let l = vec![
            ("namespace".to_string(), p.namespace.clone()),
            ("pod".to_string(), p.name.clone()),
        ];
        lost.get_or_create(&l).inc_by(p.events_lost);
    }
    let audit = Family::<Labels, Gauge>::default();
    let would = Family::<Labels, Counter>::default();
    for p in st.pods.iter().filter(|p| p.audit) {
        let l = vec![
            ("namespace".to_string(), p.namespace.clone()),
            ("pod".to_string(), p.name.clone()),
        ];
        audit.get_or_create(&l).set(1);
        would.get_or_create(&l).inc_by(p.would_drop);
    }
    r.register(
        "pod_audit",
        "1 for each pod in audit mode: packets its rules deny are NOT dropped, only reported",
        audit,
    );
    r.register(
        "would_drop",
        "Audit mode: packets the pod's rules deny that passed",
        would,
    );
    r.register(
        "events_lost",
        "Flow events not reported (over the pod's budget, or the buffer full); the packets were judged all the same",
        lost,
    );
    let entries = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    for (map, [used, cap]) in &st.maps {
        let l = vec![("map".to_string(), map.clone())];
        entries.get_or_create(&l).set(*used as i64);
        capacity.get_or_create(&l).set(*cap as i64);
    }
    r.register("map_entries", "Entries in use, per map", entries);
    r.register("map_capacity", "Entries a map can hold", capacity);
    let pods = Family::<Labels, Gauge>::default();
    for state in ["enforced", "fail-closed", "pending", "not-branch"] {
        pods.get_or_create(&vec![("state".to_string(), state.to_string())])
            .set(0);
    }
    for p in &st.pods {
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        pods.get_or_create(&vec![("state".to_string(), state)])
            .inc();
    }
    r.register("pods", "Pods known, by state", pods);
    let errors = Gauge::<i64>::default();
    errors.set(st.source_errors.len() as i64);
    r.register(
        "source_errors",
        "Source problems now (status lists them): their last good data stays enforced",
        errors,
    );
    let last_success = Family::<Labels, Gauge>::default();
    let failing = Family::<Labels, Gauge>::default();
    for h in &st.source_health {
        let l = vec![("source".to_string(), h.source.clone())];
        if let Some(t) = h.last_success {
            last_success.get_or_create(&l).set(t as i64);
        }
        failing.get_or_create(&l).set(h.failing as i64);
    }
    r.register(
        "source_last_success_timestamp_seconds",
        "Unix time of each source's last success (files: all read cleanly; ec2: an answer; kubernetes/<Kind>: a list or event)",
        last_success,
    );
    r.register(
        "source_failing",
        "1 while a source fails (its last good data stays enforced)",
        failing,
    );
    let xdp = Gauge::<i64>::default();
    xdp.set(st.trunk_xdp.starts_with("attached") as i64);
    r.register(
        "trunk_xdp_attached",
        "1 while the trunk's XDP pre-filter runs (0: TC alone drops what it would, at more cost; status says why)",
        xdp,
    );
    let generation = Gauge::<i64>::default();
    generation.set(st.generation as i64);
    r.register("generation", "Applies so far", generation);
    r.register(
        "apply_seconds",
        "Time from a change to its maps written (plan, writes, attaches)",
        apply_seconds.clone(),
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &r) {
        log::warn!("encoding metrics: {e}");
    }
    out
}
