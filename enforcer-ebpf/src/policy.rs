//! The pod's rules: two stages whatever the number of rules; and the
//! always-allowed destinations (SPEC §6).
use aya_ebpf::btf_maps::lpm_trie::Key;
use enforcer_common::*;
use enforcer_ebpf::parse::{Addr, Packet};

use crate::conntrack::put_addr;
use crate::maps::{
    ALWAYS_V4, ALWAYS_V6, PEER_HASH_V4, PEER_HASH_V6, PEER_LENS, PEER_V4, PEER_V6, PORT_EXACT,
    PORT_RULES,
};

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

/// Two stages whatever the number of rules: remote prefix -> class, then (class,
/// protocol, port) -> rule. Returns the allowing rule's cookie and flags.
#[inline(always)]
pub fn policy_allows(policy_id: u32, pkt: &Packet, dir: Direction) -> Option<(u32, u32)> {
    let q = RuleQuery {
        scope: scope(policy_id, dir),
        family: pkt.family as u32,
        proto: pkt.outer.proto as u32,
        port: pkt.policy_port as u32,
        addr: if dir == Direction::Egress {
            pkt.outer.dst
        } else {
            pkt.outer.src
        },
    };
    let mut r = PortRule::default();
    match podsg_rule_lookup(&q, &mut r) {
        0 => None,
        _ => Some((r.cookie, r.flags)),
    }
}

/// What [`podsg_rule_lookup`] is asked.
#[repr(C)]
pub struct RuleQuery {
    scope: u32,
    family: u32,
    proto: u32,
    port: u32,
    /// The remote end, network byte order; IPv4 in the first word.
    addr: Addr,
}

/// The two stages as a global function: the verifier checks it once, on its own,
/// instead of once for every path of every program that reaches a rule look-up (it
/// made `pod_egress` approach the verifier's limit of a million instructions).
/// Returns 1 and fills `out` when a rule allows.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn podsg_rule_lookup(q: *const RuleQuery, out: *mut PortRule) -> i64 {
    // SAFETY: null-checked; otherwise our callers' stack objects (a global function
    // must assume either).
    let (Some(q), Some(out)) = (unsafe { q.as_ref() }, unsafe { out.as_mut() }) else {
        return 0;
    };
    let class = if q.family == AF_V4 as u32 {
        peer_v4(q.scope, q.addr[0])
    } else {
        peer_v6(q.scope, &q.addr)
    };
    let Some(class) = class else {
        return 0;
    };
    if class.all_cookie != 0 {
        out.cookie = class.all_cookie;
        out.flags = class.all_flags;
        return 1;
    }
    let pk = PortKey::new(class.class_id, q.proto as u8, q.port as u16);
    // SAFETY: the daemon replaces entries whole; the value is copied out at once.
    let r = match unsafe { PORT_EXACT.get(pk) } {
        Some(r) => *r,
        None => match PORT_RULES.get(&Key::new(PORT_FIXED_BITS + 16, pk)) {
            Some(r) => *r,
            None => return 0,
        },
    };
    *out = r;
    1
}

/// Stage A for an IPv4 peer: the lengths in use longest first, a hash lookup each, or
/// the LPM trie when there are too many lengths for that to pay.
#[inline(always)]
fn peer_v4(sc: u32, addr: u32) -> Option<PeerClass> {
    let lens = PEER_LENS.get(PEER_LENS_V4)?;
    if lens.count == PEER_LENS_TRIE {
        let data = PeerKeyV4 {
            scope: sc,
            addr: addr.to_ne_bytes(),
        };
        return PEER_V4.get(&Key::new(PEER_SCOPE_BITS + 32, data)).copied();
    }
    let mut key = PeerHashKeyV4 {
        scope: sc,
        len: 0,
        addr: [0; 4],
    };
    for i in 0..PEER_LENS_SLOTS {
        if i as u32 >= lens.count {
            return None;
        }
        key.len = lens.lens[i] as u32;
        key.addr = (addr & lens.masks[i][0]).to_ne_bytes();
        // SAFETY: the daemon replaces entries whole; the value is copied out at once.
        if let Some(c) = unsafe { PEER_HASH_V4.get(key) } {
            return Some(*c);
        }
    }
    None
}

/// Stage A for an IPv6 peer, as [`peer_v4`].
#[inline(always)]
fn peer_v6(sc: u32, remote: &Addr) -> Option<PeerClass> {
    let lens = PEER_LENS.get(PEER_LENS_V6)?;
    if lens.count == PEER_LENS_TRIE {
        let mut data = PeerKeyV6 {
            scope: sc,
            addr: [0; 16],
        };
        put_addr(&mut data.addr, remote);
        return PEER_V6.get(&Key::new(PEER_SCOPE_BITS + 128, data)).copied();
    }
    let mut key = PeerHashKeyV6 {
        scope: sc,
        len: 0,
        addr: [0; 16],
    };
    for i in 0..PEER_LENS_SLOTS {
        if i as u32 >= lens.count {
            return None;
        }
        key.len = lens.lens[i] as u32;
        let m = &lens.masks[i];
        let masked = [
            remote[0] & m[0],
            remote[1] & m[1],
            remote[2] & m[2],
            remote[3] & m[3],
        ];
        put_addr(&mut key.addr, &masked);
        // SAFETY: the daemon replaces entries whole; the value is copied out at once.
        if let Some(c) = unsafe { PEER_HASH_V6.get(key) } {
            return Some(*c);
        }
    }
    None
}
