//! Flow events: what the programs report to the daemon through the `EVENTS` ring
//! buffer — every denied packet and every new flow the rules allow — rate-limited per
//! pod in the kernel. Not pinned: each daemon reads its own programs' buffer.

/// One event. The flow as the pod sees it (local = the pod's end).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE).
    pub time_ns: u64,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// Host byte order; ICMP: 0.
    pub local_port: u16,
    pub remote_port: u16,
    /// The pod's counter slot.
    pub slot: u32,
    /// The allowing rule (an allow), 0 for a drop.
    pub cookie: u32,
    /// Standard mode: the node group's allowing rule.
    pub node_cookie: u32,
    pub proto: u8,
    pub family: u8,
    /// `Direction` from the pod.
    pub direction: u8,
    /// `Reason`: the counter the packet went to, or (audit) the drop it was spared.
    pub reason: u8,
    /// 1: audit mode passed a packet its rules deny ("would drop").
    pub audit: u8,
    pub _pad: [u8; 3],
}

/// A pod's event budget on one CPU: a token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    pub tokens: u64,
    /// When the bucket was last refilled.
    pub refilled_ns: u64,
}

/// Events a pod may emit per second on each CPU, and the burst it may save up: a
/// flood of denied packets costs the reader a bounded number of events (the rest are
/// counted in `EVENTS_LOST`), never a packet.
pub const EVENTS_PER_SECOND: u64 = 100;
pub const EVENT_BURST: u64 = 200;
/// The ring buffer's size (a power of two, page-aligned): at 64 bytes an event, 16 384
/// events between two reads.
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Rules whose hits `RULE_HITS` counts; past it a new rule's hits go uncounted (its
/// flows are judged all the same).
pub const MAX_RULE_HITS: u32 = 65_536;
