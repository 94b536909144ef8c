//! The pod side: the pod by its host interface, anti-spoofing, link plumbing and
//! link-scope traffic, the pod's outbound rules, then tagged out of the trunk.
use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect, programs::TcContext};
use enforcer_common::{AF_V4, AF_V6, Direction, PodInfo, Reason};
use enforcer_ebpf::parse::{KIND_ND, KIND_NORMAL, Packet, load, parse_l2, parse_l3_pulled};
use enforcer_ebpf::rewrite::push_tag;

use crate::bypass::{addr_of, is_link_local, is_link_plumbing, is_link_scope};
use crate::counters::count;
use crate::exit::Exit;
use crate::maps::{NODE_CONFIG, POD_BY_IFINDEX, SCRATCH};
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
    let reason = match decide(pod, pkt, Direction::Egress) {
        Verdict::Allow(r) => r,
        Verdict::Drop(r) => return Err(Exit::Drop(pod.slot, r)),
    };
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
