//! The pod side: the pod by its host interface, anti-spoofing, link plumbing and
//! link-scope traffic, the pod's outbound rules, then tagged out of the trunk.
use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect, programs::TcContext};
use enforcer_common::{AF_V4, AF_V6, Direction, PodInfo, PodMode, Reason};
use enforcer_ebpf::parse::{Addr, KIND_ND, KIND_NORMAL, Packet, load, parse_l2, parse_l3_pulled};
use enforcer_ebpf::rewrite::{push_tag, set_macs};

use crate::bypass::{addr_of, is_link_local, is_link_plumbing, is_link_scope};
use crate::conntrack::mark_host_local;
use crate::counters::count;
use crate::exit::Exit;
use crate::maps::{NODE_CONFIG, POD_BY_IFINDEX, POD_BY_IPV4, POD_BY_IPV6, SCRATCH, TAIL_CALLS};
use crate::verdict::{Verdict, decide};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Exit> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    let pod =
        unsafe { POD_BY_IFINDEX.get(ifindex) }.ok_or(Exit::Drop(0, Reason::DropUnknownPod))?;
    let l2 = parse_l2(ctx).map_err(|e| Exit::Drop(pod.slot, e.reason()))?;
    let src_mac =
        load::<[u8; 6]>(ctx, 6).map_err(|_| Exit::Drop(pod.slot, Reason::DropMalformed))?;
    if src_mac != pod.mac {
        return Err(Exit::Drop(pod.slot, Reason::DropSpoofMac));
    }
    if l2.vlan.is_some() {
        // A pod has no business tagging its own frames.
        return Err(Exit::Drop(pod.slot, Reason::DropEthertype));
    }
    let pkt = SCRATCH
        .get_ptr_mut(0)
        .ok_or(Exit::Drop(pod.slot, Reason::DropInternal))?;
    // SAFETY: the per-CPU scratch slot is ours for the program's run.
    let pkt = unsafe { &mut *pkt };
    parse_l3_pulled(ctx, &l2, pkt).map_err(|e| Exit::Drop(pod.slot, e.reason()))?;
    let cfg = NODE_CONFIG
        .get(0)
        .ok_or(Exit::Internal(pod.slot, "node config lookup"))?;
    if pkt.family == AF_V6 {
        if pkt.kind == KIND_ND && is_link_plumbing(pod, pkt) {
            // The pod resolving its gateway (the host veth), DAD, MLD: stays on the node.
            count(pod.slot, Reason::PassLocal, ctx.len());
            return Ok(TC_ACT_OK);
        }
        if pkt.kind == KIND_ND {
            pkt.kind = KIND_NORMAL;
        }
    }
    let link_scope = pkt.family == AF_V6 && is_link_scope(&pkt.outer.dst);
    if spoofed(pod, pkt, link_scope) {
        return Err(Exit::Drop(pod.slot, Reason::DropSpoofIp));
    }
    if link_scope && is_link_local(&pkt.outer.dst) && cfg.node_ipv6 != [0; 16] {
        // The host-side interface's link-local address is the node: judged as traffic
        // to the node's primary address, by the same rules.
        pkt.outer.dst = addr_of(&cfg.node_ipv6);
    }
    // Standard mode bypasses groups toward a pod of this node: ask first. (A strict
    // pod's rules decide first: a denied packet never pays for the look-up.)
    if bypasses_groups(pod)
        && !link_scope
        && let Some(peer) = same_node_pod(pkt)
    {
        return to_host_local(ctx, pod, pkt, peer, Reason::AllowHostLocal);
    }
    let reason = match decide(pod, pkt, Direction::Egress) {
        Verdict::Allow(r) => r,
        Verdict::Drop(r) => return Err(Exit::Drop(pod.slot, r)),
    };
    // Toward a pod of this node? An established flow knows; anything else asks.
    let known_remote = reason == Reason::AllowFlow && pkt.flow_host_local == 0;
    if !link_scope
        && !known_remote
        && let Some(peer) = same_node_pod(pkt)
    {
        return to_host_local(ctx, pod, pkt, peer, reason);
    }
    if link_scope {
        // Allowed, and link-scope: delivered on the node, never onto the trunk.
        count(pod.slot, reason, ctx.len());
        return Ok(TC_ACT_OK);
    }
    push_tag(ctx, pod.vlan, &cfg.gateway_mac, &pod.mac)
        .map_err(|step| Exit::Internal(pod.slot, step))?;
    count(pod.slot, reason, ctx.len());
    // SAFETY: a plain helper call with no pointers.
    Ok(unsafe { bpf_redirect(cfg.trunk_ifindex, 0) } as i32)
}

/// The host interface of another branch pod of this node the packet is addressed to.
#[inline(always)]
fn same_node_pod(pkt: &Packet) -> Option<u32> {
    let d = &pkt.outer.dst;
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    unsafe {
        if pkt.family == AF_V4 {
            POD_BY_IPV4.get(d[0].to_ne_bytes())
        } else {
            POD_BY_IPV6.get(core::mem::transmute::<Addr, [u8; 16]>(*d))
        }
    }
    .copied()
}

/// Hands the packet to `pod_host_local` (a tail call keeps that path, with its second
/// verdict, out of this program's common path). `sent` is the sender's verdict.
#[inline(always)]
fn to_host_local(
    ctx: &TcContext,
    pod: &PodInfo,
    pkt: &mut Packet,
    peer_ifindex: u32,
    sent: Reason,
) -> Result<i32, Exit> {
    pkt.peer_ifindex = peer_ifindex;
    pkt.sent = sent as u32;
    // SAFETY: the slot holds our own `pod_host_local` (set by the loader); on success
    // control never comes back.
    unsafe { TAIL_CALLS.tail_call(ctx, 0) };
    // Only when the slot is empty (a loader bug): never let it through unjudged.
    Err(Exit::Internal(pod.slot, "host-local tail call"))
}

/// Host-local delivery between two pods of the node (`pod_host_local`): never through
/// the VPC. Each side is judged as the VPC would have judged it — the sender's outbound
/// rules (already, in `pod_egress`) and the receiver's inbound rules, each with its own
/// flow state (strict mode) — except that standard mode bypasses groups for host-local
/// traffic (SPEC §5). A drop is counted on the pod whose rules refused. New flows are
/// marked host-local so that their later packets skip the look-up of the receiving pod.
#[inline(always)]
pub fn host_local(ctx: &TcContext) -> Result<i32, Exit> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    let pod =
        unsafe { POD_BY_IFINDEX.get(ifindex) }.ok_or(Exit::Drop(0, Reason::DropUnknownPod))?;
    let pkt = SCRATCH
        .get_ptr_mut(0)
        .ok_or(Exit::Drop(pod.slot, Reason::DropInternal))?;
    // SAFETY: the per-CPU scratch slot is ours for the program's run, and pod_egress
    // filled it on this CPU just before the tail call.
    let pkt = unsafe { &mut *pkt };
    // SAFETY: as above.
    let peer = unsafe { POD_BY_IFINDEX.get(pkt.peer_ifindex) }
        .ok_or(Exit::Drop(pod.slot, Reason::DropUnknownPod))?;
    let sent =
        Reason::from_index(pkt.sent).ok_or(Exit::Internal(pod.slot, "host-local verdict"))?;
    let received = if bypasses_groups(peer) {
        Reason::AllowHostLocal
    } else {
        match decide(peer, pkt, Direction::Ingress) {
            Verdict::Allow(r) => r,
            Verdict::Drop(r) => return Err(Exit::Drop(peer.slot, r)),
        }
    };
    if sent == Reason::AllowPolicy {
        mark_host_local(pkt, Direction::Egress);
    }
    if received == Reason::AllowPolicy {
        mark_host_local(pkt, Direction::Ingress);
    }
    set_macs(ctx, &peer.mac, &peer.host_mac).map_err(|step| Exit::Internal(pod.slot, step))?;
    count(pod.slot, sent, ctx.len());
    count(peer.slot, received, ctx.len());
    // SAFETY: a plain helper call with no pointers.
    Ok(unsafe { bpf_redirect(peer.host_ifindex, 0) } as i32)
}

/// Standard mode bypasses groups for host-local traffic; a fail-closed pod never does.
#[inline(always)]
fn bypasses_groups(pod: &PodInfo) -> bool {
    pod.mode() == PodMode::Standard && !pod.is_fail_closed()
}

/// Anti-spoofing: the source is the pod's address (its link-local one only toward
/// link-scope destinations).
#[inline(always)]
fn spoofed(pod: &PodInfo, pkt: &Packet, link_scope: bool) -> bool {
    if pkt.family == AF_V4 {
        pod.ipv4 == [0; 4] || pkt.outer.src[0] != u32::from_ne_bytes(pod.ipv4)
    } else if link_scope && pkt.outer.src == addr_of(&pod.ipv6_ll) {
        false
    } else {
        pod.has_ipv6 == 0 || pkt.outer.src != addr_of(&pod.ipv6)
    }
}
