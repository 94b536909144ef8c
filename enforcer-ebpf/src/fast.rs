//! The common packet in few instructions: a pod's IPv4 TCP or UDP packet, plain header
//! (no options, not a fragment), of an established flow the per-CPU cache holds
//! (`cache`). It is recognised from a handful of header words instead of the full parse,
//! and decided by the same checks the full path makes for it: the pod not fail-closed,
//! its source the pod's address, the flow's copy serving (same direction, no state
//! change). Anything else — another family or protocol, options, fragments, a cache
//! miss, a flow that does not go through the VPC — answers `None` and takes the full
//! path, which judges it from the start.
use aya_ebpf::programs::TcContext;
use enforcer_common::*;
use enforcer_ebpf::parse::{Tuple, load};

use crate::cache::{self, Clock};
use crate::conntrack::flow_key;

/// Ethernet header length; the caller has checked there is no VLAN tag in the bytes.
const L3: usize = 14;

/// The flow's path when `ctx` holds such a packet from `pod` (untagged IPv4, which the
/// caller checked), else `None`.
#[inline(always)]
pub fn established_v4(ctx: &TcContext, pod: &PodInfo, clock: Clock) -> Option<u8> {
    if pod.is_fail_closed() {
        return None;
    }
    // Version, IHL, ..., protocol, addresses: five words, one bounds check.
    let h: [u32; 5] = load(ctx, L3).ok()?;
    let (vihl, frag, proto) = (h[0] as u8, u16::from_be((h[1] >> 16) as u16), (h[2] >> 8) as u8);
    // No options, neither a fragment nor the first of several (MF, offset).
    if vihl != 0x45 || frag & 0x3fff != 0 {
        return None;
    }
    // Anti-spoofing, as the full path: the pod's own address, which it has.
    if pod.ipv4 == [0; 4] || h[3] != u32::from_ne_bytes(pod.ipv4) {
        return None;
    }
    let ports: u32 = load(ctx, L3 + 20).ok()?;
    let tcp_flags = match proto {
        // The flags byte is the high half of the word at offset 12 of the TCP header.
        PROTO_TCP => (load::<u16>(ctx, L3 + 32).ok()? >> 8) as u8,
        PROTO_UDP => 0,
        _ => return None,
    };
    let t = Tuple {
        src: [h[3], 0, 0, 0],
        dst: [h[4], 0, 0, 0],
        sport: u16::from_be(ports as u16),
        dport: u16::from_be((ports >> 16) as u16),
        proto,
    };
    let key = flow_key(&t, AF_V4, Direction::Egress);
    let hit = cache::flow(&key, pod.slot, Direction::Egress, tcp_flags, clock)?;
    (hit.path == PATH_VPC).then_some(hit.path)
}
