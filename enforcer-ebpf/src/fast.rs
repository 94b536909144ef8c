//! The common packet in few instructions: a pod's TCP or UDP packet, plain header (IPv4
//! without options, not a fragment; IPv6 without extension headers, not to a link-scope
//! address), untagged, of an established flow through the VPC whose copy this CPU holds
//! (`cache`). It is recognised from a handful of header words and
//! forwarded with what the copy holds, without the pod's entry, the node's settings or
//! the full parse. The copy stands for the checks the full path made when it was
//! filled — the pod found by this interface, not fail-closed, the packet's source its
//! address — and the fast path repeats what a packet can change: the interface, the
//! source MAC, the flow (its key, direction, no state change). Anything else answers
//! `None` and takes the full path, which judges the packet from the start.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use enforcer_common::tail;
use enforcer_common::*;
use enforcer_ebpf::parse::{ETH_P_IP, ETH_P_IPV6, Tuple, load};
use enforcer_ebpf::rewrite::push_tag;

use crate::bypass::is_link_scope;
use crate::cache::{self, Clock, FlowCacheEntry};
use crate::conntrack::flow_key;
use crate::counters::count;
use crate::exit::Exit;
use crate::maps::TAIL_CALLS;

/// `pod_egress`: forwards the packet from its flow's copy, or hands it to
/// `pod_egress_full`. A program of its own, so that under real traffic — where the
/// stack runs between packets and evicts our code — the common packet's instructions
/// are a few contiguous cache lines rather than pieces of the full program.
#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Exit> {
    if let Some(copy) = established(ctx, Clock::read()) {
        return to_trunk(ctx, copy);
    }
    // SAFETY: the slot holds our own `pod_egress_full` (set by the loader); on success
    // control never comes back.
    unsafe { TAIL_CALLS.tail_call(ctx, tail::EGRESS_FULL) };
    // Only when the slot is empty (a loader bug): never let it through unjudged.
    Err(Exit::Internal(0, "egress tail call"))
}

/// Ethernet header length (untagged: checked).
const L3: usize = 14;

/// The copy that forwards the packet in `ctx`, if it is such a packet.
#[inline(always)]
fn established(ctx: &TcContext, clock: Clock) -> Option<&'static FlowCacheEntry> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let skb = unsafe { &*ctx.skb.skb };
    if skb.vlan_present != 0 {
        return None;
    }
    // Bytes 4..16: the source MAC and the ethertype (with the network header's first two).
    let eth: [u32; 3] = load(ctx, 4).ok()?;
    let (t, tcp_flags, family) = match u16::from_be(eth[2] as u16) {
        ETH_P_IP => v4(ctx)?,
        ETH_P_IPV6 => v6(ctx)?,
        _ => return None,
    };
    let key = flow_key(&t, family, Direction::Egress);
    let e = cache::egress_to_vpc(&key, skb.ifindex, tcp_flags, clock)?;
    // The source MAC (bytes 6..12: the high half of word 4..8, then 8..12) is the pod's,
    // which the copy's MAC words hold at the same places.
    let ok = (eth[0] ^ e.macs[1]) >> 16 == 0 && eth[1] == e.macs[2];
    ok.then_some(e)
}

/// IPv4 without options, not a fragment (nor the first of several): the tuple, the TCP
/// flags and the family.
#[inline(always)]
fn v4(ctx: &TcContext) -> Option<(Tuple, u8, u8)> {
    // Version, IHL, ..., protocol, addresses: five words, one bounds check.
    let h: [u32; 5] = load(ctx, L3).ok()?;
    let (vihl, frag, proto) = (
        h[0] as u8,
        u16::from_be((h[1] >> 16) as u16),
        (h[2] >> 8) as u8,
    );
    if vihl != 0x45 || frag & 0x3fff != 0 {
        return None;
    }
    let (sport, dport, flags) = ports(ctx, L3 + 20, proto)?;
    let t = Tuple {
        src: [h[3], 0, 0, 0],
        dst: [h[4], 0, 0, 0],
        sport,
        dport,
        proto,
    };
    Some((t, flags, AF_V4))
}

/// IPv6 with TCP or UDP right after the fixed header (no extension header), to a
/// destination that is not link-scope: the full path keeps link-scope traffic on the
/// node, which a copy of a VPC flow must never short-cut.
#[inline(always)]
fn v6(ctx: &TcContext) -> Option<(Tuple, u8, u8)> {
    let h: [u32; 10] = load(ctx, L3).ok()?;
    let (version, next) = (h[0] as u8 >> 4, (h[1] >> 16) as u8);
    let dst = [h[6], h[7], h[8], h[9]];
    if version != 6 || is_link_scope(&dst) {
        return None;
    }
    let (sport, dport, flags) = ports(ctx, L3 + 40, next)?;
    let t = Tuple {
        src: [h[2], h[3], h[4], h[5]],
        dst,
        sport,
        dport,
        proto: next,
    };
    Some((t, flags, AF_V6))
}

/// TCP or UDP at `off`: the ports (host order) and TCP's flags (0 for UDP).
#[inline(always)]
fn ports(ctx: &TcContext, off: usize, proto: u8) -> Option<(u16, u16, u8)> {
    let w: u32 = load(ctx, off).ok()?;
    let flags = match proto {
        // The flags byte is the high half of the word at offset 12 of the TCP header.
        PROTO_TCP => (load::<u16>(ctx, off + 12).ok()? >> 8) as u8,
        PROTO_UDP => 0,
        _ => return None,
    };
    Some((
        u16::from_be(w as u16),
        u16::from_be((w >> 16) as u16),
        flags,
    ))
}

/// Out of the trunk with the pod's VLAN, as the full path's `to_trunk` does.
#[inline(always)]
fn to_trunk(ctx: &TcContext, e: &FlowCacheEntry) -> Result<i32, Exit> {
    push_tag(ctx, e.vlan, &e.macs).map_err(|step| Exit::Internal(e.slot, step))?;
    count(e.slot, Reason::AllowFlow, ctx.len());
    // SAFETY: a plain helper call with no pointers.
    Ok(unsafe { bpf_redirect(e.trunk_ifindex, 0) } as i32)
}
