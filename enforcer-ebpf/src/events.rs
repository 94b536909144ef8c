//! Flow events (every denied packet, every new flow the rules allow) into the `EVENTS`
//! ring buffer, within each pod's budget: a token bucket per pod and CPU. Events over
//! the budget, or that find the buffer full, are counted in `EVENTS_LOST`; the packet's
//! verdict never depends on them. Written without waking the reader, which drains the
//! buffer on its own clock.
use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;
use enforcer_common::*;
use enforcer_ebpf::parse::Packet;

use crate::conntrack::flow_key;
use crate::maps::{EVENT_BUCKETS, EVENTS, EVENTS_LOST, RULE_HITS, WOULD_DROP};

const NS_PER_TOKEN: u64 = 1_000_000_000 / EVENTS_PER_SECOND;

/// Takes a token from the pod's bucket on this CPU.
#[inline(always)]
fn take_token(slot: u32, now: u64) -> bool {
    let Some(b) = EVENT_BUCKETS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's element of a per-CPU array: no other writer while we run.
    let b = unsafe { &mut *b };
    let earned = now.saturating_sub(b.refilled_ns) / NS_PER_TOKEN;
    if earned > 0 {
        b.tokens = (b.tokens + earned).min(EVENT_BURST);
        b.refilled_ns = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

#[inline(always)]
fn lost(slot: u32) {
    if let Some(n) = EVENTS_LOST.get_ptr_mut(slot) {
        // SAFETY: this CPU's element of a per-CPU array.
        unsafe { *n += 1 };
    }
}

/// Reports the packet's verdict for `slot`'s pod (cookies: the allowing rules; audit:
/// a denied packet audit mode let pass). `now`: the verdict's clock reading (the
/// event's time, and the bucket's), not read again.
#[inline(always)]
pub fn emit(
    pkt: &Packet,
    slot: u32,
    dir: Direction,
    reason: Reason,
    cookies: (u32, u32),
    audit: bool,
    now: u64,
) {
    if !take_token(slot, now) {
        lost(slot);
        return;
    }
    let k = flow_key(&pkt.outer, pkt.family, dir);
    let ev = FlowEvent {
        time_ns: now,
        local: k.local,
        remote: k.remote,
        local_port: k.local_port,
        remote_port: k.remote_port,
        slot,
        cookie: cookies.0,
        node_cookie: cookies.1,
        proto: k.proto,
        family: k.family,
        direction: dir as u8,
        reason: reason as u8,
        audit: audit as u8,
        _pad: [0; 3],
    };
    if EVENTS.output(ev, BPF_RB_NO_WAKEUP as u64).is_err() {
        lost(slot);
    }
}

/// Counts a flow admitted by rule `cookie` (0: none).
#[inline(always)]
pub fn rule_hit(cookie: u32) {
    if cookie == 0 {
        return;
    }
    match RULE_HITS.get_ptr_mut(cookie) {
        // SAFETY: this CPU's value of a per-CPU hash: no other writer while we run.
        Some(n) => unsafe { *n += 1 },
        None => {
            // Another CPU may have added it meanwhile: then it stays uncounted once.
            let _ = RULE_HITS.insert(cookie, 1, aya_ebpf::bindings::BPF_NOEXIST as u64);
        }
    }
}

/// Counts a packet audit mode let pass that the rules deny.
#[inline(always)]
pub fn would_drop(slot: u32) {
    if let Some(n) = WOULD_DROP.get_ptr_mut(slot) {
        // SAFETY: this CPU's element of a per-CPU array.
        unsafe { *n += 1 };
    }
}
