//! Link-scope IPv6 from a pod: what is valid link plumbing (stays on the node without
//! the rules) and what is link-scope at all.
use enforcer_common::PodInfo;
use enforcer_ebpf::parse::{Addr, Packet};

/// fe80::/10 and multicast ff00::/8: never routed off the pod's link.
#[inline(always)]
pub fn is_link_scope(dst: &Addr) -> bool {
    is_link_local(dst) || dst[0] as u8 == 0xff
}

/// fe80::/10: the first two bytes, as they sit in the word.
#[inline(always)]
pub fn is_link_local(a: &Addr) -> bool {
    let (b0, b1) = (a[0] as u8, (a[0] >> 8) as u8);
    b0 == 0xfe && b1 & 0xc0 == 0x80
}

#[inline(always)]
pub fn addr_of(bytes: &[u8; 16]) -> Addr {
    // SAFETY: same size, and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u8; 16], Addr>(*bytes) }
}

/// Valid link plumbing from the pod (RFC 4861 §6-7, RFC 2710/3810): neighbour
/// discovery with hop limit 255 from the pod's link-local address (or unspecified, for
/// DAD and router solicitation); MLD with hop limit 1 from its link-local address (or
/// unspecified, for an MLDv2 report during DAD). Anything else goes to the rules.
#[inline(always)]
pub fn is_link_plumbing(pod: &PodInfo, pkt: &Packet) -> bool {
    let ty = (pkt.policy_port >> 8) as u8;
    let unspecified = pkt.outer.src == [0; 4];
    let own = pkt.outer.src == addr_of(&pod.ipv6_ll);
    if (133..=137).contains(&ty) {
        pkt.hop_limit == 255 && (own || (unspecified && (ty == 133 || ty == 135)))
    } else {
        pkt.hop_limit == 1 && (own || (unspecified && ty == 143))
    }
}
