//! What the node itself sends a pod (TC egress of the pod's host interface): kubelet
//! probes, NodeLocal DNSCache replies, anything the node's stack routes to the pod.
//! Frames our own paths deliver never pass here (they enter the pod's namespace
//! directly), so everything here is judged: the pod's inbound rules (strict mode, each
//! flow with its state), or the host-local bypass (standard mode, from the node's own
//! addresses only).
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use enforcer_common::*;
use enforcer_ebpf::parse::{KIND_ND, KIND_NORMAL, parse_l2, parse_l3_pulled};

use crate::bypass::{addr_of, is_link_local, is_link_scope};
use crate::cache::Clock;
use crate::conntrack::mark_path;
use crate::counters::count;
use crate::dest::is_node;
use crate::exit::Exit;
use crate::maps::NODE_CONFIG;
use crate::pod::{bypasses_groups, scratch, this_pod, verdict};
use crate::verdict::decide;

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Exit> {
    let clock = Clock::read();
    let pod = this_pod(ctx, clock)?;
    let l2 = parse_l2(ctx).map_err(|e| Exit::Drop(pod.slot, e.reason()))?;
    let pkt = scratch(pod.slot)?;
    // ARP included: the CNI gives the node a permanent neighbour entry for the pod, as
    // it gives the pod one for its gateway (the pod's ARP replies are dropped too).
    parse_l3_pulled(ctx, &l2, pkt).map_err(|e| Exit::Drop(pod.slot, e.reason()))?;
    let cfg = NODE_CONFIG
        .get(0)
        .ok_or(Exit::Internal(pod.slot, "node config lookup"))?;
    if pkt.family == AF_V6 && is_link_scope(&pkt.outer.src) {
        if pkt.kind == KIND_ND {
            // The node's own link plumbing toward the pod (resolving it, MLD).
            count(pod.slot, Reason::PassLocal, ctx.len());
            return Ok(TC_ACT_OK);
        }
        if is_link_local(&pkt.outer.src) && cfg.node_ipv6 != [0; 16] {
            // The host interface's link-local address is the node: judged as its
            // primary address, as the pod's traffic the other way is.
            pkt.outer.src = addr_of(&cfg.node_ipv6);
        }
    }
    if pkt.kind == KIND_ND {
        pkt.kind = KIND_NORMAL;
    }
    let from_node = bypasses_groups(pod) && is_node(pkt.family, &pkt.outer.src);
    if from_node {
        count(pod.slot, Reason::AllowHostLocal, ctx.len());
        return Ok(TC_ACT_OK);
    }
    let reason = verdict(pod, decide(pod, pkt, Direction::Ingress, clock))?;
    if reason == Reason::AllowPolicy && is_node(pkt.family, &pkt.outer.src) {
        // The pod's replies go back up the node's stack, not out of the trunk.
        mark_path(pkt, Direction::Ingress, PATH_NODE, 0);
    }
    count(pod.slot, reason, ctx.len());
    Ok(TC_ACT_OK)
}
