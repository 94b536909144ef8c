//! Map layouts shared by the eBPF programs and the userspace daemon.
//!
//! Every struct here is `#[repr(C)]` with explicit padding so both sides agree byte for
//! byte and bpftool prints named fields (the programs declare these maps as BTF maps).
//! Addresses and ports taken straight from packets stay in network byte order; ids the
//! daemon allocates are native-endian (they are always matched in full, so their byte
//! order does not matter to the LPM tries).
#![no_std]

pub mod cache;
pub mod csum;
pub mod event;
pub mod flow;
pub mod maps;
pub mod node;
pub mod pod;
pub mod policy;
pub mod reason;
pub mod snat;
pub mod vouch;

/// A frame's first 12 bytes — destination MAC, then source MAC — as the three words
/// that hold them in memory. A path that forwards many packets alike keeps these words
/// (the flow copies and the pre-filter's word do) and writes a header with three
/// stores: from byte arrays, the same rewrite is ~30 single-byte loads and shifts.
#[inline(always)]
pub fn mac_words(dst: &[u8; 6], src: &[u8; 6]) -> [u32; 3] {
    [
        u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]),
        u32::from_ne_bytes([dst[4], dst[5], src[0], src[1]]),
        u32::from_ne_bytes([src[2], src[3], src[4], src[5]]),
    ]
}

pub use event::*;
pub use flow::*;
pub use node::*;
pub use pod::*;
pub use policy::*;
pub use reason::*;
pub use snat::*;

/// Pinned names of the maps, used by the loader and by operators (`bpftool map dump
/// pinned /sys/fs/bpf/podsg/<name>`). The layouts are in [`maps::MAPS`].
pub mod map_names {
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    pub const POD_BY_VLAN: &str = "POD_BY_VLAN";
    pub const POD_BY_IFINDEX: &str = "POD_BY_IFINDEX";
    pub const POD_BY_IPV4: &str = "POD_BY_IPV4";
    pub const POD_BY_IPV6: &str = "POD_BY_IPV6";
    pub const PEER_V4: &str = "PEER_V4";
    pub const PEER_V6: &str = "PEER_V6";
    pub const PORT_RULES: &str = "PORT_RULES";
    pub const PEER_HASH_V4: &str = "PEER_HASH_V4";
    pub const PEER_HASH_V6: &str = "PEER_HASH_V6";
    pub const PEER_LENS: &str = "PEER_LENS";
    pub const PORT_EXACT: &str = "PORT_EXACT";
    pub const ALWAYS_V4: &str = "ALWAYS_V4";
    pub const ALWAYS_V6: &str = "ALWAYS_V6";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_COUNT: &str = "FLOW_COUNT";
    pub const FLOW_SWEPT: &str = "FLOW_SWEPT";
    pub const FRAGS: &str = "FRAGS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    pub const DEST_V4: &str = "DEST_V4";
    pub const DEST_V6: &str = "DEST_V6";
    pub const SNAT_REV: &str = "SNAT_REV";
    /// Not pinned (process-local): the flow events' ring buffer, budgets and losses.
    pub const EVENTS: &str = "EVENTS";
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    pub const RULE_HITS: &str = "RULE_HITS";
    pub const WOULD_DROP: &str = "WOULD_DROP";
    /// Not pinned: the programs' per-CPU copies of pods and flows end when the daemon
    /// bumps this.
    pub const CACHE_EPOCH: &str = "CACHE_EPOCH";
    /// Every pinned map, in the table's order.
    pub const ALL: [&str; crate::maps::MAPS.len()] = crate::maps::names();
}

/// Slots of `TAIL_CALLS`, each set by the loader to the program named.
pub mod tail {
    /// `pod_host_local`.
    pub const HOST_LOCAL: u32 = 0;
    /// `pod_egress_full`.
    pub const EGRESS_FULL: u32 = 1;
    /// `trunk_ingress_full`.
    pub const TRUNK_FULL: u32 = 2;
    pub const SLOTS: u32 = 3;
}

/// Program names as they appear in the object file.
pub mod prog_names {
    pub const TRUNK_INGRESS: &str = "trunk_ingress";
    /// Tail-called by `trunk_ingress` for every frame its fast path does not deliver
    /// (slot `tail::TRUNK_FULL`): the full judgement.
    pub const TRUNK_INGRESS_FULL: &str = "trunk_ingress_full";
    pub const POD_EGRESS: &str = "pod_egress";
    /// Tail-called by `pod_egress` for every packet its fast path does not forward
    /// (slot `tail::EGRESS_FULL`): the full judgement. Kept apart so the fast path is a
    /// small program of its own, a few cache lines of code under real traffic.
    pub const POD_EGRESS_FULL: &str = "pod_egress_full";
    /// Tail-called by `pod_egress_full` for traffic to another pod of the node (slot
    /// `tail::HOST_LOCAL`): keeps that path out of the common one.
    pub const POD_HOST_LOCAL: &str = "pod_host_local";
    /// TC egress of a pod's host interface: what the node itself sends the pod (kubelet
    /// probes, NodeLocal DNSCache replies), judged by the pod's inbound rules.
    pub const POD_INGRESS: &str = "pod_ingress";
    /// TC ingress of the node's primary ENI: replies to source-NATed flows, translated
    /// back and delivered to their pod; everything else is the node's own.
    pub const PRIMARY_INGRESS: &str = "primary_ingress";
    /// XDP on the trunk: drops early what `trunk_ingress` would drop anyway (a
    /// pre-filter; TC still decides everything it passes).
    pub const TRUNK_XDP: &str = "trunk_xdp";
    /// Every program: the TC classifiers, then the XDP pre-filter.
    pub const ALL: [&str; 8] = [
        TRUNK_INGRESS,
        TRUNK_INGRESS_FULL,
        POD_EGRESS,
        POD_EGRESS_FULL,
        POD_HOST_LOCAL,
        POD_INGRESS,
        PRIMARY_INGRESS,
        TRUNK_XDP,
    ];
}

/// Capacities. Userspace refuses (with an error naming the pod) anything that would not
/// fit instead of truncating.
pub const MAX_PODS: u32 = 1024;
/// LPM tries allocate per entry: a large capacity costs nothing until used.
pub const MAX_PEER_ENTRIES: u32 = 262144;
pub const MAX_PORT_ENTRIES: u32 = 262144;
pub const MAX_ALWAYS_ENTRIES: u32 = 256;
pub const MAX_FLOWS: u32 = 262144;
/// Node addresses, VPC CIDRs and SNAT exclusions (`DEST_V4`/`DEST_V6`).
pub const MAX_DEST_ENTRIES: u32 = 256;

pub const AF_V4: u8 = 4;
pub const AF_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! plain_old_data {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: repr(C), Copy, only integers and byte arrays, padding spelled out
            // as fields (size asserted below): every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    plain_old_data!(
        PodInfo,
        NodeConfig,
        PeerKeyV4,
        PeerKeyV6,
        PeerHashKeyV4,
        PeerHashKeyV6,
        PeerLens,
        PeerClass,
        PortKey,
        PortRule,
        AlwaysAllow,
        FlowKey,
        FlowValue,
        Counter,
        FragKey,
        FragValue,
        DestClass,
        SnatKey,
        SnatValue,
        FlowEvent,
        EventBucket,
        crate::vouch::Vouch,
    );
}

// The layouts both sides compile against: a change here is a map layout change.
const _: () = assert!(core::mem::size_of::<PodInfo>() == 72);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 128);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 64);
#[cfg(not(feature = "layout-next"))]
const _: () = assert!(core::mem::size_of::<FlowValue>() == 40);
#[cfg(feature = "layout-next")]
const _: () = assert!(core::mem::size_of::<FlowValue>() == 48);
const _: () = assert!(core::mem::size_of::<PeerKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<PeerKeyV6>() == 20);
const _: () = assert!(core::mem::size_of::<PeerClass>() == 12);
const _: () = assert!(core::mem::size_of::<PeerHashKeyV4>() == 12);
const _: () = assert!(core::mem::size_of::<PeerHashKeyV6>() == 24);
const _: () = assert!(core::mem::size_of::<PeerLens>() == 276);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(core::mem::size_of::<PortRule>() == 8);
const _: () = assert!(core::mem::size_of::<AlwaysAllow>() == 4);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);
const _: () = assert!(core::mem::size_of::<DestClass>() == 4);
const _: () = assert!(core::mem::size_of::<SnatKey>() == 12);
const _: () = assert!(core::mem::size_of::<SnatValue>() == 12);
