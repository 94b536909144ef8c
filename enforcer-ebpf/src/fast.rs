//! The common packet in few instructions: a TCP or UDP packet with a plain header (IPv4
//! without options, not a fragment; IPv6 without extension headers, not to a link-scope
//! address) of an established flow through the VPC whose copy this CPU holds (`cache`),
//! either way:
//! - out (`pod_egress`): from the pod, untagged, forwarded to the trunk with its VLAN;
//! - in (`trunk_ingress`): from the VPC on the pod's VLAN, addressed to the pod,
//!   delivered into the pod.
//!
//! It is recognised from a handful of header words and forwarded with what the copy
//! holds, without the pod's entry, the node's settings or the full parse. The copy
//! stands for the checks the full path made when it was filled — the pod found by this
//! interface or VLAN, not fail-closed, the packet's source (out) or destination (in) its
//! address — and the fast path repeats what a packet can change: the interface or VLAN,
//! the source MAC (out), the destination address (in), the flow (its key, direction, no
//! state change). Anything else answers `None` and is tail-called to the full program,
//! which judges it from the start. Each fast path is a program of its own so that under
//! real traffic, where the stack runs between packets and evicts our code, the common
//! packet's instructions are a few contiguous cache lines rather than pieces of a large
//! program.
use aya_ebpf::{
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};
use enforcer_common::tail;
use enforcer_common::*;
use enforcer_ebpf::parse::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, Frame, Tuple, load};
use enforcer_ebpf::rewrite::push_tag;

use crate::bypass::is_link_scope;
use crate::cache::{self, CopyClock, FlowCacheEntry};
use crate::conntrack::flow_key;
use crate::counters::count;
use crate::exit::Exit;
use crate::maps::TAIL_CALLS;
use crate::trunk;
use crate::vouch;

/// `pod_egress`: forwards the packet from its flow's copy, or hands it to
/// `pod_egress_full`.
#[inline(always)]
pub fn out(ctx: &TcContext) -> Result<i32, Exit> {
    if let Some(copy) = established(ctx, CopyClock::read()) {
        return to_trunk(ctx, copy);
    }
    full(ctx, tail::EGRESS_FULL)
}

/// `trunk_ingress`: delivers the frame from its flow's copy, or hands it to
/// `trunk_ingress_full`.
#[inline(always)]
pub fn inbound(ctx: &TcContext) -> Result<i32, Exit> {
    // What `trunk_xdp` found already.
    if let Some(v) = vouch::taken(ctx) {
        return trunk::deliver(ctx, v.slot, &v.macs, v.host_ifindex, Reason::AllowFlow);
    }
    if let Some(copy) = from_vpc(ctx, CopyClock::read()) {
        return to_pod(ctx, copy);
    }
    full(ctx, tail::TRUNK_FULL)
}

/// The full program in tail-call slot `slot`.
#[inline(always)]
fn full(ctx: &TcContext, slot: u32) -> Result<i32, Exit> {
    // SAFETY: the slot holds our own full program (set by the loader); on success
    // control never comes back.
    unsafe { TAIL_CALLS.tail_call(ctx, slot) };
    // Only when the slot is empty (a loader bug): never let it through unjudged.
    Err(Exit::Internal(0, "tail call to the full program"))
}

/// The copy that delivers the frame in `ctx` (the trunk's), if it is such a frame.
#[inline(always)]
fn from_vpc(ctx: &TcContext, clock: CopyClock) -> Option<&'static FlowCacheEntry> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let skb = unsafe { &*ctx.skb.skb };
    // The VLAN, in metadata (the stack takes it out of the bytes before TC) or in the
    // bytes; untagged frames are the node's, and a VLAN no pod has (0) is no pod's.
    if skb.vlan_present == 0 {
        // Still in the bytes (as `BPF_PROG_TEST_RUN` hands it over).
        return tagged_in_bytes(ctx, clock);
    }
    let vlan = (skb.vlan_tci & 0x0fff) as u16;
    recognise::<UNTAGGED, _, _>(
        ctx,
        #[inline(always)]
        |t, tcp_flags, family, _| reply_copy(vlan, t, tcp_flags, family, clock),
    )
}

/// For `trunk_xdp`: the copy of a reply (its tag in the bytes, as XDP sees every tag)
/// that `trunk_ingress` would deliver it from: XDP passes it at once, with its word
/// (`vouch`) that TC delivers on.
#[inline(always)]
pub fn copied_reply(ctx: &XdpContext, clock: CopyClock) -> Option<&'static FlowCacheEntry> {
    tagged_in_bytes(ctx, clock)
}

/// The copy for a frame whose 802.1Q tag is in its bytes: the tag's VLAN, then the
/// frame behind it.
#[inline(always)]
fn tagged_in_bytes<F: Frame>(ctx: &F, clock: CopyClock) -> Option<&'static FlowCacheEntry> {
    let tag: u32 = load(ctx, 12).ok()?;
    if u16::from_be(tag as u16) != ETH_P_8021Q {
        return None;
    }
    let vlan = u16::from_be((tag >> 16) as u16) & 0x0fff;
    recognise::<TAGGED, _, _>(
        ctx,
        #[inline(always)]
        |t, tcp_flags, family, _| reply_copy(vlan, t, tcp_flags, family, clock),
    )
}

/// The copy serving a reply with tuple `t` on `vlan` (0: no pod's).
#[inline(always)]
fn reply_copy(
    vlan: u16,
    t: &Tuple,
    tcp_flags: u8,
    family: u8,
    clock: CopyClock,
) -> Option<&'static FlowCacheEntry> {
    if vlan == 0 {
        return None;
    }
    let key = flow_key(t, family, Direction::Ingress);
    cache::ingress_from_vpc(&key, vlan, &t.dst, tcp_flags, clock)
}

/// Into the pod, as the full path delivers an allowed frame.
#[inline(always)]
fn to_pod(ctx: &TcContext, e: &FlowCacheEntry) -> Result<i32, Exit> {
    trunk::deliver(ctx, e.slot, &e.macs, e.host_ifindex, Reason::AllowFlow)
}

/// `then` of a plain TCP or UDP packet's tuple, TCP flags and family, its network
/// header at `L3`, and the 12 bytes before that (untagged: the end of the destination
/// MAC, the source MAC, the ethertype). `then` is inlined once per family, so each
/// family's path has its key words known (IPv4's half zero) instead of one path for
/// both that keeps the key on the stack. Each caller marks its closure
/// `#[inline(always)]`: called from two places, LLVM kept the inbound ones as
/// BPF-to-BPF calls, the tuple passed on the stack.
#[inline(always)]
fn recognise<const L3: usize, F: Frame, R>(
    ctx: &F,
    then: impl Fn(&Tuple, u8, u8, &[u32; 3]) -> Option<R>,
) -> Option<R> {
    let eth: [u32; 3] = load(ctx, L3 - 10).ok()?;
    match u16::from_be(eth[2] as u16) {
        ETH_P_IP => {
            let (t, tcp_flags, family) = v4::<L3, F>(ctx)?;
            then(&t, tcp_flags, family, &eth)
        }
        ETH_P_IPV6 => {
            let (t, tcp_flags, family) = v6::<L3, F>(ctx)?;
            then(&t, tcp_flags, family, &eth)
        }
        _ => None,
    }
}

/// Where the network header starts: untagged, and with one 802.1Q tag in the bytes.
const UNTAGGED: usize = 14;
const TAGGED: usize = 18;

/// The copy that forwards the packet in `ctx` (a pod's), if it is such a packet.
#[inline(always)]
fn established(ctx: &TcContext, clock: CopyClock) -> Option<&'static FlowCacheEntry> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let skb = unsafe { &*ctx.skb.skb };
    if skb.vlan_present != 0 {
        return None;
    }
    recognise::<UNTAGGED, _, _>(
        ctx,
        #[inline(always)]
        |t, tcp_flags, family, eth| egress_copy(skb.ifindex, eth, t, tcp_flags, family, clock),
    )
}

/// The copy of the flow of a packet from interface `ifindex` with tuple `t` whose
/// first 12 bytes from byte 4 are `eth` (the end of the destination MAC, the source
/// MAC, the ethertype), if it serves.
#[inline(always)]
fn egress_copy(
    ifindex: u32,
    eth: &[u32; 3],
    t: &Tuple,
    tcp_flags: u8,
    family: u8,
    clock: CopyClock,
) -> Option<&'static FlowCacheEntry> {
    let key = flow_key(t, family, Direction::Egress);
    let e = cache::egress_to_vpc(&key, ifindex, tcp_flags, clock)?;
    // The source MAC (bytes 6..12: the high half of word 4..8, then 8..12) is the pod's,
    // which the copy's MAC words hold at the same places.
    let ok = (eth[0] ^ e.macs[1]) >> 16 == 0 && eth[1] == e.macs[2];
    ok.then_some(e)
}

/// IPv4 without options, not a fragment (nor the first of several): the tuple, the TCP
/// flags and the family.
#[inline(always)]
fn v4<const L3: usize, F: Frame>(ctx: &F) -> Option<(Tuple, u8, u8)> {
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
fn v6<const L3: usize, F: Frame>(ctx: &F) -> Option<(Tuple, u8, u8)> {
    // The fixed header as five double words: the flow key holds the addresses as double
    // words too, so the halves split here are joined again for free, where ten word
    // loads were joined pair by pair (and spilled to the stack meanwhile).
    let h: [u64; 5] = load(ctx, L3).ok()?;
    let (version, next) = (h[0] as u8 >> 4, (h[0] >> 48) as u8);
    let halves = |x: u64| (x as u32, (x >> 32) as u32);
    let ((s0, s1), (s2, s3)) = (halves(h[1]), halves(h[2]));
    let ((d0, d1), (d2, d3)) = (halves(h[3]), halves(h[4]));
    let dst = [d0, d1, d2, d3];
    if version != 6 || is_link_scope(&dst) {
        return None;
    }
    let (sport, dport, flags) = ports(ctx, L3 + 40, next)?;
    let t = Tuple {
        src: [s0, s1, s2, s3],
        dst,
        sport,
        dport,
        proto: next,
    };
    Some((t, flags, AF_V6))
}

/// TCP or UDP at `off`: the ports (host order) and TCP's flags (0 for UDP).
#[inline(always)]
fn ports(ctx: &impl Frame, off: usize, proto: u8) -> Option<(u16, u16, u8)> {
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
