//! Map layouts shared by the eBPF programs and the userspace daemon.
//!
//! Every struct here is `#[repr(C)]` with explicit padding so both sides agree byte for
//! byte and bpftool prints named fields (the programs declare these maps as BTF maps).
//! Addresses and ports taken straight from packets stay in network byte order; ids the
//! daemon allocates are native-endian (they are always matched in full, so their byte
//! order does not matter to the LPM tries).
#![no_std]

pub mod flow;
pub use flow::{
    FLOW_ICMP, FLOW_OTHER, FLOW_STATES, FLOW_TCP_CLOSING, FLOW_TCP_ESTABLISHED, FLOW_TCP_SYN,
    FLOW_UDP, FLOW_UDP_STREAM,
};

/// Pinned names of the maps, used by the loader and by operators (`bpftool map dump
/// pinned /sys/fs/bpf/podsg/<name>`). The layouts are in [`maps::MAPS`].
pub mod map_names {
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    pub const POD_BY_VLAN: &str = "POD_BY_VLAN";
    pub const POD_BY_IFINDEX: &str = "POD_BY_IFINDEX";
    pub const PEER_V4: &str = "PEER_V4";
    pub const PEER_V6: &str = "PEER_V6";
    pub const PORT_RULES: &str = "PORT_RULES";
    pub const ALWAYS_V4: &str = "ALWAYS_V4";
    pub const ALWAYS_V6: &str = "ALWAYS_V6";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_COUNT: &str = "FLOW_COUNT";
    pub const FLOW_SWEPT: &str = "FLOW_SWEPT";
    pub const FRAGS: &str = "FRAGS";
    pub const COUNTERS: &str = "COUNTERS";
    /// Every pinned map, in the table's order.
    pub const ALL: [&str; crate::maps::MAPS.len()] = crate::maps::names();
}

pub mod maps;

/// Program names as they appear in the object file.
pub mod prog_names {
    pub const TRUNK_INGRESS: &str = "trunk_ingress";
    pub const POD_EGRESS: &str = "pod_egress";
    pub const ALL: [&str; 2] = [TRUNK_INGRESS, POD_EGRESS];
}

/// Capacities. Userspace refuses (with an error naming the pod) anything that would not
/// fit instead of truncating.
pub const MAX_PODS: u32 = 1024;
pub const MAX_PEER_ENTRIES: u32 = 65536;
pub const MAX_PORT_ENTRIES: u32 = 262144;
pub const MAX_ALWAYS_ENTRIES: u32 = 256;
pub const MAX_FLOWS: u32 = 262144;

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

/// Scope of a policy table entry: which compiled policy and which direction.
#[inline(always)]
pub const fn scope(policy_id: u32, dir: u32) -> u32 {
    (policy_id << 1) | (dir & 1)
}

pub const AF_V4: u8 = 4;
pub const AF_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Mode a pod was admitted with (SPEC §5). Fixed for the pod's lifetime.
pub const MODE_STRICT: u8 = 0;
pub const MODE_STANDARD: u8 = 1;

/// `PodInfo::flags`
pub const POD_FAIL_CLOSED: u8 = 1;

/// Per-pod state the programs need. Stored under the pod's VLAN id (trunk side) and
/// under its host-side interface index (pod side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Slot of the pod in the counters map (1..MAX_PODS; 0 counts unknown traffic).
    pub slot: u32,
    /// Compiled policy the pod uses; flipping this one field swaps its rule set atomically.
    pub policy_id: u32,
    pub host_ifindex: u32,
    /// Pod IPv4 address, network byte order as in the packet; 0 when the pod has none.
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub vlan: u16,
    pub mode: u8,
    pub flags: u8,
    pub has_ipv6: u8,
    pub _pad: [u8; 3],
    /// The pod's IPv6 link-local address (EUI-64 of its MAC, as Linux forms it): the
    /// only link-local source the pod may use, and only toward link-scope destinations.
    pub ipv6_ll: [u8; 16],
}

/// Node-wide settings (one element in `NODE_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub trunk_ifindex: u32,
    pub _pad0: u32,
    /// Where frames toward the VPC are addressed (the VPC router's MAC on the trunk).
    pub gateway_mac: [u8; 6],
    pub _pad1: [u8; 2],
    /// Idle timeouts in nanoseconds (SPEC §4), indexed by flow state (`FLOW_*`). An
    /// array rather than named fields so the lookup is one bounded index.
    pub timeouts_ns: [u64; FLOW_STATES],
    /// The node's primary IPv6 address: a pod's traffic to a link-local address (its
    /// host-side interface) is judged as traffic to the node. Zero when the node has none.
    pub node_ipv6: [u8; 16],
    /// Live flow entries one pod may hold (its share of the node-wide table).
    pub flows_per_pod: u32,
    pub _pad2: u32,
    /// Idle timeout of a half-open TCP entry while its pod holds more than half its share.
    pub syn_pressure_timeout_ns: u64,
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

/// Flow table key, seen from the pod: `local` is the pod's address. One entry serves
/// both directions of a flow; a same-node pod-to-pod flow has one entry per pod, since
/// each side's groups decide independently (as each ENI tracks on its own in EC2).
/// Aligned to 8 so the programs fill the address fields with word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// Host byte order. ICMP echo: `local_port` is the echo id, `remote_port` 0.
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Fragments of one datagram: (addresses, IP id, protocol). A first fragment that is
/// allowed records its verdict here; later fragments (no ports to judge) follow it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub first_seen_ns: u64,
    /// Rule behind the first fragment's verdict (0: state or always-allowed).
    pub cookie: u32,
    pub _pad: u32,
}

pub const MAX_FRAGS: u32 = 16384;
/// How long later fragments follow their first (Linux reassembly waits 30 s too).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last refresh.
    pub last_seen_ns: u64,
    pub cookie: u32,
    pub state: u8,
    /// Direction (DIR_*) of the packet that created the flow.
    pub origin_dir: u8,
    pub seen_reply: u8,
    pub _pad: u8,
    /// Counter slot of the pod that owns the entry: its share is charged for it, and an
    /// entry left by a deleted pod never serves a new pod given the same address.
    pub slot: u32,
    pub _pad2: u32,
}

/// ICMP query kinds (`Packet::icmp_query` in the programs): queries are tracked by
/// identifier and request type, and only the matching reply passes by state.
pub const ICMP_NOT_QUERY: u8 = 0;
pub const ICMP_REQUEST: u8 = 1;
pub const ICMP_REPLY: u8 = 2;

/// The request type of an ICMP/ICMPv6 query message and whether it is the reply:
/// echo, timestamp, information and address mask (v4); echo and node information (v6).
pub const fn icmp_query(v6: bool, ty: u8) -> Option<(u8, bool)> {
    if v6 {
        match ty {
            128 | 139 => Some((ty, false)),
            129 | 140 => Some((ty - 1, true)),
            _ => None,
        }
    } else {
        match ty {
            8 | 13 | 15 | 17 => Some((ty, false)),
            0 => Some((8, true)),
            14 | 16 | 18 => Some((ty - 1, true)),
            _ => None,
        }
    }
}

/// Counter kinds: what happened to a packet. Indexes `COUNTERS` together with the pod
/// slot: `slot * REASON_COUNT + reason`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    AllowFlow = 0,
    AllowPolicy = 1,
    AllowAlways = 2,
    AllowRelated = 3,
    PassLocal = 4,
    DropNoRule = 5,
    DropUnknownVlan = 6,
    DropUnknownPod = 7,
    DropSpoofMac = 8,
    DropSpoofIp = 9,
    DropEthertype = 10,
    DropMalformed = 11,
    DropFailClosed = 12,
    DropFlowTableFull = 13,
    DropFragment = 14,
    DropInternal = 15,
    /// A later fragment whose first fragment was allowed.
    AllowFragment = 16,
    /// A new flow refused because its pod holds its whole share of the flow table.
    DropPodFlowLimit = 17,
}

/// Reason numbers are append-only: counters and tools index by them.
pub const REASON_COUNT: u32 = 18;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::AllowFlow,
        Reason::AllowPolicy,
        Reason::AllowAlways,
        Reason::AllowRelated,
        Reason::PassLocal,
        Reason::DropNoRule,
        Reason::DropUnknownVlan,
        Reason::DropUnknownPod,
        Reason::DropSpoofMac,
        Reason::DropSpoofIp,
        Reason::DropEthertype,
        Reason::DropMalformed,
        Reason::DropFailClosed,
        Reason::DropFlowTableFull,
        Reason::DropFragment,
        Reason::DropInternal,
        Reason::AllowFragment,
        Reason::DropPodFlowLimit,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::AllowFlow => "allow_flow",
            Reason::AllowPolicy => "allow_policy",
            Reason::AllowAlways => "allow_always",
            Reason::AllowRelated => "allow_related",
            Reason::PassLocal => "pass_local",
            Reason::DropNoRule => "drop_no_rule",
            Reason::DropUnknownVlan => "drop_unknown_vlan",
            Reason::DropUnknownPod => "drop_unknown_pod",
            Reason::DropSpoofMac => "drop_spoof_mac",
            Reason::DropSpoofIp => "drop_spoof_ip",
            Reason::DropEthertype => "drop_ethertype",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFailClosed => "drop_fail_closed",
            Reason::DropFlowTableFull => "drop_flow_table_full",
            Reason::DropFragment => "drop_fragment",
            Reason::DropInternal => "drop_internal",
            Reason::AllowFragment => "allow_fragment",
            Reason::DropPodFlowLimit => "drop_pod_flow_limit",
        }
    }

    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::AllowFlow
                | Reason::AllowPolicy
                | Reason::AllowAlways
                | Reason::AllowRelated
                | Reason::PassLocal
                | Reason::AllowFragment
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

pub const COUNTER_ENTRIES: u32 = MAX_PODS * REASON_COUNT;

#[inline(always)]
pub const fn counter_index(slot: u32, reason: Reason) -> u32 {
    slot * REASON_COUNT + reason as u32
}

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
        PeerClass,
        PortKey,
        PortRule,
        AlwaysAllow,
        FlowKey,
        FlowValue,
        Counter,
        FragKey,
        FragValue,
    );
}

// The layouts both sides compile against: a change here is a map layout change.
const _: () = assert!(core::mem::size_of::<PodInfo>() == 68);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 112);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);
const _: () = assert!(core::mem::size_of::<PeerKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<PeerKeyV6>() == 20);
const _: () = assert!(core::mem::size_of::<PeerClass>() == 12);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(core::mem::size_of::<PortRule>() == 8);
const _: () = assert!(core::mem::size_of::<AlwaysAllow>() == 4);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);
