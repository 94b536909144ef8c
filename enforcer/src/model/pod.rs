//! Pods as every source describes them: the branch ENI a pod was given, or why it
//! can't be used.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::mac::MacAddr;

#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The branch ENI (the `vpc.amazonaws.com/pod-eni` annotation): none when the pod
    /// has none, or why it can't be used (which fails only this pod).
    pub branch_eni: Option<Result<BranchEni, String>>,
    /// Where the object came from (file and document), for error messages.
    pub origin: String,
    /// `spec.terminationGracePeriodSeconds`, when set.
    pub grace_period: Option<i64>,
    /// The TCP ports kubelet probes (liveness, readiness, startup) reach.
    pub probe_ports: Vec<ProbePort>,
}

/// A kubelet probe's port: the node reaches the pod there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePort {
    pub container: String,
    /// `liveness`, `readiness` or `startup`.
    pub probe: String,
    pub port: u16,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Pod object that can't be enforced as written (no name): it fails alone.
#[derive(Clone, Debug)]
pub struct BadPod {
    pub namespace: String,
    pub origin: String,
    pub problem: String,
}

/// The branch ENI given to a pod (element 0 of the annotation's array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchEni {
    pub eni_id: String,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub vlan: u16,
    pub subnet_cidr: Option<String>,
    pub subnet_v6_cidr: Option<String>,
}

/// The IPv6 link-local address Linux gives an interface with this MAC by default
/// (modified EUI-64, RFC 4291 appendix A): fe80::(mac0^2)(mac1):(mac2)ff:fe(mac3):(mac4)(mac5).
pub fn link_local_v6(mac: &MacAddr) -> Ipv6Addr {
    let mac = mac.octets();
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_linux_eui64() {
        // `ip -6 addr` on an interface with MAC 02:00:00:00:0a:01 shows fe80::ff:fe00:a01.
        let mac: MacAddr = "02:00:00:00:0a:01".parse().unwrap();
        assert_eq!(link_local_v6(&mac).to_string(), "fe80::ff:fe00:a01");
    }
}
