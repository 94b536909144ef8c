//! The primary ENI's way in: replies to source-NATed flows (and ICMP errors about
//! them) are translated back, judged by their pod's flow state and delivered into the
//! pod. Everything else is the node's own traffic and goes up its stack untouched.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use enforcer_common::*;
use enforcer_ebpf::parse::{
    ETH_P_IP, KIND_FRAGMENT, KIND_ICMP_ERROR, SNAT_REVERSE, load, parse_l2, parse_l3_pulled,
};
use enforcer_ebpf::rewrite::set_macs;

use crate::cache::Clock;
use crate::counters::count;
use crate::exit::Exit;
use crate::maps::{NODE_CONFIG, POD_BY_IFINDEX, SCRATCH};
use crate::pod::{into_pod, verdict};
use crate::snat::{lookup_back, to_pod_view, translate_back};
use crate::verdict::decide;

/// Offset of the IPv4 destination in an untagged frame.
const IP_DST: usize = 14 + 16;

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Exit> {
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return Ok(TC_ACT_OK);
    };
    let Ok(l2) = parse_l2(ctx) else {
        return Ok(TC_ACT_OK);
    };
    // Only IPv4 is translated (AWS does not NAT IPv6), and only to the node's address:
    // one load decides for nearly all of the node's own traffic.
    if l2.ethertype != ETH_P_IP || l2.vlan.is_some() || cfg.snat_port_min == 0 {
        return Ok(TC_ACT_OK);
    }
    match load::<u32>(ctx, IP_DST) {
        Ok(dst) if dst == u32::from_ne_bytes(cfg.node_ipv4) => {}
        _ => return Ok(TC_ACT_OK),
    }
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: the per-CPU scratch slot is ours for the program's run.
    let pkt = unsafe { &mut *pkt };
    // A frame we cannot parse, or a later fragment (no ports), is nobody's flow: the
    // node's. (Fragmented replies to translated flows do not reach their pod.)
    if parse_l3_pulled(ctx, &l2, pkt).is_err() || pkt.kind == KIND_FRAGMENT {
        return Ok(TC_ACT_OK);
    }
    let Some(back) = lookup_back(pkt) else {
        return Ok(TC_ACT_OK);
    };
    let back = *back;
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    let pod = unsafe { POD_BY_IFINDEX.get(back.pod_ifindex) }
        .ok_or(Exit::Drop(0, Reason::DropUnknownPod))?;
    let node = pkt.outer.dst[0];
    let nat_port = if pkt.kind == KIND_ICMP_ERROR {
        pkt.inner.sport
    } else {
        pkt.outer.dport
    };
    to_pod_view(pkt, &back);
    pkt.snat = SNAT_REVERSE;
    let reason = verdict(pod, decide(pod, pkt, Direction::Ingress, Clock::read()))?;
    translate_back(ctx, pkt, node, nat_port).map_err(|step| Exit::Internal(pod.slot, step))?;
    set_macs(ctx, &pod.mac, &pod.host_mac).map_err(|step| Exit::Internal(pod.slot, step))?;
    count(pod.slot, reason, ctx.len());
    Ok(into_pod(pod.host_ifindex))
}
