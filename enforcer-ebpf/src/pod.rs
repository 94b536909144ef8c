//! The pod side: the pod by its host interface, anti-spoofing, link plumbing and
//! link-scope traffic, the pod's outbound rules, then by destination: the trunk (the
//! VPC), the node's stack, another pod of the node, or source NAT and the primary ENI.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use enforcer_common::*;
use enforcer_ebpf::parse::{
    KIND_FRAGMENT, KIND_ND, KIND_NORMAL, Packet, SNAT_FORWARD, load, parse_l2, parse_l3_pulled,
};
use enforcer_ebpf::rewrite::{mac_words, push_tag, set_macs};

use crate::bypass::{addr_of, is_link_local, is_link_plumbing, is_link_scope};
use crate::cache::{self, Clock};
use crate::conntrack::mark_path;
use crate::counters::count;
use crate::dest::{class_of, is_node, needs_snat, same_node_pod};
use crate::exit::Exit;
use crate::maps::{NODE_CONFIG, POD_BY_IFINDEX, SCRATCH, TAIL_CALLS};
use crate::snat::translate_out;
use crate::verdict::{State, Verdict, by_rules, by_state, decide};

/// A packet the fast path did not forward (`pod_egress_full`).
#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Exit> {
    let clock = Clock::read();
    let pod = this_pod(ctx, clock)?;
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
    let cfg = NODE_CONFIG
        .get(0)
        .ok_or(Exit::Internal(pod.slot, "node config lookup"))?;
    let pkt = scratch(pod.slot)?;
    parse_l3_pulled(ctx, &l2, pkt).map_err(|e| Exit::Drop(pod.slot, e.reason()))?;
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
    // Where is it going? A standard-mode pod must know before the rules judge: host-local
    // traffic bypasses groups, and off-VPC traffic is judged by the node's groups and
    // source-NATed. Its established flows know their path, so the state goes first and
    // only a miss is placed (fragments are placed first: a bypassed datagram has no
    // first-fragment record). A strict pod's rules decide first (a denied packet never
    // pays for the look-ups).
    // (Link-scope traffic stays on the node: never placed.)
    let placed = bypasses_groups(pod) && !link_scope;
    let mut state = None;
    if placed {
        if pkt.kind != KIND_FRAGMENT {
            state = Some(by_state(pod, pkt, Direction::Egress, clock));
        }
        let known = matches!(
            state,
            Some(State::Decided(Verdict::Allow(Reason::AllowFlow)))
        );
        if !known {
            let class = class_of(pkt.family, &pkt.outer.dst);
            if class & DEST_NODE != 0 {
                return to_node(ctx, pod, Reason::AllowHostLocal);
            }
            if let Some(peer) = same_node_pod(pkt) {
                return to_host_local(ctx, pod, pkt, peer, Reason::AllowHostLocal);
            }
            if pkt.family == AF_V4 && needs_snat(class) {
                if !snat_translatable(pkt) {
                    return Err(Exit::Drop(pod.slot, Reason::DropNoSnat));
                }
                pkt.snat = SNAT_FORWARD;
            }
        }
    }
    let state = match state {
        Some(s) => s,
        None => by_state(pod, pkt, Direction::Egress, clock),
    };
    // The rules once in the program: each copy would cost the verifier a walk of them.
    let v = match state {
        State::Decided(v) => v,
        State::Rules(cfg, now) => by_rules(cfg, pod, pkt, Direction::Egress, now),
    };
    let reason = verdict(pod, v)?;
    if link_scope {
        // Allowed, and link-scope: delivered on the node, never onto the trunk.
        count(pod.slot, reason, ctx.len());
        return Ok(TC_ACT_OK);
    }
    if reason == Reason::AllowFlow {
        match pkt.flow_path {
            PATH_SNAT => return to_primary(ctx, cfg, pod, pkt, reason),
            PATH_NODE => return to_node(ctx, pod, reason),
            PATH_POD => {
                let peer = match pkt.flow_peer {
                    0 => same_node_pod(pkt),
                    known => Some(known),
                };
                if let Some(peer) = peer {
                    return to_host_local(ctx, pod, pkt, peer, reason);
                }
            }
            _ => {}
        }
        return to_trunk(ctx, cfg, pod, reason);
    }
    if pkt.snat == SNAT_FORWARD {
        return to_primary(ctx, cfg, pod, pkt, reason);
    }
    if !placed {
        if is_node(pkt.family, &pkt.outer.dst) {
            if reason == Reason::AllowPolicy {
                mark_path(pkt, Direction::Egress, PATH_NODE, 0);
            }
            return to_node(ctx, pod, reason);
        }
        if let Some(peer) = same_node_pod(pkt) {
            return to_host_local(ctx, pod, pkt, peer, reason);
        }
    }
    to_trunk(ctx, cfg, pod, reason)
}

/// The verdict's reason when it allows; a drop counted on the pod when not.
#[inline(always)]
pub fn verdict(pod: &PodInfo, v: Verdict) -> Result<Reason, Exit> {
    match v {
        Verdict::Allow(r) => Ok(r),
        Verdict::Drop(r) => Err(Exit::Drop(pod.slot, r)),
    }
}

/// Through the VPC: tagged with the pod's VLAN, out of the trunk.
#[inline(always)]
fn to_trunk(ctx: &TcContext, cfg: &NodeConfig, pod: &PodInfo, reason: Reason) -> Result<i32, Exit> {
    push_tag(ctx, pod.vlan, &mac_words(&cfg.gateway_mac, &pod.mac))
        .map_err(|step| Exit::Internal(pod.slot, step))?;
    count(pod.slot, reason, ctx.len());
    // SAFETY: a plain helper call with no pointers.
    Ok(unsafe { bpf_redirect(cfg.trunk_ifindex, 0) } as i32)
}

/// To the node itself: up its stack from the host interface, never hairpinned
/// through the VPC.
#[inline(always)]
fn to_node(ctx: &TcContext, pod: &PodInfo, reason: Reason) -> Result<i32, Exit> {
    count(pod.slot, reason, ctx.len());
    Ok(TC_ACT_OK)
}

/// Source-NATed to the node's primary address and out of the primary ENI (to the
/// next hop the node's own routes and neighbours give).
#[inline(always)]
fn to_primary(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pod: &PodInfo,
    pkt: &Packet,
    reason: Reason,
) -> Result<i32, Exit> {
    if pkt.nat_port == 0 {
        return Err(Exit::Internal(pod.slot, "NAT port"));
    }
    translate_out(ctx, cfg, pkt).map_err(|step| Exit::Internal(pod.slot, step))?;
    count(pod.slot, reason, ctx.len());
    // SAFETY: no neighbour parameters (a null pointer with length 0 is the helper's
    // documented "look the next hop up" form).
    Ok(unsafe { bpf_redirect_neigh(cfg.primary_ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// What source NAT can translate: TCP, UDP and ICMP query requests, unfragmented or
/// the first fragment. Anything else off-VPC is dropped, never sent with the pod's
/// address (`drop_no_snat`).
#[inline(always)]
fn snat_translatable(pkt: &Packet) -> bool {
    pkt.kind == KIND_NORMAL
        && (matches!(pkt.outer.proto, PROTO_TCP | PROTO_UDP)
            || (pkt.outer.proto == PROTO_ICMP && pkt.icmp_query == ICMP_REQUEST))
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
    pkt.sender_slot = pod.slot;
    // SAFETY: the slot holds our own `pod_host_local` (set by the loader); on success
    // control never comes back.
    unsafe { TAIL_CALLS.tail_call(ctx, tail::HOST_LOCAL) };
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
    // pod_egress filled it on this CPU just before the tail call, the sender's slot
    // included (no second look-up of the sender).
    let pkt = scratch(0)?;
    let slot = pkt.sender_slot;
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    let peer = unsafe { POD_BY_IFINDEX.get(pkt.peer_ifindex) }
        .ok_or(Exit::Drop(slot, Reason::DropUnknownPod))?;
    if !addressed_to(peer, pkt) {
        // A flow's remembered interface now belongs to another pod (its own was
        // re-created): never deliver to a pod the packet is not addressed to.
        return Err(Exit::Drop(slot, Reason::DropUnknownPod));
    }
    let sent = Reason::from_index(pkt.sent).ok_or(Exit::Internal(slot, "host-local verdict"))?;
    let received = if bypasses_groups(peer) {
        Reason::AllowHostLocal
    } else {
        match decide(peer, pkt, Direction::Ingress, Clock::read()) {
            Verdict::Allow(r) => r,
            Verdict::Drop(r) => return Err(Exit::Drop(peer.slot, r)),
        }
    };
    if sent == Reason::AllowPolicy {
        mark_path(pkt, Direction::Egress, PATH_POD, peer.host_ifindex);
    }
    if received == Reason::AllowPolicy {
        // SAFETY: the context's skb pointer is valid for the program's run.
        let sender_ifindex = unsafe { (*ctx.skb.skb).ifindex };
        mark_path(pkt, Direction::Ingress, PATH_POD, sender_ifindex);
    }
    set_macs(ctx, &peer.mac, &peer.host_mac).map_err(|step| Exit::Internal(slot, step))?;
    count(slot, sent, ctx.len());
    count(peer.slot, received, ctx.len());
    Ok(into_pod(peer.host_ifindex))
}

/// Whether the packet's destination is `pod`'s address.
#[inline(always)]
fn addressed_to(pod: &PodInfo, pkt: &Packet) -> bool {
    if pkt.family == AF_V4 {
        pkt.outer.dst[0] == u32::from_ne_bytes(pod.ipv4)
    } else {
        pkt.outer.dst == addr_of(&pod.ipv6)
    }
}

/// The pod behind the host interface the packet is on (at its ingress or egress);
/// `clock` read before (see `cache`).
#[inline(always)]
pub fn this_pod(ctx: &TcContext, clock: Clock) -> Result<&'static PodInfo, Exit> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    cached_pod(ifindex, clock, |k| {
        // SAFETY: hash values stay valid for the program's run (RCU); we only read.
        unsafe { POD_BY_IFINDEX.get(k) }
    })
    .ok_or(Exit::Drop(0, Reason::DropUnknownPod))
}

/// The pod under cache key `key`: the per-CPU copy when it may serve, else `lookup`'s
/// answer (copied for the next packets). `clock` is read before the look-up.
#[inline(always)]
pub fn cached_pod(
    key: u32,
    clock: Clock,
    lookup: impl FnOnce(u32) -> Option<&'static PodInfo>,
) -> Option<&'static PodInfo> {
    if let Some(p) = cache::pod(key, clock.copy) {
        return Some(p);
    }
    let found = lookup(key & 0x7fff_ffff)?;
    Some(cache::fill_pod(key, found, clock.copy))
}

/// The per-CPU parsed packet (too large for the BPF stack).
#[inline(always)]
pub fn scratch(slot: u32) -> Result<&'static mut Packet, Exit> {
    let pkt = SCRATCH
        .get_ptr_mut(0)
        .ok_or(Exit::Drop(slot, Reason::DropInternal))?;
    // SAFETY: the per-CPU scratch slot is ours for the program's run (programs do not
    // nest on a CPU; a tail call hands it on, which is how `pod_host_local` reads it).
    Ok(unsafe { &mut *pkt })
}

/// Into the pod behind `host_ifindex`: straight into its namespace
/// (`bpf_redirect_peer`), so the frame never passes the host interface's egress, where
/// `pod_ingress` judges what the node sends.
#[inline(always)]
pub fn into_pod(host_ifindex: u32) -> i32 {
    // SAFETY: a plain helper call with no pointers.
    (unsafe { bpf_redirect_peer(host_ifindex, 0) }) as i32
}

/// Standard mode bypasses groups for host-local traffic; a fail-closed pod never does.
#[inline(always)]
pub fn bypasses_groups(pod: &PodInfo) -> bool {
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
