//! What happened to a packet: one table. The numbers index the pinned `COUNTERS` map and
//! are append-only: a retired reason keeps its number, and no number changes meaning.
use crate::MAX_PODS;

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
    /// Standard mode: the pod's groups allow it, the node's groups do not.
    DropNoNodeRule = 18,
    /// Standard mode: to or from the node itself or another pod on it, which bypasses
    /// groups.
    AllowHostLocal = 19,
    /// Standard mode, off-VPC: no free NAT port for a new flow (never sent with the
    /// pod's own address instead).
    DropSnatExhausted = 20,
    /// Standard mode, off-VPC: a packet source NAT cannot translate (a protocol without
    /// ports, a later fragment, an ICMP error from the pod); never sent untranslated.
    DropNoSnat = 21,
}

/// Reason numbers are append-only: counters and tools index by them.
pub const REASON_COUNT: u32 = 22;

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
        Reason::DropNoNodeRule,
        Reason::AllowHostLocal,
        Reason::DropSnatExhausted,
        Reason::DropNoSnat,
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
            Reason::DropNoNodeRule => "drop_no_node_rule",
            Reason::AllowHostLocal => "allow_host_local",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropNoSnat => "drop_no_snat",
        }
    }

    /// The reason a stored number stands for.
    pub const fn from_index(i: u32) -> Option<Reason> {
        if (i as usize) < Reason::ALL.len() {
            Some(Reason::ALL[i as usize])
        } else {
            None
        }
    }

    /// The reason a counter name stands for (as status and tools print them).
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
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
                | Reason::AllowHostLocal
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_dense_and_named_once() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is numbered by its place");
            assert_eq!(Reason::from_name(r.name()), Some(*r));
            assert_eq!(r.is_drop(), r.name().starts_with("drop"), "{r:?}");
        }
    }
}
