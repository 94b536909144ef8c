//! The compiled policy tables (SPEC §3): stage A maps a remote prefix under a policy
//! scope to a rule class, stage B a (class, protocol, port prefix) to the rule.
use core::net::{Ipv4Addr, Ipv6Addr};

/// Which way a packet goes, seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Direction {
    /// Toward the pod (its inbound rules).
    Ingress = 0,
    /// From the pod (its outbound rules).
    Egress = 1,
}

impl Direction {
    #[inline(always)]
    pub const fn reverse(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }

    /// From the number stored in a map field (anything but 1 is ingress).
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Direction {
        if raw == Direction::Egress as u8 {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

/// Scope of a policy table entry: which compiled policy and which direction.
#[inline(always)]
pub const fn scope(policy_id: u32, dir: Direction) -> u32 {
    (policy_id << 1) | dir as u32
}

/// LPM key data for a remote IPv4 prefix under a policy scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKeyV4 {
    pub scope: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKeyV6 {
    pub scope: u32,
    pub addr: [u8; 16],
}

/// Bits of the scope always matched in a peer key (the prefix length adds to this).
pub const PEER_SCOPE_BITS: u32 = 32;

/// Stage A, hashed (`PEER_HASH_V4`): a peer prefix keyed by scope, its length and its
/// masked address. The programs try the lengths in use node-wide ([`PeerLens`]),
/// longest first, one hash lookup each: a packet's cost follows the number of distinct
/// prefix lengths, not the number of prefixes (an LPM trie's depth grows with them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerHashKeyV4 {
    pub scope: u32,
    /// Prefix length of `addr` (0..=32), without the scope's bits.
    pub len: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerHashKeyV6 {
    pub scope: u32,
    /// 0..=128.
    pub len: u32,
    pub addr: [u8; 16],
}

/// Slots of [`PeerLens`]: twice [`PEER_HASH_MAX_LENS`], so that while the daemon
/// changes the tables the lengths of the old entries and the new both fit.
pub const PEER_LENS_SLOTS: usize = 16;
/// Past this many distinct prefix lengths in a family the peers go to the LPM trie
/// (`PEER_V4`/`PEER_V6`) instead: each length costs a hash lookup on a miss.
pub const PEER_HASH_MAX_LENS: usize = 8;
/// `PeerLens::count` when the family's peers are in the LPM trie.
pub const PEER_LENS_TRIE: u32 = u32::MAX;
/// Index of each family's entry in `PEER_LENS`.
pub const PEER_LENS_V4: u32 = 0;
pub const PEER_LENS_V6: u32 = 1;

/// Where a family's peer prefixes are: in the hash, under these lengths (longest
/// first; `count` of them), or in the LPM trie (`count == PEER_LENS_TRIE`). While the
/// hash is in use the list holds at least every length with an entry, so trying them
/// longest first finds what the trie's longest match would.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerLens {
    pub count: u32,
    pub lens: [u8; PEER_LENS_SLOTS],
    /// Each length's address mask, as words in network byte order (IPv4 uses the
    /// first): the programs mask without arithmetic or branches, which keeps the
    /// verifier's walk of the loop short.
    pub masks: [[u32; 4]; PEER_LENS_SLOTS],
}

impl PeerLens {
    /// The list for these lengths (longest first; at most [`PEER_LENS_SLOTS`]).
    pub fn hashed(lens: &[u8]) -> PeerLens {
        let mut l = PeerLens {
            count: lens.len() as u32,
            ..PeerLens::default()
        };
        for (i, len) in lens.iter().enumerate().take(PEER_LENS_SLOTS) {
            l.lens[i] = *len;
            for (j, w) in l.masks[i].iter_mut().enumerate() {
                let bits = (*len as u32).saturating_sub(32 * j as u32).min(32);
                *w = ((0xffff_ffff_0000_0000u64 >> bits) as u32).to_be();
            }
        }
        l
    }

    /// The list that sends the programs to the trie.
    pub fn trie() -> PeerLens {
        PeerLens {
            count: PEER_LENS_TRIE,
            ..PeerLens::default()
        }
    }
}

/// `PeerClass::flags` / `PortRule::flags`: the allowing rule creates no flow state
/// (EC2 "untracked" flows, SPEC §4).
pub const RULE_UNTRACKED: u32 = 1;

/// Stage A result: the set of rules whose peer covers the remote address, named by class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerClass {
    pub class_id: u32,
    /// Non-zero when a rule for all protocols covers this peer: its cookie.
    pub all_cookie: u32,
    pub all_flags: u32,
}

/// Stage B key data: class, protocol, then the destination port (ICMP: type << 8 | code)
/// in network byte order so that port ranges become prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub class_id: u32,
    pub proto: u16,
    pub port_be: [u8; 2],
}

/// Bits of class and protocol always matched in a port key.
pub const PORT_FIXED_BITS: u32 = 48;
/// Prefix length of a single port's key (`PORT_EXACT`).
pub const PORT_EXACT_BITS: u32 = PORT_FIXED_BITS + 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRule {
    /// Which group and rule allowed (see the daemon's rule table).
    pub cookie: u32,
    pub flags: u32,
}

/// Value of the always-allowed tries (SPEC §6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlwaysAllow {
    pub id: u32,
}

impl PeerKeyV4 {
    pub const fn new(scope: u32, addr: Ipv4Addr) -> PeerKeyV4 {
        PeerKeyV4 {
            scope,
            addr: addr.octets(),
        }
    }
}

impl PeerKeyV6 {
    pub const fn new(scope: u32, addr: Ipv6Addr) -> PeerKeyV6 {
        PeerKeyV6 {
            scope,
            addr: addr.octets(),
        }
    }
}

impl PortKey {
    /// The port (ICMP: `type << 8 | code`) is stored big-endian, so a port range split
    /// into aligned blocks becomes LPM prefixes.
    pub const fn new(class_id: u32, proto: u8, port: u16) -> PortKey {
        PortKey {
            class_id,
            proto: proto as u16,
            port_be: port.to_be_bytes(),
        }
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_own_their_byte_order() {
        let k = PortKey::new(9, 6, 0x1234);
        assert_eq!(k.port_be, [0x12, 0x34], "big-endian: ranges are prefixes");
        assert_eq!(k.port(), 0x1234);
        assert_eq!(
            PeerKeyV4::new(3, Ipv4Addr::new(10, 0, 0, 1)).addr,
            [10, 0, 0, 1]
        );
        assert_eq!(scope(5, Direction::Egress), 11);
        assert_eq!(scope(5, Direction::Ingress), 10);
        assert_eq!(
            Direction::from_raw(Direction::Egress as u8),
            Direction::Egress
        );
        assert_eq!(Direction::Egress.reverse(), Direction::Ingress);
    }

    #[test]
    fn a_length_list_carries_each_length_s_mask() {
        let l = PeerLens::hashed(&[128, 72, 20, 0]);
        assert_eq!(l.count, 4);
        assert_eq!(l.masks[0], [u32::MAX; 4]);
        let be = |w: u32| u32::from_be_bytes(w.to_ne_bytes());
        assert_eq!(l.masks[1].map(be), [u32::MAX, u32::MAX, 0xff00_0000, 0]);
        assert_eq!(be(l.masks[2][0]), 0xffff_f000);
        assert_eq!(l.masks[3], [0; 4]);
        let addr = u32::from_ne_bytes([10, 1, 0xff, 0xff]);
        assert_eq!((addr & l.masks[2][0]).to_ne_bytes(), [10, 1, 0xf0, 0]);
        assert_eq!(PeerLens::trie().count, PEER_LENS_TRIE);
    }
}
