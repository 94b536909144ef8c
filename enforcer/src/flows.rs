//! Flow events: read from the programs' ring buffer on the daemon's clock (the programs
//! never wake it), named (pod, rule), kept (the last `KEPT`) for `enforcer flows` and
//! streamed to followers.
use std::collections::VecDeque;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use enforcer_common::{FlowEvent, Reason};
use serde::{Deserialize, Serialize};

use crate::model::group::GroupCatalog;
use crate::policy::compile::CookieTable;
use crate::status::PodStatus;

/// Events kept for `enforcer flows` (about 3 MiB).
pub const KEPT: usize = 10_000;

/// One event as people read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Unix time, seconds.
    pub time: f64,
    pub namespace: String,
    pub pod: String,
    /// `egress` (the pod sends) or `ingress`.
    pub direction: String,
    pub protocol: String,
    /// The pod's end and the other, `addr:port` (`[v6]:port`).
    pub local: String,
    pub remote: String,
    pub verdict: String,
    /// The counter it went to: `allow_policy`, `drop_no_rule`...
    pub reason: String,
    /// The allowing rule: `sg-… outbound rule #N`.
    pub rule: Option<String>,
    /// Standard mode: the node group's allowing rule.
    pub node_rule: Option<String>,
}

impl FlowRecord {
    pub fn line(&self) -> String {
        let by = match (&self.rule, &self.node_rule) {
            (Some(r), Some(n)) => format!(" by {r}; node groups: {n}"),
            (Some(r), None) => format!(" by {r}"),
            _ => String::new(),
        };
        let arrow = if self.direction == "egress" {
            "->"
        } else {
            "<-"
        };
        let ms = (self.time * 1000.0) as u64;
        let (h, m, sec) = (ms / 3_600_000 % 24, ms / 60_000 % 60, ms / 1000 % 60);
        format!(
            "{h:02}:{m:02}:{sec:02}.{:03}Z {}/{} {} {} {arrow} {} {} {}{by}",
            ms % 1000,
            self.namespace,
            self.pod,
            self.protocol,
            self.local,
            self.remote,
            self.verdict.to_uppercase(),
            self.reason
        )
    }

    pub fn is_of(&self, pod: Option<&str>) -> bool {
        pod.is_none_or(|p| p.split_once('/') == Some((&self.namespace, &self.pod)))
    }
}

/// Names a cookie's rule: `sg-web outbound rule #0`, with its `SecurityGroupRuleId`
/// when the source gave one (`catalog`).
pub fn rule_name(cookies: &CookieTable, catalog: &GroupCatalog, cookie: u32) -> Option<String> {
    (cookie != 0).then(|| {
        cookies
            .rule(cookie)
            .map_or(format!("rule cookie {cookie}"), |r| {
                catalog.rule_name(&r.group, r.direction, r.index)
            })
    })
}

fn end(family: u8, addr: &[u8; 16], port: u16, proto: u8) -> String {
    let ip: std::net::IpAddr = if family == enforcer_common::AF_V4 {
        std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
    } else {
        std::net::Ipv6Addr::from(*addr).into()
    };
    if !matches!(proto, 6 | 17) {
        return ip.to_string();
    }
    std::net::SocketAddr::new(ip, port).to_string()
}

/// One flow-table entry of a pod, as `enforcer flows table` shows it. Every entry is a
/// tracked flow: traffic allowed by untracked rules never enters the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    pub protocol: String,
    pub local: String,
    pub remote: String,
    /// Who opened it: `egress` (the pod) or `ingress`.
    pub opened: String,
    pub state: String,
    /// Seconds since it was opened; `None` for a flow carried over from a layout that
    /// did not record it.
    pub age_seconds: Option<u64>,
    /// Seconds since its last packet.
    pub idle_seconds: u64,
    /// Where it goes: `vpc`, `pod` (another pod of the node), `node`, `snat`.
    pub path: String,
    /// The rule that allowed it (and the node group's, standard mode).
    pub rule: Option<String>,
    pub node_rule: Option<String>,
}

pub fn row(
    k: &enforcer_common::FlowKey,
    v: &enforcer_common::FlowValue,
    now_ns: u64,
    cookies: &CookieTable,
    catalog: &GroupCatalog,
) -> FlowRow {
    use enforcer_common::{FlowState, PATH_NODE, PATH_POD, PATH_SNAT};
    FlowRow {
        protocol: protocol_name(k.proto),
        local: end(k.family, &k.local, k.local_port, k.proto),
        remote: end(k.family, &k.remote, k.remote_port, k.proto),
        opened: if v.origin_dir == enforcer_common::Direction::Egress as u8 {
            "egress".into()
        } else {
            "ingress".into()
        },
        state: FlowState::from_raw(v.state)
            .map_or(format!("state-{}", v.state), |s| s.name().to_string()),
        age_seconds: (v.opened_ns != 0).then(|| now_ns.saturating_sub(v.opened_ns) / 1_000_000_000),
        idle_seconds: now_ns.saturating_sub(v.last_seen_ns) / 1_000_000_000,
        path: match v.path {
            PATH_POD => "pod",
            PATH_NODE => "node",
            PATH_SNAT => "snat",
            _ => "vpc",
        }
        .into(),
        rule: rule_name(cookies, catalog, v.cookie),
        node_rule: rule_name(cookies, catalog, v.node_cookie),
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".to_string(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => format!("proto-{n}"),
    }
}

/// The event, named: its pod by slot, its rules by cookie, its time on the wall clock
/// (`offset_ns`: realtime minus the programs' monotonic clock).
pub fn record(
    ev: &FlowEvent,
    pods: &[PodStatus],
    cookies: &CookieTable,
    catalog: &GroupCatalog,
    offset_ns: i128,
) -> FlowRecord {
    let pod = pods.iter().find(|p| p.slot == ev.slot && ev.slot != 0);
    let reason = Reason::ALL.into_iter().find(|r| *r as u8 == ev.reason);
    let protocol = protocol_name(ev.proto);
    FlowRecord {
        time: (i128::from(ev.time_ns) + offset_ns) as f64 / 1e9,
        namespace: pod.map_or(String::new(), |p| p.namespace.clone()),
        pod: pod.map_or(format!("slot-{}", ev.slot), |p| p.name.clone()),
        direction: if ev.direction == enforcer_common::Direction::Egress as u8 {
            "egress".into()
        } else {
            "ingress".into()
        },
        protocol,
        local: end(ev.family, &ev.local, ev.local_port, ev.proto),
        remote: end(ev.family, &ev.remote, ev.remote_port, ev.proto),
        verdict: if ev.audit != 0 {
            "would-drop".into()
        } else if reason.is_some_and(|r| r.name().starts_with("allow")) {
            "allow".into()
        } else {
            "drop".into()
        },
        reason: reason.map_or(format!("reason-{}", ev.reason), |r| r.name().to_string()),
        rule: rule_name(cookies, catalog, ev.cookie),
        node_rule: rule_name(cookies, catalog, ev.node_cookie),
    }
}

/// Realtime minus CLOCK_MONOTONIC_COARSE (what `bpf_ktime_get_coarse_ns` reads), now.
fn clock_offset_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    real - mono
}

pub struct Events {
    ring: RingBuf<MapData>,
    recent: VecDeque<FlowRecord>,
    tx: tokio::sync::broadcast::Sender<FlowRecord>,
}

impl Events {
    /// Takes the programs' `EVENTS` ring buffer.
    pub fn open(ebpf: &mut aya::Ebpf) -> Result<Events> {
        let map = ebpf
            .take_map(enforcer_common::map_names::EVENTS)
            .context("map EVENTS missing from the object")?;
        Ok(Events {
            ring: RingBuf::try_from(map)?,
            recent: VecDeque::with_capacity(KEPT),
            tx: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Reads what the programs wrote since the last call; returns how many.
    pub fn drain(
        &mut self,
        pods: &[PodStatus],
        cookies: &CookieTable,
        catalog: &GroupCatalog,
    ) -> usize {
        let offset = clock_offset_ns();
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the programs write whole FlowEvents (plain old data, every bit
            // pattern valid); the item holds at least that many bytes.
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let r = record(&ev, pods, cookies, catalog, offset);
            if self.recent.len() == KEPT {
                self.recent.pop_front();
            }
            self.recent.push_back(r.clone());
            // No follower is no error.
            let _ = self.tx.send(r);
            n += 1;
        }
        n
    }

    /// The kept events of `pod` (all with `None`), oldest first.
    pub fn recent(&self, pod: Option<&str>) -> impl Iterator<Item = &FlowRecord> {
        self.recent.iter().filter(move |r| r.is_of(pod))
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FlowRecord> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::group::Direction as RuleDir;
    use crate::status::PodState;

    /// One table: the raw event, and what a person reads of it.
    #[test]
    fn events_are_named_by_pod_and_rule() {
        let mut cookies = CookieTable::default();
        let c = cookies.cookie("sg-web", RuleDir::Outbound, 2);
        let mut catalog = GroupCatalog::default();
        catalog
            .rule_ids
            .insert(("sg-web".into(), RuleDir::Outbound, 2), "sgr-0123".into());
        let mut web = PodStatus::new("shop", "web", PodState::Enforced);
        web.slot = 7;
        let mut v6 = [0u8; 16];
        v6[..2].copy_from_slice(&[0xfd, 0]);
        v6[15] = 5;
        for (ev, want) in [
            (
                FlowEvent {
                    time_ns: 2_500_000_000,
                    local: [10, 0, 1, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote: [10, 0, 2, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    local_port: 40000,
                    remote_port: 443,
                    slot: 7,
                    cookie: c,
                    proto: 6,
                    family: enforcer_common::AF_V4,
                    direction: enforcer_common::Direction::Egress as u8,
                    reason: Reason::AllowPolicy as u8,
                    ..FlowEvent::default()
                },
                "00:00:03.500Z shop/web tcp 10.0.1.11:40000 -> 10.0.2.5:443 ALLOW allow_policy by sg-web outbound rule #2 (sgr-0123)",
            ),
            (
                FlowEvent {
                    time_ns: 2_500_000_000,
                    remote: v6,
                    slot: 9,
                    proto: 58,
                    family: enforcer_common::AF_V6,
                    direction: enforcer_common::Direction::Ingress as u8,
                    reason: Reason::DropNoRule as u8,
                    ..FlowEvent::default()
                },
                "00:00:03.500Z /slot-9 icmpv6 :: <- fd00::5 DROP drop_no_rule",
            ),
        ] {
            let r = record(
                &ev,
                std::slice::from_ref(&web),
                &cookies,
                &catalog,
                1_000_000_000,
            );
            assert_eq!(r.line(), want);
        }
    }
}
