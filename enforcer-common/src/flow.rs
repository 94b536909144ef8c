//! The flow state machine and idle timeouts (SPEC §4), shared by the programs (which
//! move flows along), the daemon's sweeper (which expires them) and the host tests,
//! which check every transition.
use crate::policy::Direction;
use crate::{AF_V4, NodeConfig, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A flow's state. Stored as its number in `FlowValue::state` (any byte must be a valid
/// map value), so the programs work with the `FLOW_*` numbers below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    /// TCP: SYN seen, no reply yet.
    TcpSyn = 0,
    TcpEstablished = 1,
    /// TCP: FIN or RST seen.
    TcpClosing = 2,
    /// UDP seen one way only.
    Udp = 3,
    /// UDP seen both ways.
    UdpStream = 4,
    Icmp = 5,
    /// Other protocols, tracked by addresses only.
    Other = 6,
}

impl FlowState {
    pub const ALL: [FlowState; 7] = [
        FlowState::TcpSyn,
        FlowState::TcpEstablished,
        FlowState::TcpClosing,
        FlowState::Udp,
        FlowState::UdpStream,
        FlowState::Icmp,
        FlowState::Other,
    ];

    /// The state a stored number stands for.
    pub const fn from_raw(raw: u8) -> Option<FlowState> {
        if (raw as usize) < FlowState::ALL.len() {
            Some(FlowState::ALL[raw as usize])
        } else {
            None
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            FlowState::TcpSyn => "tcp-syn-sent",
            FlowState::TcpEstablished => "tcp-established",
            FlowState::TcpClosing => "tcp-closing",
            FlowState::Udp => "udp",
            FlowState::UdpStream => "udp-stream",
            FlowState::Icmp => "icmp",
            FlowState::Other => "other",
        }
    }
}

pub const FLOW_TCP_SYN: u8 = FlowState::TcpSyn as u8;
pub const FLOW_TCP_ESTABLISHED: u8 = FlowState::TcpEstablished as u8;
pub const FLOW_TCP_CLOSING: u8 = FlowState::TcpClosing as u8;
pub const FLOW_UDP: u8 = FlowState::Udp as u8;
pub const FLOW_UDP_STREAM: u8 = FlowState::UdpStream as u8;
pub const FLOW_ICMP: u8 = FlowState::Icmp as u8;
pub const FLOW_OTHER: u8 = FlowState::Other as u8;

/// Slots in `NodeConfig::timeouts_ns`: a power of two, so a masked state always indexes.
pub const FLOW_STATES: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// State of a flow its first packet creates.
#[inline(always)]
pub const fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    match proto {
        PROTO_TCP => {
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                FLOW_TCP_CLOSING
            } else if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 {
                FLOW_TCP_SYN
            } else {
                // Picked up mid-stream (e.g. after the table was swept): allowed by policy
                // now, so tracked as established.
                FLOW_TCP_ESTABLISHED
            }
        }
        PROTO_UDP => FLOW_UDP,
        PROTO_ICMP | PROTO_ICMPV6 => FLOW_ICMP,
        _ => FLOW_OTHER,
    }
}

/// State after a packet of an existing flow; `reply` when it goes the other way from
/// the packet that created the flow.
#[inline(always)]
pub const fn next_state(state: u8, tcp_flags: u8, reply: bool) -> u8 {
    match state {
        FLOW_TCP_SYN | FLOW_TCP_ESTABLISHED => {
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                FLOW_TCP_CLOSING
            } else if reply {
                FLOW_TCP_ESTABLISHED
            } else {
                state
            }
        }
        FLOW_UDP if reply => FLOW_UDP_STREAM,
        s => s,
    }
}

/// The TCP flags whose presence makes a packet change a flow in `state` going the
/// `reply` way, or `None` when every packet changes it. A packet with `tcp_flags` (0 for
/// UDP) leaves the flow as it is exactly when this is `Some(m)` and `tcp_flags & m == 0`
/// (tested against `next_state` for every state, flag byte and direction): the flow
/// copies keep the mask, so a fast path checks one AND instead of the state machine.
#[inline(always)]
pub const fn changing_flags(state: u8, reply: bool) -> Option<u8> {
    if next_state(state, 0, reply) != state {
        return None;
    }
    let mut mask = 0;
    let mut bit = 0;
    while bit < 8 {
        let flag = 1 << bit;
        if next_state(state, flag, reply) != state {
            mask |= flag;
        }
        bit += 1;
    }
    Some(mask)
}

/// The configured idle timeout of a state.
#[inline(always)]
pub const fn timeout_ns(cfg: &NodeConfig, state: u8) -> u64 {
    cfg.timeouts_ns[(state as usize) & (FLOW_STATES - 1)]
}

/// How long an entry may stay idle, given how many entries its pod holds: half-open TCP
/// of a pod past half its share gets the short pressure timeout, so a SYN flood ages
/// out fast.
#[inline(always)]
pub const fn idle_limit(cfg: &NodeConfig, state: u8, pod_flows: u64) -> u64 {
    let t = timeout_ns(cfg, state);
    if state == FLOW_TCP_SYN
        && cfg.syn_pressure_timeout_ns < t
        && pod_flows * 2 > cfg.flows_per_pod as u64
    {
        return cfg.syn_pressure_timeout_ns;
    }
    t
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
    /// Host byte order. ICMP queries: (identifier, request type) as seen from the pod.
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
    /// Whose verdict: a datagram between two pods of the node is judged by each, and
    /// the receiver's refusal must not be overridden by the sender's allowance.
    pub slot: u16,
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
    /// `Direction` of the packet that created the flow.
    pub origin_dir: u8,
    pub seen_reply: u8,
    /// Where the flow goes (`PATH_*`): lets a flow hit skip the look-ups that found it.
    pub path: u8,
    /// Counter slot of the pod that owns the entry: its share is charged for it, and an
    /// entry left by a deleted pod never serves a new pod given the same address.
    pub slot: u32,
    /// Standard mode: the node group's rule that allowed too (0 in strict mode).
    pub node_cookie: u32,
    /// `PATH_SNAT`: the node's port (or ICMP identifier) standing for the pod's.
    pub nat_port: u16,
    pub _pad: u16,
    /// `PATH_POD`: the other pod's host interface (its `POD_BY_IFINDEX` key), so that
    /// later packets skip the look-up by address.
    pub peer_ifindex: u32,
    /// `bpf_ktime_get_coarse_ns` when the flow was opened (layout 7 on; 0 for a flow
    /// carried over from layout 6, whose age is not known).
    pub opened_ns: u64,
    /// Only in the `layout-next` test build: makes its FlowValue one u64 longer, as a
    /// next version adding a field would, so that the upgrade test migrates flows
    /// across a changed value layout.
    #[cfg(feature = "layout-next")]
    pub next_field: u64,
}

/// `FlowValue::path`: through the VPC (the trunk, tagged with the pod's VLAN).
pub const PATH_VPC: u8 = 0;
/// To or from another branch pod of this node: delivered on the node.
pub const PATH_POD: u8 = 1;
/// To or from the node itself: delivered on the node.
pub const PATH_NODE: u8 = 2;
/// Off-VPC, source-NATed to the node's primary address and out of the primary ENI.
pub const PATH_SNAT: u8 = 3;

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

/// An address of a flow key as the family says (IPv4 in the first four bytes).
fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

impl FlowKey {
    /// The pod's side.
    pub fn local(&self) -> IpAddr {
        addr(self.family, &self.local)
    }

    pub fn remote(&self) -> IpAddr {
        addr(self.family, &self.remote)
    }
}

impl FlowValue {
    /// Which way the packet that created the flow went.
    pub const fn origin(&self) -> Direction {
        Direction::from_raw(self.origin_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FIN: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;

    #[test]
    fn keys_read_back_by_family() {
        let mut k = FlowKey {
            family: AF_V4,
            ..FlowKey::default()
        };
        k.local[..4].copy_from_slice(&[10, 0, 1, 5]);
        assert_eq!(k.local(), "10.0.1.5".parse::<IpAddr>().unwrap());
        k.family = crate::AF_V6;
        k.remote = "fd00::9".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(k.remote(), "fd00::9".parse::<IpAddr>().unwrap());
        let v = FlowValue {
            origin_dir: Direction::Egress as u8,
            ..FlowValue::default()
        };
        assert_eq!(v.origin(), Direction::Egress);
    }

    /// The fast paths' one-AND check says "unchanged" for exactly the packets the state
    /// machine leaves alone: every state, flag byte and direction.
    #[test]
    fn changing_flags_agree_with_the_state_machine() {
        for state in 0..FLOW_STATES as u8 {
            for reply in [false, true] {
                let mask = changing_flags(state, reply);
                for flags in 0..=u8::MAX {
                    let unchanged = next_state(state, flags, reply) == state;
                    let by_mask = mask.is_some_and(|m| flags & m == 0);
                    assert_eq!(
                        by_mask, unchanged,
                        "state {state} reply {reply} flags {flags:#04x}"
                    );
                }
            }
        }
        // What the copies rely on: an established TCP flow changes on FIN or RST only;
        // a UDP flow's first reply always changes it.
        assert_eq!(
            changing_flags(FLOW_TCP_ESTABLISHED, true),
            Some(TCP_FIN | TCP_RST)
        );
        assert_eq!(changing_flags(FLOW_UDP, true), None);
        assert_eq!(changing_flags(FLOW_UDP, false), Some(0));
    }

    #[test]
    fn states_are_numbered_by_place() {
        for (i, st) in FlowState::ALL.iter().enumerate() {
            assert_eq!(*st as usize, i);
            assert_eq!(FlowState::from_raw(i as u8), Some(*st));
        }
        assert_eq!(FlowState::from_raw(7), None);
        assert!(
            FlowState::ALL.len() <= FLOW_STATES,
            "every state has a timeout slot"
        );
    }

    #[test]
    fn first_packets() {
        for (proto, flags, want, what) in [
            (PROTO_TCP, SYN, FLOW_TCP_SYN, "a SYN opens a half-open flow"),
            (
                PROTO_TCP,
                ACK,
                FLOW_TCP_ESTABLISHED,
                "mid-stream: established",
            ),
            (
                PROTO_TCP,
                SYNACK,
                FLOW_TCP_ESTABLISHED,
                "a SYN-ACK is not an opening",
            ),
            (PROTO_TCP, FIN, FLOW_TCP_CLOSING, "a FIN: closing"),
            (PROTO_TCP, RST, FLOW_TCP_CLOSING, "a RST: closing"),
            (PROTO_UDP, 0, FLOW_UDP, "UDP"),
            (PROTO_ICMP, 0, FLOW_ICMP, "ICMP"),
            (PROTO_ICMPV6, 0, FLOW_ICMP, "ICMPv6"),
            (47, 0, FLOW_OTHER, "another protocol"),
        ] {
            assert_eq!(initial_state(proto, flags), want, "{what}");
        }
    }

    #[test]
    fn every_transition() {
        for (state, flags, reply, want, what) in [
            (
                FLOW_TCP_SYN,
                SYN,
                false,
                FLOW_TCP_SYN,
                "SYN retransmitted: still half-open",
            ),
            (
                FLOW_TCP_SYN,
                ACK,
                false,
                FLOW_TCP_SYN,
                "more from the opener: still half-open",
            ),
            (
                FLOW_TCP_SYN,
                SYNACK,
                true,
                FLOW_TCP_ESTABLISHED,
                "the reply establishes",
            ),
            (
                FLOW_TCP_SYN,
                RST,
                true,
                FLOW_TCP_CLOSING,
                "refused: closing",
            ),
            (
                FLOW_TCP_SYN,
                FIN,
                false,
                FLOW_TCP_CLOSING,
                "FIN while half-open",
            ),
            (
                FLOW_TCP_ESTABLISHED,
                ACK,
                false,
                FLOW_TCP_ESTABLISHED,
                "data",
            ),
            (
                FLOW_TCP_ESTABLISHED,
                ACK,
                true,
                FLOW_TCP_ESTABLISHED,
                "reply data",
            ),
            (FLOW_TCP_ESTABLISHED, FIN, false, FLOW_TCP_CLOSING, "FIN"),
            (
                FLOW_TCP_ESTABLISHED,
                RST,
                true,
                FLOW_TCP_CLOSING,
                "RST from the peer",
            ),
            (
                FLOW_TCP_CLOSING,
                ACK,
                true,
                FLOW_TCP_CLOSING,
                "closing stays closing",
            ),
            (
                FLOW_TCP_CLOSING,
                SYN,
                false,
                FLOW_TCP_CLOSING,
                "no reopening by state",
            ),
            (FLOW_UDP, 0, false, FLOW_UDP, "one way only: still UDP"),
            (FLOW_UDP, 0, true, FLOW_UDP_STREAM, "a reply makes a stream"),
            (
                FLOW_UDP_STREAM,
                0,
                false,
                FLOW_UDP_STREAM,
                "a stream stays a stream",
            ),
            (FLOW_ICMP, 0, true, FLOW_ICMP, "ICMP"),
            (FLOW_OTHER, 0, true, FLOW_OTHER, "other protocols"),
        ] {
            assert_eq!(next_state(state, flags, reply), want, "{what}");
        }
    }

    #[test]
    fn half_open_entries_age_fast_only_under_pressure() {
        let mut cfg = NodeConfig {
            flows_per_pod: 100,
            syn_pressure_timeout_ns: 5,
            ..NodeConfig::default()
        };
        cfg.timeouts_ns = [60, 432000, 60, 30, 180, 30, 600, 600];
        assert_eq!(
            idle_limit(&cfg, FLOW_TCP_SYN, 50),
            60,
            "at half the share: normal"
        );
        assert_eq!(idle_limit(&cfg, FLOW_TCP_SYN, 51), 5, "past half: pressure");
        assert_eq!(
            idle_limit(&cfg, FLOW_TCP_ESTABLISHED, 100),
            432000,
            "only half-open entries"
        );
        cfg.syn_pressure_timeout_ns = 120;
        assert_eq!(
            idle_limit(&cfg, FLOW_TCP_SYN, 100),
            60,
            "never longer than normal"
        );
    }
}
