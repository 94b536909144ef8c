//! Every pinned map of the product, once: name, kind, key and value sizes, capacity. The
//! programs declare their maps with these types and capacities; the loader checks a
//! previous daemon's pins against this table before reusing them; a test checks the
//! loaded object against it. Changing a row is a layout change: bump `LAYOUT_VERSION`.
use core::mem::size_of;

use crate::map_names::*;
use crate::*;

/// Version of the pinned maps' layout as a whole.
pub const LAYOUT_VERSION: u32 = 6;

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
}

const fn spec(
    name: &'static str,
    kind: MapKind,
    key: usize,
    value: usize,
    capacity: u32,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: key as u32,
        value_size: value as u32,
        capacity,
    }
}

/// An LPM trie's key: prefix length, then the data.
const fn lpm<K>() -> usize {
    4 + size_of::<K>()
}

use MapKind::*;

pub const MAPS: [MapSpec; 19] = [
    spec(NODE_CONFIG, Array, 4, size_of::<NodeConfig>(), 1),
    spec(POD_BY_VLAN, Hash, 4, size_of::<PodInfo>(), MAX_PODS),
    spec(POD_BY_IFINDEX, Hash, 4, size_of::<PodInfo>(), MAX_PODS),
    spec(POD_BY_IPV4, Hash, 4, 4, MAX_PODS),
    spec(POD_BY_IPV6, Hash, 16, 4, MAX_PODS),
    spec(
        PEER_V4,
        LpmTrie,
        lpm::<PeerKeyV4>(),
        size_of::<PeerClass>(),
        MAX_PEER_ENTRIES,
    ),
    spec(
        PEER_V6,
        LpmTrie,
        lpm::<PeerKeyV6>(),
        size_of::<PeerClass>(),
        MAX_PEER_ENTRIES,
    ),
    spec(
        PORT_RULES,
        LpmTrie,
        lpm::<PortKey>(),
        size_of::<PortRule>(),
        MAX_PORT_ENTRIES,
    ),
    spec(
        ALWAYS_V4,
        LpmTrie,
        lpm::<[u8; 4]>(),
        size_of::<AlwaysAllow>(),
        MAX_ALWAYS_ENTRIES,
    ),
    spec(
        ALWAYS_V6,
        LpmTrie,
        lpm::<[u8; 16]>(),
        size_of::<AlwaysAllow>(),
        MAX_ALWAYS_ENTRIES,
    ),
    spec(
        FLOWS,
        Hash,
        size_of::<FlowKey>(),
        size_of::<FlowValue>(),
        MAX_FLOWS,
    ),
    spec(FLOW_COUNT, Array, 4, 8, MAX_PODS),
    spec(FLOW_SWEPT, Array, 4, 8, MAX_PODS),
    spec(
        FRAGS,
        LruHash,
        size_of::<FragKey>(),
        size_of::<FragValue>(),
        MAX_FRAGS,
    ),
    spec(
        COUNTERS,
        PerCpuArray,
        4,
        size_of::<Counter>(),
        COUNTER_ENTRIES,
    ),
    spec(TAIL_CALLS, ProgArray, 4, 4, 1),
    spec(
        DEST_V4,
        LpmTrie,
        lpm::<[u8; 4]>(),
        size_of::<DestClass>(),
        MAX_DEST_ENTRIES,
    ),
    spec(
        DEST_V6,
        LpmTrie,
        lpm::<[u8; 16]>(),
        size_of::<DestClass>(),
        MAX_DEST_ENTRIES,
    ),
    spec(
        SNAT_REV,
        Hash,
        size_of::<SnatKey>(),
        size_of::<SnatValue>(),
        MAX_SNAT,
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
