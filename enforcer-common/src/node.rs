//! Node-wide settings the programs read.
use crate::flow::FLOW_STATES;

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
    /// The node's primary IPv4 address: the source of source-NATed traffic.
    pub node_ipv4: [u8; 4],
    /// The primary ENI: source-NATed traffic leaves through it.
    pub primary_ifindex: u32,
    /// NAT ports, inclusive (host order). The daemon reserves them from the node's own
    /// ephemeral ports, so the node's sockets never collide with a mapping.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Random ports tried for a new mapping before giving up (`drop_snat_exhausted`).
    pub snat_probes: u32,
}
