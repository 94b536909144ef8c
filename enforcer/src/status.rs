//! What operators see (SPEC §8): per-pod groups, mode, VLAN, rule counts, errors and
//! counters. The daemon writes it to `<stateDir>/status.json`; `enforcer status` reads it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PodState {
    /// Rules are programmed and the pod's interface is attached.
    Enforced,
    /// Something is wrong (see `error`): only always-allowed traffic passes.
    FailClosed,
    /// Waiting for the pod's host-side interface to appear.
    Pending,
    /// Not a branch-ENI pod: not enforced by us.
    NotBranch,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub state: PodState,
    pub groups: Vec<String>,
    pub policies: Vec<String>,
    pub mode: Option<crate::config::Mode>,
    pub vlan: Option<u16>,
    pub interface: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub inbound_rules: usize,
    pub outbound_rules: usize,
    pub policy_id: u32,
    pub slot: u32,
    /// A configuration problem: the pod is (or, once attached, will be) fail-closed.
    pub error: Option<String>,
    /// What the pod waits for before it can be attached (its host interface).
    #[serde(default)]
    pub waiting: Option<String>,
    /// reason -> [packets, bytes]
    #[serde(default)]
    pub counters: BTreeMap<String, [u64; 2]>,
    /// Flow-table entries the pod holds (its share is `node.flowsPerPod`).
    #[serde(default)]
    pub flows: u64,
    /// Flow events not reported (over the pod's budget, or the buffer full).
    #[serde(default)]
    pub events_lost: u64,
    /// Audit mode: packets its rules deny are reported and pass.
    #[serde(default)]
    pub audit: bool,
    /// Audit mode: packets its rules denied that passed.
    #[serde(default)]
    pub would_drop: u64,
}

impl PodStatus {
    /// A pod's status with nothing known yet but its name and state.
    pub fn new(namespace: &str, name: &str, state: PodState) -> PodStatus {
        PodStatus {
            namespace: namespace.to_string(),
            name: name.to_string(),
            state,
            groups: Vec::new(),
            policies: Vec::new(),
            mode: None,
            vlan: None,
            interface: None,
            ipv4: None,
            ipv6: None,
            inbound_rules: 0,
            outbound_rules: 0,
            policy_id: 0,
            slot: 0,
            error: None,
            waiting: None,
            counters: BTreeMap::new(),
            flows: 0,
            events_lost: 0,
            audit: false,
            would_drop: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub trunk_interface: String,
    pub default_mode: Option<crate::config::Mode>,
    pub always_allowed: Vec<String>,
    /// The node's own addresses: pods' traffic to them is delivered on the node.
    #[serde(default)]
    pub node_local: Vec<String>,
    /// Standard mode's source NAT: where to, or why off.
    #[serde(default)]
    pub snat: String,
    /// The trunk's XDP pre-filter: `attached (native)`, or why not.
    #[serde(default)]
    pub trunk_xdp: String,
    /// What each API source holds (object counts, events).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Errors reading the sources; the last good state stays enforced meanwhile.
    pub source_errors: Vec<String>,
    /// Each source's last success and whether it fails now (for /metrics).
    #[serde(default)]
    pub source_health: Vec<SourceHealth>,
    pub pods: Vec<PodStatus>,
    /// Traffic no pod could be named for (unknown VLAN, unknown interface).
    #[serde(default)]
    pub unattributed: BTreeMap<String, [u64; 2]>,
    pub flows: usize,
    /// Map name -> [entries in use, capacity]: how full each table is.
    #[serde(default)]
    pub maps: BTreeMap<String, [usize; 2]>,
    pub generation: u64,
}

pub const STATUS_FILE: &str = "status.json";

/// One source's health.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceHealth {
    /// `files`, `ec2`, or `kubernetes/<Kind>`.
    pub source: String,
    /// Unix time (seconds) of its last success: every file read cleanly, an EC2
    /// answer, a list or event from the watch. None: never.
    pub last_success: Option<u64>,
    /// It fails now (its last good data stays in use).
    pub failing: bool,
}

impl SourceHealth {
    /// `age` seconds ago, as Unix time.
    pub fn unix_time(age: std::time::Duration) -> u64 {
        std::time::SystemTime::now()
            .checked_sub(age)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }
}

impl NodeStatus {
    /// How many pods are enforced (the rest pending or fail-closed).
    pub fn enforced(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| p.state == PodState::Enforced)
            .count()
    }

    pub fn render_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "trunk {}  default mode {:?}  flows {}  generation {}\n",
            self.trunk_interface,
            self.default_mode.unwrap_or_default(),
            self.flows,
            self.generation
        ));
        out.push_str(&format!(
            "always allowed: {}\n",
            self.always_allowed.join(", ")
        ));
        out.push_str(&format!("node-local: {}\n", self.node_local.join(", ")));
        out.push_str(&format!("source NAT: {}\n", self.snat));
        if !self.trunk_xdp.is_empty() {
            out.push_str(&format!("trunk XDP: {}\n", self.trunk_xdp));
        }
        for s in &self.sources {
            out.push_str(&format!("source: {s}\n"));
        }
        if !self.maps.is_empty() {
            let fill: Vec<String> = self
                .maps
                .iter()
                .map(|(name, [used, cap])| format!("{name} {used}/{cap}"))
                .collect();
            out.push_str(&format!("maps: {}\n", fill.join(", ")));
        }
        for e in &self.source_errors {
            out.push_str(&format!("source error: {e}\n"));
        }
        if !self.unattributed.is_empty() {
            let c: Vec<String> = self
                .unattributed
                .iter()
                .map(|(reason, [packets, _])| format!("{reason} {packets}"))
                .collect();
            out.push_str(&format!(
                "no pod (unknown VLAN or interface): {}\n",
                c.join(", ")
            ));
        }
        out.push_str(&format!(
            "{:<32} {:<12} {:<6} {:<7} {:>4} {:>4} {:>6} {:>9} {:>9}  {}\n",
            "POD",
            "STATE",
            "VLAN",
            "MODE",
            "IN",
            "OUT",
            "FLOWS",
            "ALLOWED",
            "DROPPED",
            "GROUPS / ERROR"
        ));
        for p in &self.pods {
            let (mut allowed, mut dropped) = (0, 0);
            for (k, v) in &p.counters {
                if enforcer_common::Reason::from_name(k).is_some_and(|r| r.is_drop()) {
                    dropped += v[0]
                } else {
                    allowed += v[0]
                }
            }
            let state = serde_json::to_value(p.state).unwrap();
            let mode = p
                .mode
                .map(|m| format!("{m:?}").to_lowercase())
                .unwrap_or("-".into());
            out.push_str(&format!(
                "{:<32} {:<12} {:<6} {:<7} {:>4} {:>4} {:>6} {:>9} {:>9}  {}{}\n",
                format!("{}/{}", p.namespace, p.name),
                state.as_str().unwrap_or("?"),
                p.vlan.map(|v| v.to_string()).unwrap_or("-".into()),
                mode,
                p.inbound_rules,
                p.outbound_rules,
                p.flows,
                allowed,
                dropped,
                p.groups.join(","),
                [
                    p.audit.then(|| {
                        format!(
                            "  AUDIT: denied packets pass ({} would have dropped)",
                            p.would_drop
                        )
                    }),
                    p.error.as_ref().map(|e| format!("  ERROR: {e}")),
                    p.waiting.as_ref().map(|w| format!("  WAITING: {w}")),
                ]
                .into_iter()
                .flatten()
                .collect::<String>()
            ));
        }
        out
    }
}
