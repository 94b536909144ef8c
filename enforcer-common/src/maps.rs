//! Every pinned map of the product, once: name, kind, key and value sizes, capacity. The
//! programs declare their maps with these types and capacities; the loader checks a
//! previous daemon's pins against this table before reusing them; a test checks the
//! loaded object against it. Changing a row is a layout change: bump `LAYOUT_VERSION`
//! and say in the row's `carry` how the older layout's entries cross over.
use core::mem::size_of;

use crate::map_names::*;
use crate::*;

/// Version of the pinned maps' layout as a whole: the maps are pinned under
/// `<bpffsDir>/v<LAYOUT_VERSION>/`, and a daemon finding another version's maps there
/// migrates from them (older) or refuses to start (newer).
#[cfg(not(feature = "layout-next"))]
pub const LAYOUT_VERSION: u32 = 9;
#[cfg(feature = "layout-next")]
pub const LAYOUT_VERSION: u32 = 10;

/// How a map's contents cross from an older layout's maps to this build's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// The daemon writes it whole from its sources (pods, policies, node settings): it
    /// starts empty and is filled before any link moves to the new programs.
    Rebuilt,
    /// Entries the programs made (flows, NAT bindings, fragments): copied, and again
    /// those the old programs made or removed until their links moved. The key must
    /// be the same; the value the same, or one of `grown_from`: an older value size
    /// this layout's value extends by appending fields (zero-filled when copied).
    Entries { grown_from: &'static [u32] },
    /// Arrays of u64 counters: copied, then what the old programs counted until their
    /// links moved is added.
    Counters,
}

/// Older FlowValue sizes this build's extends: layout 7 appended `opened_ns` to layout
/// 6's 32 bytes (layout 8 added the hashed peer and exact-port tables, whose entries
/// are rebuilt); the `layout-next` test build appends a u64 to the value's 40 bytes.
#[cfg(not(feature = "layout-next"))]
const FLOW_VALUE_GROWN_FROM: &[u32] = &[32];
#[cfg(feature = "layout-next")]
const FLOW_VALUE_GROWN_FROM: &[u32] = &[32, 40];

/// The kernel map types we use (`bpf_map_type` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    ProgArray = 3,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    /// As the kernel counts it: an LPM key includes its 4-byte prefix length.
    pub key_size: u32,
    pub value_size: u32,
    pub capacity: u32,
    pub carry: Carry,
}

const fn spec(
    name: &'static str,
    kind: MapKind,
    key: usize,
    value: usize,
    capacity: u32,
    carry: Carry,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: key as u32,
        value_size: value as u32,
        capacity,
        carry,
    }
}

const ENTRIES: Carry = Carry::Entries { grown_from: &[] };

/// An LPM trie's key: prefix length, then the data.
const fn lpm<K>() -> usize {
    4 + size_of::<K>()
}

use Carry::*;
use MapKind::*;

pub const MAPS: [MapSpec; 23] = [
    spec(NODE_CONFIG, Array, 4, size_of::<NodeConfig>(), 1, Rebuilt),
    spec(
        POD_BY_VLAN,
        Hash,
        4,
        size_of::<PodInfo>(),
        MAX_PODS,
        Rebuilt,
    ),
    spec(
        POD_BY_IFINDEX,
        Hash,
        4,
        size_of::<PodInfo>(),
        MAX_PODS,
        Rebuilt,
    ),
    spec(POD_BY_IPV4, Hash, 4, 4, MAX_PODS, Rebuilt),
    spec(POD_BY_IPV6, Hash, 16, 4, MAX_PODS, Rebuilt),
    spec(
        PEER_V4,
        LpmTrie,
        lpm::<PeerKeyV4>(),
        size_of::<PeerClass>(),
        MAX_PEER_ENTRIES,
        Rebuilt,
    ),
    spec(
        PEER_V6,
        LpmTrie,
        lpm::<PeerKeyV6>(),
        size_of::<PeerClass>(),
        MAX_PEER_ENTRIES,
        Rebuilt,
    ),
    spec(
        PORT_RULES,
        LpmTrie,
        lpm::<PortKey>(),
        size_of::<PortRule>(),
        MAX_PORT_ENTRIES,
        Rebuilt,
    ),
    spec(
        PEER_HASH_V4,
        Hash,
        size_of::<PeerHashKeyV4>(),
        size_of::<PeerClass>(),
        MAX_PEER_ENTRIES,
        Rebuilt,
    ),
    spec(
        PEER_HASH_V6,
        Hash,
        size_of::<PeerHashKeyV6>(),
        size_of::<PeerClass>(),
        MAX_PEER_ENTRIES,
        Rebuilt,
    ),
    spec(PEER_LENS, Array, 4, size_of::<PeerLens>(), 2, Rebuilt),
    spec(
        PORT_EXACT,
        Hash,
        size_of::<PortKey>(),
        size_of::<PortRule>(),
        MAX_PORT_ENTRIES,
        Rebuilt,
    ),
    spec(
        ALWAYS_V4,
        LpmTrie,
        lpm::<[u8; 4]>(),
        size_of::<AlwaysAllow>(),
        MAX_ALWAYS_ENTRIES,
        Rebuilt,
    ),
    spec(
        ALWAYS_V6,
        LpmTrie,
        lpm::<[u8; 16]>(),
        size_of::<AlwaysAllow>(),
        MAX_ALWAYS_ENTRIES,
        Rebuilt,
    ),
    spec(
        FLOWS,
        Hash,
        size_of::<FlowKey>(),
        size_of::<FlowValue>(),
        MAX_FLOWS,
        Entries {
            grown_from: FLOW_VALUE_GROWN_FROM,
        },
    ),
    spec(FLOW_COUNT, Array, 4, 8, MAX_PODS, Counters),
    spec(FLOW_SWEPT, Array, 4, 8, MAX_PODS, Counters),
    spec(
        FRAGS,
        LruHash,
        size_of::<FragKey>(),
        size_of::<FragValue>(),
        MAX_FRAGS,
        ENTRIES,
    ),
    spec(
        COUNTERS,
        PerCpuArray,
        4,
        size_of::<Counter>(),
        COUNTER_ENTRIES,
        Counters,
    ),
    spec(TAIL_CALLS, ProgArray, 4, 4, crate::tail::SLOTS, Rebuilt),
    spec(
        DEST_V4,
        LpmTrie,
        lpm::<[u8; 4]>(),
        size_of::<DestClass>(),
        MAX_DEST_ENTRIES,
        Rebuilt,
    ),
    spec(
        DEST_V6,
        LpmTrie,
        lpm::<[u8; 16]>(),
        size_of::<DestClass>(),
        MAX_DEST_ENTRIES,
        Rebuilt,
    ),
    spec(
        SNAT_REV,
        Hash,
        size_of::<SnatKey>(),
        size_of::<SnatValue>(),
        MAX_SNAT,
        ENTRIES,
    ),
];

pub const fn names() -> [&'static str; MAPS.len()] {
    let mut out = [""; MAPS.len()];
    let mut i = 0;
    while i < MAPS.len() {
        out[i] = MAPS[i].name;
        i += 1;
    }
    out
}

/// The row of a pinned map.
pub fn spec_of(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration adds counters word by word and zero-extends grown values: the rows
    /// must allow it.
    #[test]
    fn carry_rules_fit_their_rows() {
        for m in MAPS {
            match m.carry {
                Carry::Counters => assert_eq!(m.value_size % 8, 0, "{}", m.name),
                Carry::Entries { grown_from } => {
                    assert!(grown_from.iter().all(|&s| s < m.value_size), "{}", m.name)
                }
                Carry::Rebuilt => {}
            }
        }
    }

    #[test]
    fn names_are_unique_and_in_table_order() {
        for (i, m) in MAPS.iter().enumerate() {
            assert_eq!(ALL[i], m.name);
            assert_eq!(spec_of(m.name), Some(m));
            assert!(
                MAPS[..i].iter().all(|o| o.name != m.name),
                "{} twice",
                m.name
            );
        }
    }
}
