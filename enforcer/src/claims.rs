//! Who owns each VLAN, MAC and address on the node. Two pods must never share one: the
//! trunk finds a pod by VLAN, anti-spoofing checks its MAC, flows are keyed by address.
//! The first claimant keeps it, and pods that held their claims in the previous apply
//! come first: a newcomer that clashes fails closed and the pod already enforced keeps
//! working. The same goes for two Pod objects with one namespace/name.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::pod::BranchEni;
use crate::plan::PodError;
use crate::policy::resolve::Resolved;

/// What a pod with a branch ENI holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub ips: Vec<IpAddr>,
}

impl Claim {
    fn of(eni: &BranchEni) -> Claim {
        Claim {
            vlan: eni.vlan,
            mac: eni.mac.octets(),
            ips: eni
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(eni.ipv6.map(IpAddr::V6))
                .collect(),
        }
    }
}

#[derive(Hash, PartialEq, Eq)]
enum Held {
    Vlan(u16),
    Mac([u8; 6]),
    Ip(IpAddr),
}

/// Orders `resolved` incumbents first, fails closed each newcomer that clashes (its
/// error names the pod it clashes with) or whose addresses are reserved, and marks
/// second Pod objects of one namespace/name as duplicates. Returns the claims now held.
pub fn settle(
    resolved: &mut [Resolved],
    previous: &BTreeMap<String, Claim>,
    reserved: &[IpNet],
) -> BTreeMap<String, Claim> {
    let incumbent = |r: &Resolved| {
        r.eni
            .as_ref()
            .is_some_and(|e| previous.get(&r.pod.key()) == Some(&Claim::of(e)))
    };
    // Stable: among incumbents and among newcomers, input order decides.
    resolved.sort_by_key(|r| !incumbent(r));
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut held: HashMap<Held, String> = HashMap::new();
    let mut now = BTreeMap::new();
    for r in resolved.iter_mut() {
        let key = r.pod.key();
        if let Some(first) = keys.get(&key) {
            r.duplicate = true;
            r.error = Some(PodError::Duplicate {
                key: key.clone(),
                origin: r.pod.origin.clone(),
                first: first.clone(),
            });
            continue;
        }
        keys.insert(key.clone(), r.pod.origin.clone());
        let Some(eni) = &r.eni else { continue };
        let claim = Claim::of(eni);
        if let Some(ip) = claim
            .ips
            .iter()
            .find(|ip| reserved.iter().any(|n| n.contains(*ip)))
        {
            r.error = Some(PodError::ReservedAddress(*ip));
            continue;
        }
        let wanted: Vec<(Held, String)> =
            std::iter::once((Held::Vlan(claim.vlan), format!("VLAN {}", claim.vlan)))
                .chain(std::iter::once((
                    Held::Mac(claim.mac),
                    format!("MAC {}", crate::model::mac::MacAddr::new(claim.mac)),
                )))
                .chain(
                    claim
                        .ips
                        .iter()
                        .map(|ip| (Held::Ip(*ip), format!("address {ip}"))),
                )
                .collect();
        if let Some((what, other)) = wanted
            .iter()
            .find_map(|(h, what)| held.get(h).map(|o| (what, o)))
        {
            r.error = Some(PodError::Clash {
                what: what.clone(),
                holder: other.clone(),
            });
            r.clash = true;
            continue;
        }
        for (h, _) in wanted {
            held.insert(h, key.clone());
        }
        now.insert(key, claim);
    }
    now
}
