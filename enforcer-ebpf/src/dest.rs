//! Where an address is, for a pod's traffic (SPEC §5): the node itself, the VPC (or an
//! SNAT exclusion), or off-VPC; and another branch pod of this node.
use aya_ebpf::maps::lpm_trie::Key;
use enforcer_common::{AF_V4, DEST_NO_SNAT, DEST_NODE};
use enforcer_ebpf::parse::{Addr, Packet};

use crate::maps::{DEST_V4, DEST_V6, POD_BY_IPV4, POD_BY_IPV6};

/// `DEST_*` flags of `addr` (0: off-VPC).
#[inline(always)]
pub fn class_of(family: u8, addr: &Addr) -> u32 {
    let hit = if family == AF_V4 {
        DEST_V4.get(&Key::new(32, addr[0].to_ne_bytes()))
    } else {
        // SAFETY: same size, and every bit pattern is valid for both.
        DEST_V6.get(&Key::new(128, unsafe {
            core::mem::transmute::<Addr, [u8; 16]>(*addr)
        }))
    };
    hit.map_or(0, |c| c.flags)
}

/// The node's own address (its primary addresses, NodeLocal DNSCache, link-local agents).
#[inline(always)]
pub fn is_node(family: u8, addr: &Addr) -> bool {
    class_of(family, addr) & DEST_NODE != 0
}

/// Off-VPC and not excluded: a standard-mode pod's IPv4 traffic there is source-NATed.
#[inline(always)]
pub fn needs_snat(class: u32) -> bool {
    class & DEST_NO_SNAT == 0
}

/// The host interface of another branch pod of this node the packet is addressed to.
#[inline(always)]
pub fn same_node_pod(pkt: &Packet) -> Option<u32> {
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
