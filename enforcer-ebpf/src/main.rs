//! podsg datapath: security groups per pod, enforced at the trunk and at each pod's
//! host-side interface.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd: core atomics have no read-modify-write on the BPF target"
)]

mod maps;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_vlan_pop},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::error;
use enforcer_common::*;

use enforcer_ebpf::parse::*;
use enforcer_ebpf::rewrite::*;

use crate::maps::*;
use crate::verdict::*;

#[inline(always)]
fn drop(ctx: &TcContext, slot: u32, reason: Reason) -> i32 {
    count(slot, reason, ctx.len());
    TC_ACT_SHOT
}

/// A helper failed on a packet we meant to pass: counted like any drop, and logged
/// (aya-log), since it means a kernel or daemon problem, not a policy decision. Never on
/// the common path, so the log machinery costs nothing per packet.
#[inline(never)]
fn internal_error(ctx: &TcContext, slot: u32, what: &str) -> i32 {
    error!(
        ctx,
        "podsg: {} failed (pod slot {}), packet dropped", what, slot
    );
    drop(ctx, slot, Reason::DropInternal)
}

/// Frames from the VPC: one VLAN per branch ENI. Checks the pod's inbound rules, strips
/// the tag and hands the frame to the pod's interface.
#[classifier]
pub fn trunk_ingress(ctx: TcContext) -> i32 {
    let l2 = match parse_l2(&ctx) {
        Ok(l2) => l2,
        Err(e) => return drop(&ctx, 0, e.reason()),
    };
    // Untagged frames are the trunk's own traffic (the node's), not a branch pod's.
    let Some(vlan) = l2.vlan else {
        return TC_ACT_OK;
    };
    // A reference, not a copy.
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    let Some(pod) = (unsafe { POD_BY_VLAN.get(vlan as u32) }) else {
        return drop(&ctx, 0, Reason::DropUnknownVlan);
    };
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return drop(&ctx, pod.slot, Reason::DropInternal);
    };
    // SAFETY: the per-CPU scratch slot is ours for the program's run.
    let pkt = unsafe { &mut *pkt };
    if let Err(e) = parse_l3_pulled(&ctx, &l2, pkt) {
        return drop(&ctx, pod.slot, e.reason());
    }
    // Neighbour discovery and MLD from the VPC are not plumbing of the pod's link (its
    // neighbour is the host-side interface): they meet the pod's inbound rules.
    let reason = match decide(pod, pkt, Direction::Ingress) {
        Verdict::Allow(r) => r,
        Verdict::Drop(r) => return drop(&ctx, pod.slot, r),
    };
    // Pops the tag from metadata or from the bytes, whichever holds it.
    // SAFETY: the helper takes the program's own skb; packet pointers are re-read after.
    if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        return internal_error(&ctx, pod.slot, "VLAN pop");
    }
    if let Err(step) = set_macs(&ctx, &pod.mac, &pod.host_mac) {
        return internal_error(&ctx, pod.slot, step);
    }
    count(pod.slot, reason, ctx.len());
    // SAFETY: a plain helper call with no pointers.
    unsafe { bpf_redirect(pod.host_ifindex, 0) as i32 }
}

/// Frames from a pod (TC ingress of its host-side veth): anti-spoofing, the pod's
/// outbound rules, then out of the trunk with the pod's VLAN tag.
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    let Some(pod) = (unsafe { POD_BY_IFINDEX.get(ifindex) }) else {
        return drop(&ctx, 0, Reason::DropUnknownPod);
    };
    let l2 = match parse_l2(&ctx) {
        Ok(l2) => l2,
        Err(e) => return drop(&ctx, pod.slot, e.reason()),
    };
    let Ok(src_mac) = load::<[u8; 6]>(&ctx, 6) else {
        return drop(&ctx, pod.slot, Reason::DropMalformed);
    };
    if src_mac != pod.mac {
        return drop(&ctx, pod.slot, Reason::DropSpoofMac);
    }
    if l2.vlan.is_some() {
        // A pod has no business tagging its own frames.
        return drop(&ctx, pod.slot, Reason::DropEthertype);
    }
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return drop(&ctx, pod.slot, Reason::DropInternal);
    };
    // SAFETY: the per-CPU scratch slot is ours for the program's run.
    let pkt = unsafe { &mut *pkt };
    if let Err(e) = parse_l3_pulled(&ctx, &l2, pkt) {
        return drop(&ctx, pod.slot, e.reason());
    }
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return internal_error(&ctx, pod.slot, "node config lookup");
    };
    if pkt.family == AF_V6 {
        if pkt.kind == KIND_ND && is_link_plumbing(pod, pkt) {
            // The pod resolving its gateway (the host veth), DAD, MLD: stays on the node.
            count(pod.slot, Reason::PassLocal, ctx.len());
            return TC_ACT_OK;
        }
        pkt.kind = if pkt.kind == KIND_ND {
            KIND_NORMAL
        } else {
            pkt.kind
        };
    }
    let link_scope = pkt.family == AF_V6 && is_link_scope(&pkt.outer.dst);
    let spoofed = if pkt.family == AF_V4 {
        pod.ipv4 == [0; 4] || pkt.outer.src[0] != u32::from_ne_bytes(pod.ipv4)
    } else if link_scope && pkt.outer.src == addr_of(&pod.ipv6_ll) {
        false
    } else {
        pod.has_ipv6 == 0 || pkt.outer.src != addr_of(&pod.ipv6)
    };
    if spoofed {
        return drop(&ctx, pod.slot, Reason::DropSpoofIp);
    }
    if link_scope && is_link_local(&pkt.outer.dst) && cfg.node_ipv6 != [0; 16] {
        // The host-side interface's link-local address is the node: judged as traffic
        // to the node's primary address, by the same rules.
        pkt.outer.dst = addr_of(&cfg.node_ipv6);
    }
    let reason = match decide(pod, pkt, Direction::Egress) {
        Verdict::Allow(r) => r,
        Verdict::Drop(r) => return drop(&ctx, pod.slot, r),
    };
    if link_scope {
        // Allowed, and link-scope: delivered on the node, never onto the trunk.
        count(pod.slot, reason, ctx.len());
        return TC_ACT_OK;
    }

    if let Err(step) = push_tag(&ctx, pod.vlan, &cfg.gateway_mac, &pod.mac) {
        return internal_error(&ctx, pod.slot, step);
    }
    count(pod.slot, reason, ctx.len());
    // SAFETY: a plain helper call with no pointers.
    unsafe { bpf_redirect(cfg.trunk_ifindex, 0) as i32 }
}

/// fe80::/10 and multicast ff00::/8: never routed off the pod's link.
#[inline(always)]
fn is_link_scope(dst: &Addr) -> bool {
    is_link_local(dst) || dst[0] as u8 == 0xff
}

/// fe80::/10: the first two bytes, as they sit in the word.
#[inline(always)]
fn is_link_local(a: &Addr) -> bool {
    let (b0, b1) = (a[0] as u8, (a[0] >> 8) as u8);
    b0 == 0xfe && b1 & 0xc0 == 0x80
}

#[inline(always)]
fn addr_of(bytes: &[u8; 16]) -> Addr {
    // SAFETY: same size, and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u8; 16], Addr>(*bytes) }
}

/// Valid link plumbing from the pod (RFC 4861 §6-7, RFC 2710/3810): neighbour
/// discovery with hop limit 255 from the pod's link-local address (or unspecified, for
/// DAD and router solicitation); MLD with hop limit 1 from its link-local address (or
/// unspecified, for an MLDv2 report during DAD). Anything else goes to the rules.
#[inline(always)]
fn is_link_plumbing(pod: &PodInfo, pkt: &Packet) -> bool {
    let ty = (pkt.policy_port >> 8) as u8;
    let unspecified = pkt.outer.src == [0; 4];
    let own = pkt.outer.src == addr_of(&pod.ipv6_ll);
    if (133..=137).contains(&ty) {
        pkt.hop_limit == 255 && (own || (unspecified && (ty == 133 || ty == 135)))
    } else {
        pkt.hop_limit == 1 && (own || (unspecified && ty == 143))
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
