//! Where a destination is, for a pod's traffic (`DEST_V4`/`DEST_V6`), and the source-NAT
//! table of standard-mode pods (`SNAT_REV`): the reverse direction of each translated
//! flow. The forward direction needs no table of its own: the pod's flow entry holds
//! its NAT port (`FlowValue::nat_port`).

/// `DestClass::flags`: the address is the node's own (its primary addresses, NodeLocal
/// DNSCache, link-local agents): traffic to it is delivered on the node.
pub const DEST_NODE: u32 = 1;
/// The address is inside the VPC CIDRs or the SNAT exclusions: never source-NATed. A
/// destination with no entry at all is off-VPC.
pub const DEST_NO_SNAT: u32 = 2;

/// Value of the destination tries (longest prefix wins: a node address is `DEST_NODE |
/// DEST_NO_SNAT` inside a VPC CIDR that is `DEST_NO_SNAT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestClass {
    pub flags: u32,
}

/// A translated flow as the remote end addresses the node: (protocol, the node's NAT
/// port, remote address and port). ICMP queries: the NAT "port" is the echo
/// identifier and the remote port the request type, as in `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnatKey {
    pub remote: [u8; 4],
    /// Host byte order.
    pub remote_port: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl SnatKey {
    /// The mapping of a translated flow, from the pod's flow key (local: the pod;
    /// remote: off-VPC) and its NAT port.
    #[inline(always)]
    pub const fn of_flow(flow: &crate::FlowKey, nat_port: u16) -> SnatKey {
        let r = &flow.remote;
        SnatKey {
            remote: [r[0], r[1], r[2], r[3]],
            remote_port: flow.remote_port,
            nat_port,
            proto: flow.proto,
            _pad: [0; 3],
        }
    }
}

/// The pod end of a translated flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatValue {
    pub pod_ip: [u8; 4],
    /// Host byte order.
    pub pod_port: u16,
    pub _pad: u16,
    /// The pod's host interface (its `POD_BY_IFINDEX` key): replies are delivered there.
    pub pod_ifindex: u32,
}

/// Translated flows the node can hold at once (each also holds a flow entry).
pub const MAX_SNAT: u32 = 65536;

/// Upper bound of `NodeConfig::snat_probes`: the programs' loop needs a constant bound
/// for the verifier, and the daemon refuses a larger setting.
pub const MAX_SNAT_PROBES: u32 = 32;
