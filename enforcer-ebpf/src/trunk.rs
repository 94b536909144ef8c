//! The trunk side: VLAN -> pod, the pod's inbound rules, tag popped, MACs rewritten,
//! redirected to the pod's host-side interface.
use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_skb_vlan_pop, programs::TcContext};
use enforcer_common::{AF_V4, Direction, PodInfo, Reason};
use enforcer_ebpf::parse::{Packet, parse_l2, parse_l3_pulled};
use enforcer_ebpf::rewrite::{mac_words, write_macs};

/// `skb->pkt_type` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;

use crate::bypass::{addr_of, is_link_scope};
use crate::cache::{Clock, vlan_key};
use crate::counters::count;
use crate::exit::Exit;
use crate::maps::POD_BY_VLAN;
use crate::pod::{cached_pod, into_pod, scratch};
use crate::verdict::{Verdict, decide};

/// A frame the fast path did not deliver (`trunk_ingress_full`).
#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Exit> {
    let l2 = parse_l2(ctx).map_err(|e| Exit::Drop(0, e.reason()))?;
    // Untagged frames are the trunk's own traffic (the node's), not a branch pod's.
    let Some(vlan) = l2.vlan else {
        return Ok(TC_ACT_OK);
    };
    let clock = Clock::read();
    let pod = cached_pod(vlan_key(vlan), clock, |k| {
        // SAFETY: hash values stay valid for the program's run (RCU); we only read.
        unsafe { POD_BY_VLAN.get(k) }
    })
    .ok_or(Exit::Drop(0, Reason::DropUnknownVlan))?;
    let pkt = scratch(pod.slot)?;
    parse_l3_pulled(ctx, &l2, pkt).map_err(|e| Exit::Drop(pod.slot, e.reason()))?;
    if misaddressed(pod, pkt) {
        return Err(Exit::Drop(pod.slot, Reason::DropSpoofIp));
    }
    // Neighbour discovery and MLD from the VPC are not plumbing of the pod's link (its
    // neighbour is the host-side interface): they meet the pod's inbound rules.
    let reason = match decide(pod, pkt, Direction::Ingress, clock) {
        Verdict::Allow(r) => r,
        Verdict::Drop(r) => return Err(Exit::Drop(pod.slot, r)),
    };
    let macs = mac_words(&pod.mac, &pod.host_mac);
    deliver(ctx, pod.slot, &macs, pod.host_ifindex, reason)
}

/// An allowed frame from the VPC into the pod of `slot`: tag popped, MACs written
/// (`macs`: to the pod, from its host interface), counted as `reason`, handed to the
/// pod behind `host_ifindex`. The full path and the fast path (`fast`) deliver alike.
#[inline(always)]
pub fn deliver(
    ctx: &TcContext,
    slot: u32,
    macs: &[u32; 3],
    host_ifindex: u32,
    reason: Reason,
) -> Result<i32, Exit> {
    // Pops the tag from metadata or from the bytes, whichever holds it.
    // SAFETY: the helper takes the program's own skb; packet pointers are re-read after.
    if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        return Err(Exit::Internal(slot, "VLAN pop"));
    }
    write_macs(ctx, macs).map_err(|step| Exit::Internal(slot, step))?;
    // The VPC addressed the frame to the pod's MAC, not the trunk's: the trunk took it
    // as another host's, and the pod's stack would drop it as such.
    ctx.change_type(PACKET_HOST)
        .map_err(|_| Exit::Internal(slot, "packet type"))?;
    count(slot, reason, ctx.len());
    Ok(into_pod(host_ifindex))
}

/// A frame on a pod's VLAN that is not addressed to the pod: the VPC delivers a branch
/// ENI only its own addresses, so it was forged on the way, and the pod (forwarding, or
/// with an address it should not have) must not be handed it. IPv6 link-scope
/// destinations (neighbour discovery, MLD) are the link's. Not judged for a fail-closed
/// pod, whose addresses are not known.
#[inline(always)]
pub fn misaddressed(pod: &PodInfo, pkt: &Packet) -> bool {
    if pod.is_fail_closed() {
        return false;
    }
    if pkt.family == AF_V4 {
        pod.ipv4 == [0; 4] || pkt.outer.dst[0] != u32::from_ne_bytes(pod.ipv4)
    } else {
        !is_link_scope(&pkt.outer.dst) && (pod.has_ipv6 == 0 || pkt.outer.dst != addr_of(&pod.ipv6))
    }
}
