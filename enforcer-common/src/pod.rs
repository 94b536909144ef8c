//! A pod as the programs see it: the entry under its VLAN (trunk side) and under its
//! host interface's index (pod side).
use core::net::{Ipv4Addr, Ipv6Addr};

/// Mode a pod was admitted with (SPEC §5). Fixed for the pod's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PodMode {
    Strict = 0,
    Standard = 1,
}

/// `PodInfo::flags`
pub const POD_FAIL_CLOSED: u8 = 1;
/// Audit mode: a packet the pod's rules deny (`drop_no_rule`, `drop_no_node_rule`) is
/// reported as "would drop" and passes, tracked as a flow. Everything else (fail-closed,
/// spoofing, malformed) is enforced as ever.
pub const POD_AUDIT: u8 = 2;

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
    /// Standard mode: the compiled policy of the node's groups, which must allow the
    /// pod's traffic too (SPEC §5). 0 in strict mode.
    pub node_policy_id: u32,
}

impl PodInfo {
    /// A pod whose traffic is all dropped but for the always-allowed destinations: what
    /// a branch pod gets while something about it is wrong.
    pub const fn fail_closed(slot: u32, host_ifindex: u32, host_mac: [u8; 6]) -> PodInfo {
        PodInfo {
            slot,
            policy_id: 0,
            host_ifindex,
            ipv4: [0; 4],
            ipv6: [0; 16],
            mac: [0; 6],
            host_mac,
            vlan: 0,
            mode: PodMode::Strict as u8,
            flags: POD_FAIL_CLOSED,
            has_ipv6: 0,
            _pad: [0; 3],
            ipv6_ll: [0; 16],
            node_policy_id: 0,
        }
    }

    /// Sets the pod's addresses: the byte order the programs compare with packets.
    pub fn with_addresses(mut self, ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> PodInfo {
        self.ipv4 = ipv4.map_or([0; 4], |a| a.octets());
        self.ipv6 = ipv6.map_or([0; 16], |a| a.octets());
        self.has_ipv6 = ipv6.is_some() as u8;
        self
    }

    pub fn with_mode(mut self, mode: PodMode) -> PodInfo {
        self.mode = mode as u8;
        self
    }

    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        (self.ipv4 != [0; 4]).then(|| Ipv4Addr::from(self.ipv4))
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        (self.has_ipv6 != 0).then(|| Ipv6Addr::from(self.ipv6))
    }

    pub fn link_local(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ipv6_ll)
    }

    pub fn mode(&self) -> PodMode {
        if self.mode == PodMode::Standard as u8 {
            PodMode::Standard
        } else {
            PodMode::Strict
        }
    }

    pub const fn is_fail_closed(&self) -> bool {
        self.flags & POD_FAIL_CLOSED != 0
    }

    pub const fn is_audit(&self) -> bool {
        self.flags & POD_AUDIT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_mode_round_trip() {
        let p = PodInfo::fail_closed(3, 7, [2, 0, 0, 0, 0, 1])
            .with_addresses(
                Some(Ipv4Addr::new(10, 0, 1, 5)),
                Some("fd00::5".parse().unwrap()),
            )
            .with_mode(PodMode::Standard);
        assert_eq!(p.ipv4, [10, 0, 1, 5], "network order, as in the packet");
        assert_eq!(p.ipv4(), Some(Ipv4Addr::new(10, 0, 1, 5)));
        assert_eq!(p.ipv6(), Some("fd00::5".parse().unwrap()));
        assert_eq!(p.mode(), PodMode::Standard);
        assert!(p.is_fail_closed());
        let none = PodInfo::fail_closed(1, 1, [0; 6]).with_addresses(None, None);
        assert_eq!((none.ipv4(), none.ipv6()), (None, None));
    }
}
