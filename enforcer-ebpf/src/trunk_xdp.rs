//! The trunk's first look, in XDP: before the kernel has built an skb for the frame,
//! drop what `trunk_ingress` would drop anyway and what read-only look-ups can tell —
//! an unknown VLAN, a frame on a pod's VLAN that is not IP or not addressed to the pod,
//! a new flow no inbound rule allows. Everything else passes on to `trunk_ingress`,
//! which decides in full (flow state, fragments, ICMP errors, audit, fail-closed, the
//! node's groups in standard mode).
//!
//! A reply whose flow copy this CPU holds (the common inbound frame) passes at once,
//! on a handful of header words (`fast::copied_reply`), with the copy's word for TC in
//! the frame's metadata (`vouch`), so that `trunk_ingress` does not find it again.
//!
//! A pre-filter only: it never lets through what TC would drop, and drops nothing TC
//! would pass, so a node where it cannot be attached enforces exactly the same (the
//! test_run table in `tests/test_run/xdp.rs` holds the two to that).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use enforcer_common::{Direction, PodInfo, Reason};
use enforcer_ebpf::parse::{KIND_NORMAL, ParseError, parse_l2, parse_l3};

use crate::cache::{self, Clock, CopyClock, vlan_key};
use crate::conntrack::{flow_key, normalise_ports};
use crate::counters::count;
use crate::events::emit;
use crate::fast;
use crate::maps::{FLOWS, POD_BY_VLAN};
use crate::pod::{cached_pod, scratch};
use crate::policy::{always_allowed, policy_allows};
use crate::trunk::misaddressed;
use crate::vouch;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let copy = CopyClock::read();
    if let Some(e) = fast::copied_reply(ctx, copy) {
        vouch::give(ctx, e);
        return xdp_action::XDP_PASS;
    }
    let clock = Clock::after(copy);
    let len = (ctx.data_end() - ctx.data()) as u32;
    let Ok(l2) = parse_l2(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // Untagged frames are the node's own traffic on the trunk.
    let Some(vlan) = l2.vlan else {
        return xdp_action::XDP_PASS;
    };
    let Some(pod) = cached_pod(vlan_key(vlan), clock, |k| {
        // SAFETY: hash values stay valid for the program's run (RCU); we only read.
        unsafe { POD_BY_VLAN.get(k) }
    }) else {
        return dropped(0, Reason::DropUnknownVlan, len);
    };
    let Ok(pkt) = scratch(pod.slot) else {
        return xdp_action::XDP_PASS;
    };
    match parse_l3(ctx, &l2, pkt) {
        Ok(()) => {}
        Err(ParseError::Ethertype) => return dropped(pod.slot, Reason::DropEthertype, len),
        // Perhaps only past what XDP sees directly: TC pulls and parses again.
        Err(ParseError::Truncated) => return xdp_action::XDP_PASS,
    }
    if misaddressed(pod, pkt) {
        return dropped(pod.slot, Reason::DropSpoofIp, len);
    }
    if !judged_here(pod, pkt.kind) {
        return xdp_action::XDP_PASS;
    }
    let dir = Direction::Ingress;
    let mut key = flow_key(&pkt.outer, pkt.family, dir);
    normalise_ports(&mut key);
    // Any entry, whatever its age or state: TC judges it (and refreshes it).
    if cache::flow(&key, pod.slot, dir, pkt.tcp_flags, clock.copy).is_some() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: hash values stay valid for the program's run (RCU); we only test presence.
    if unsafe { FLOWS.get(key) }.is_some() {
        return xdp_action::XDP_PASS;
    }
    if policy_allows(pod.policy_id, pkt, dir).is_some() || always_allowed(pkt, dir) {
        return xdp_action::XDP_PASS;
    }
    emit(
        pkt,
        pod.slot,
        dir,
        Reason::DropNoRule,
        (0, 0),
        false,
        clock.now,
    );
    dropped(pod.slot, Reason::DropNoRule, len)
}

/// Whether the rules alone decide this pod's packet here: not while the pod is fail-
/// closed (the always-allowed list decides) or in audit (a denied packet passes), and
/// only for a plain packet (fragments, ICMP errors and neighbour discovery need state or
/// checks that TC makes).
#[inline(always)]
fn judged_here(pod: &PodInfo, kind: u8) -> bool {
    !pod.is_fail_closed() && !pod.is_audit() && kind == KIND_NORMAL
}

#[inline(always)]
fn dropped(slot: u32, reason: Reason, len: u32) -> u32 {
    count(slot, reason, len);
    xdp_action::XDP_DROP
}
