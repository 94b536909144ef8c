//! The pod's rules: two LPM lookups whatever the number of rules; and the
//! always-allowed destinations (SPEC §6).
use aya_ebpf::btf_maps::lpm_trie::Key;
use enforcer_common::*;
use enforcer_ebpf::parse::{Addr, Packet};

use crate::conntrack::put_addr;
use crate::maps::{ALWAYS_V4, ALWAYS_V6, PEER_V4, PEER_V6, PORT_RULES};

#[inline(always)]
pub fn always_allowed(pkt: &Packet, dir: Direction) -> bool {
    let remote = if dir == Direction::Egress {
        &pkt.outer.dst
    } else {
        &pkt.outer.src
    };
    if pkt.family == AF_V4 {
        ALWAYS_V4
            .get(&Key::new(32, remote[0].to_ne_bytes()))
            .is_some()
    } else {
        // [u32; 4] and [u8; 16] share size; the u32 view keeps the key aligned.
        ALWAYS_V6
            // SAFETY: same size, and every bit pattern is valid for both.
            .get(&Key::new(128, unsafe {
                core::mem::transmute::<Addr, [u8; 16]>(*remote)
            }))
            .is_some()
    }
}

/// Two map lookups whatever the number of rules: remote prefix -> class, then
/// (class, protocol, port) -> rule. Returns the allowing rule's cookie and flags.
#[inline(always)]
pub fn policy_allows(policy_id: u32, pkt: &Packet, dir: Direction) -> Option<(u32, u32)> {
    let sc = scope(policy_id, dir);
    let remote = if dir == Direction::Egress {
        &pkt.outer.dst
    } else {
        &pkt.outer.src
    };
    let class = if pkt.family == AF_V4 {
        let data = PeerKeyV4 {
            scope: sc,
            addr: remote[0].to_ne_bytes(),
        };
        PEER_V4.get(&Key::new(PEER_SCOPE_BITS + 32, data))?
    } else {
        let mut data = PeerKeyV6 {
            scope: sc,
            addr: [0; 16],
        };
        put_addr(&mut data.addr, remote);
        PEER_V6.get(&Key::new(PEER_SCOPE_BITS + 128, data))?
    };
    if class.all_cookie != 0 {
        return Some((class.all_cookie, class.all_flags));
    }
    let pk = PortKey::new(class.class_id, pkt.outer.proto, pkt.policy_port);
    let r = PORT_RULES.get(&Key::new(PORT_FIXED_BITS + 16, pk))?;
    Some((r.cookie, r.flags))
}
