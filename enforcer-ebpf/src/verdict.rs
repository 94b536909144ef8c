//! Packet -> verdict for one pod and one direction: fail-closed and fragments first,
//! then related ICMP errors and the flow table (`by_state`), the rules on a miss, a new
//! flow when they allow (`by_rules`). A path that must know where a packet goes before
//! the rules judge it (standard mode) asks the state first and places only a miss.
use enforcer_common::flow::timeout_ns;
use enforcer_common::*;
use enforcer_ebpf::parse::*;

use crate::cache::{self, Clock};
use crate::conntrack::{InsertError, flow_hit, flow_key, insert_flow, normalise_ports};
use crate::events::{emit, rule_hit, would_drop};
use crate::fragments::{later_fragment, record_first};
use crate::maps::{FLOWS, NODE_CONFIG};
use crate::policy::{always_allowed, policy_allows};

pub enum Verdict {
    Allow(Reason),
    Drop(Reason),
}

/// What the state alone says about a packet, or that the rules must judge it (with the
/// node's settings and the time, read once).
pub enum State {
    Decided(Verdict),
    Rules(&'static NodeConfig, u64),
}

#[inline(always)]
pub fn decide(pod: &PodInfo, pkt: &mut Packet, dir: Direction, clock: Clock) -> Verdict {
    match by_state(pod, pkt, dir, clock) {
        State::Decided(v) => v,
        State::Rules(cfg, now) => by_rules(cfg, pod, pkt, dir, now),
    }
}

/// Fail-closed, later fragments, related ICMP errors and the flow table: everything
/// that needs no rule. `clock`: read by the program before any look-up (see `cache`).
#[inline(always)]
pub fn by_state(pod: &PodInfo, pkt: &mut Packet, dir: Direction, clock: Clock) -> State {
    let now = clock.now;
    if pod.is_fail_closed() {
        if always_allowed(pkt, dir) {
            return State::Decided(Verdict::Allow(Reason::AllowAlways));
        }
        emit(
            pkt,
            pod.slot,
            dir,
            Reason::DropFailClosed,
            (0, 0),
            false,
            now,
        );
        return State::Decided(Verdict::Drop(Reason::DropFailClosed));
    }
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return State::Decided(Verdict::Drop(Reason::DropInternal));
    };
    if pkt.kind == KIND_FRAGMENT {
        return State::Decided(later_fragment(pkt, pod.slot, now));
    }
    if pkt.kind == KIND_ICMP_ERROR && pkt.inner_ok != 0 {
        // The quoted packet travelled the other way: an error about a tracked flow is
        // related traffic and passes.
        let back = dir.reverse();
        let mut k = flow_key(&pkt.inner, pkt.family, back);
        normalise_ports(&mut k);
        // SAFETY: hash values stay valid for the program's run (RCU); we only read.
        if let Some(v) = unsafe { FLOWS.get(k) }
            && v.slot == pod.slot
            && now.saturating_sub(v.last_seen_ns) <= timeout_ns(cfg, v.state)
        {
            return State::Decided(allowed(pkt, pod, Reason::AllowRelated, now));
        }
    }
    let mut key = flow_key(&pkt.outer, pkt.family, dir);
    normalise_ports(&mut key);
    if pkt.kind != KIND_ICMP_ERROR {
        if let Some(hit) = cache::flow(&key, pod.slot, dir, pkt.tcp_flags, clock.copy) {
            pkt.flow_path = hit.path;
            pkt.nat_port = hit.nat_port;
            pkt.flow_peer = hit.flow_peer;
            return State::Decided(allowed(pkt, pod, Reason::AllowFlow, now));
        }
        if flow_hit(cfg, pod, &key, pkt, dir, clock) {
            return State::Decided(allowed(pkt, pod, Reason::AllowFlow, now));
        }
    }
    State::Rules(cfg, now)
}

/// An allowing verdict; a first fragment's is recorded for the fragments after it.
#[inline(always)]
fn allowed(pkt: &Packet, pod: &PodInfo, r: Reason, now: u64) -> Verdict {
    if pkt.frag_first != 0 {
        record_first(pkt, pod.slot, now);
    }
    Verdict::Allow(r)
}

/// The rules, for a packet the state did not decide; a new flow when they allow.
#[inline(always)]
pub fn by_rules(
    cfg: &NodeConfig,
    pod: &PodInfo,
    pkt: &mut Packet,
    dir: Direction,
    now: u64,
) -> Verdict {
    let (v, cookies) = rules_verdict(cfg, pod, pkt, dir, now);
    match v {
        // A new flow (or an untracked packet) the rules allowed, and every drop.
        Verdict::Allow(Reason::AllowPolicy) => {
            rule_hit(cookies.0);
            rule_hit(cookies.1);
            emit(pkt, pod.slot, dir, Reason::AllowPolicy, cookies, false, now)
        }
        Verdict::Drop(r @ (Reason::DropNoRule | Reason::DropNoNodeRule))
            if pod.is_audit() && pkt.snat != SNAT_REVERSE =>
        {
            // Audit: reported as it would be, then tracked and passed as if allowed.
            emit(pkt, pod.slot, dir, r, (0, 0), true, now);
            would_drop(pod.slot);
            if pkt.kind == KIND_ICMP_ERROR || pkt.icmp_query == ICMP_REPLY {
                // Never state of their own, as when a rule allows them.
                return Verdict::Allow(Reason::AllowPolicy);
            }
            let mut key = flow_key(&pkt.outer, pkt.family, dir);
            normalise_ports(&mut key);
            let v = new_flow(cfg, pod, &key, pkt, dir, (0, 0), now, Reason::AllowPolicy);
            if let Verdict::Allow(r) = v {
                return allowed(pkt, pod, r, now);
            }
            return v;
        }
        Verdict::Drop(r) => emit(pkt, pod.slot, dir, r, (0, 0), false, now),
        Verdict::Allow(_) => {}
    }
    if let Verdict::Allow(r) = v {
        return allowed(pkt, pod, r, now);
    }
    v
}

#[inline(always)]
fn rules_verdict(
    cfg: &NodeConfig,
    pod: &PodInfo,
    pkt: &mut Packet,
    dir: Direction,
    now: u64,
) -> (Verdict, (u32, u32)) {
    let mut key = flow_key(&pkt.outer, pkt.family, dir);
    normalise_ports(&mut key);
    if pkt.snat == SNAT_REVERSE {
        // Sent to the node's NAT port: only state lets it in; it never opens a flow.
        return (Verdict::Drop(Reason::DropNoRule), (0, 0));
    }
    if pkt.snat == SNAT_FORWARD {
        // Off-VPC through source NAT: the node's groups instead of the pod's (SPEC §5).
        // Always tracked, even when always-allowed: the reply finds its pod by the flow's
        // NAT mapping.
        let (allowed, cookie) = match policy_allows(pod.node_policy_id, pkt, dir) {
            Some((c, _)) => (Reason::AllowPolicy, c),
            None if always_allowed(pkt, dir) => (Reason::AllowAlways, 0),
            None => return (Verdict::Drop(Reason::DropNoNodeRule), (0, 0)),
        };
        let v = new_flow(cfg, pod, &key, pkt, dir, (0, cookie), now, allowed);
        return (v, (0, cookie));
    }
    let Some((cookie, mut flags)) = policy_allows(pod.policy_id, pkt, dir) else {
        // Checked only when no rule allows: it costs an LPM lookup that the common
        // path should not pay.
        if always_allowed(pkt, dir) {
            return (Verdict::Allow(Reason::AllowAlways), (0, 0));
        }
        return (Verdict::Drop(Reason::DropNoRule), (0, 0));
    };
    let mut node_cookie = 0;
    if pod.mode() == PodMode::Standard {
        // Standard mode (SPEC §5): the node's groups must allow it too.
        let Some((c, f)) = policy_allows(pod.node_policy_id, pkt, dir) else {
            if always_allowed(pkt, dir) {
                return (Verdict::Allow(Reason::AllowAlways), (0, 0));
            }
            return (Verdict::Drop(Reason::DropNoNodeRule), (cookie, 0));
        };
        node_cookie = c;
        // Untracked only when both allowing rules are.
        flags &= f;
    }
    // EC2 leaves only TCP and UDP untracked; an all-protocols rule still tracks ICMP
    // and the rest. ICMP errors and query replies never create state of their own.
    let untracked = flags & RULE_UNTRACKED != 0 && matches!(pkt.outer.proto, PROTO_TCP | PROTO_UDP);
    if untracked || pkt.kind == KIND_ICMP_ERROR || pkt.icmp_query == ICMP_REPLY {
        return (Verdict::Allow(Reason::AllowPolicy), (cookie, node_cookie));
    }
    let v = new_flow(
        cfg,
        pod,
        &key,
        pkt,
        dir,
        (cookie, node_cookie),
        now,
        Reason::AllowPolicy,
    );
    (v, (cookie, node_cookie))
}

/// Records the new flow the rules allowed; `allowed` is the verdict when it fits.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would cost stack"
)]
fn new_flow(
    cfg: &NodeConfig,
    pod: &PodInfo,
    key: &FlowKey,
    pkt: &mut Packet,
    dir: Direction,
    cookies: (u32, u32),
    now: u64,
    allowed: Reason,
) -> Verdict {
    match insert_flow(cfg, pod, key, pkt, dir, cookies, now) {
        Ok(()) => Verdict::Allow(allowed),
        Err(InsertError::PodShare) => Verdict::Drop(Reason::DropPodFlowLimit),
        Err(InsertError::TableFull) => Verdict::Drop(Reason::DropFlowTableFull),
        Err(InsertError::SnatExhausted) => Verdict::Drop(Reason::DropSnatExhausted),
    }
}
