//! Kubernetes shapes: Pods (with the `vpc.amazonaws.com/pod-eni` annotation),
//! SecurityGroupPolicy (`vpcresources.k8s.aws/v1beta1`) and ServiceAccounts.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::policy::selector::LabelSelector;
use crate::sources::SourceError;

pub const POD_ENI_ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The raw annotation; parsed with [`parse_pod_eni`] so a bad one fails only this pod.
    pub pod_eni: Option<String>,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
pub struct SecurityGroupPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Option<LabelSelector>,
    pub service_account_selector: Option<LabelSelector>,
    pub group_ids: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Everything read from the Kubernetes side.
#[derive(Clone, Debug, Default)]
pub struct KubeObjects {
    pub pods: Vec<Pod>,
    pub policies: Vec<SecurityGroupPolicy>,
    pub service_accounts: Vec<ServiceAccount>,
}

/// The branch ENI given to a pod (element 0 of the annotation's array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchEni {
    pub eni_id: String,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub vlan: u16,
    pub subnet_cidr: Option<String>,
    pub subnet_v6_cidr: Option<String>,
}

/// The IPv6 link-local address Linux gives an interface with this MAC by default
/// (modified EUI-64, RFC 4291 appendix A): fe80::(mac0^2)(mac1):(mac2)ff:fe(mac3):(mac4)(mac5).
pub fn link_local_v6(mac: &[u8; 6]) -> Ipv6Addr {
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEni {
    #[serde(default)]
    eni_id: String,
    #[serde(default)]
    if_address: String,
    #[serde(default)]
    private_ip: String,
    #[serde(default)]
    ipv6_addr: String,
    #[serde(alias = "vlanID", default)]
    vlan_id: serde_json::Value,
    subnet_cidr: Option<String>,
    subnet_v6_cidr: Option<String>,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// Parses the pod-eni annotation; the error says what is wrong with it.
pub fn parse_pod_eni(raw: &str) -> Result<BranchEni, String> {
    let list: Vec<RawEni> = serde_json::from_str(raw)
        .map_err(|e| format!("annotation {POD_ENI_ANNOTATION} is not a JSON array of ENIs: {e}"))?;
    let Some(e) = list.into_iter().next() else {
        return Err(format!("annotation {POD_ENI_ANNOTATION} is an empty array"));
    };
    let mac = parse_mac(&e.if_address).ok_or_else(|| {
        format!(
            "annotation {POD_ENI_ANNOTATION}: ifAddress {:?} is not a MAC address",
            e.if_address
        )
    })?;
    if mac == [0; 6] {
        return Err(format!(
            "annotation {POD_ENI_ANNOTATION}: ifAddress is all zero"
        ));
    }
    let vlan = match &e.vlan_id {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    let vlan = match vlan {
        Some(v) if (1..4095).contains(&v) => v as u16,
        _ => {
            return Err(format!(
                "annotation {POD_ENI_ANNOTATION}: vlanId {} is missing or not in 1..4094",
                e.vlan_id
            ));
        }
    };
    let ipv4 = if e.private_ip.is_empty() {
        None
    } else {
        Some(e.private_ip.parse::<Ipv4Addr>().map_err(|_| {
            format!(
                "annotation {POD_ENI_ANNOTATION}: privateIp {:?} is not an IPv4 address",
                e.private_ip
            )
        })?)
    };
    let ipv6 = if e.ipv6_addr.is_empty() {
        None
    } else {
        Some(e.ipv6_addr.parse::<Ipv6Addr>().map_err(|_| {
            format!(
                "annotation {POD_ENI_ANNOTATION}: ipv6Addr {:?} is not an IPv6 address",
                e.ipv6_addr
            )
        })?)
    };
    if ipv4.is_none_or(|a| a.is_unspecified()) && ipv6.is_none_or(|a| a.is_unspecified()) {
        return Err(format!(
            "annotation {POD_ENI_ANNOTATION}: no privateIp or ipv6Addr"
        ));
    }
    Ok(BranchEni {
        eni_id: e.eni_id,
        mac,
        ipv4: ipv4.filter(|a| !a.is_unspecified()),
        ipv6: ipv6.filter(|a| !a.is_unspecified()),
        vlan,
        subnet_cidr: e.subnet_cidr,
        subnet_v6_cidr: e.subnet_v6_cidr,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: serde_json::Value,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSgpSpec {
    pod_selector: Option<LabelSelector>,
    service_account_selector: Option<LabelSelector>,
    security_groups: Option<RawGroups>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawGroups {
    #[serde(default)]
    group_ids: Vec<String>,
}

impl KubeObjects {
    /// Adds every object of a YAML (multi-document) or JSON file; `List` kinds are opened.
    pub fn add_documents(&mut self, text: &str, origin: &str) -> Result<(), SourceError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_json::Value::deserialize(doc).map_err(|e| SourceError::Invalid {
                object: format!("{origin} document {i}"),
                problem: format!("not YAML/JSON: {e}"),
            })?;
            if value.is_null() {
                continue;
            }
            self.add_value(value, &format!("{origin} document {i}"))?;
        }
        Ok(())
    }

    fn add_value(&mut self, value: serde_json::Value, origin: &str) -> Result<(), SourceError> {
        let obj: RawObject = serde_json::from_value(value).map_err(|e| SourceError::Invalid {
            object: origin.to_string(),
            problem: format!("not a Kubernetes object: {e}"),
        })?;
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let what = format!("{} {}/{}", obj.kind, ns, obj.metadata.name);
        match obj.kind.as_str() {
            "List" | "PodList" | "SecurityGroupPolicyList" | "ServiceAccountList" => {
                for (i, item) in obj.items.into_iter().enumerate() {
                    self.add_value(item, &format!("{origin} item {i}"))?;
                }
            }
            "Pod" => {
                let sa = obj
                    .spec
                    .get("serviceAccountName")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default")
                    .to_string();
                self.pods.push(Pod {
                    namespace: ns,
                    name: obj.metadata.name,
                    labels: obj.metadata.labels,
                    service_account: sa,
                    pod_eni: obj.metadata.annotations.get(POD_ENI_ANNOTATION).cloned(),
                });
            }
            "SecurityGroupPolicy" => {
                let spec: RawSgpSpec =
                    serde_json::from_value(obj.spec).map_err(|e| SourceError::Invalid {
                        object: what.clone(),
                        problem: format!("bad spec: {e}"),
                    })?;
                for sel in [&spec.pod_selector, &spec.service_account_selector]
                    .into_iter()
                    .flatten()
                {
                    sel.validate().map_err(|problem| SourceError::Invalid {
                        object: what.clone(),
                        problem,
                    })?;
                }
                self.policies.push(SecurityGroupPolicy {
                    namespace: ns,
                    name: obj.metadata.name,
                    pod_selector: spec.pod_selector,
                    service_account_selector: spec.service_account_selector,
                    group_ids: spec.security_groups.unwrap_or_default().group_ids,
                });
            }
            "ServiceAccount" => self.service_accounts.push(ServiceAccount {
                namespace: ns,
                name: obj.metadata.name,
                labels: obj.metadata.labels,
            }),
            // Other kinds (Services, Deployments, ...) may share a manifest; not ours.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_linux_eui64() {
        // `ip -6 addr` on an interface with MAC 02:00:00:00:0a:01 shows fe80::ff:fe00:a01.
        assert_eq!(
            link_local_v6(&[0x02, 0, 0, 0, 0x0a, 0x01]).to_string(),
            "fe80::ff:fe00:a01"
        );
    }

    #[test]
    fn pod_eni_accepts_both_vlan_spellings() {
        let a = parse_pod_eni(r#"[{"eniId":"eni-1","ifAddress":"02:00:00:00:00:01","privateIp":"10.0.1.5","vlanId":3,"subnetCidr":"10.0.1.0/24"}]"#).unwrap();
        let b = parse_pod_eni(r#"[{"eniId":"eni-1","ifAddress":"02:00:00:00:00:01","privateIp":"10.0.1.5","vlanID":3}]"#).unwrap();
        assert_eq!(a.vlan, 3);
        assert_eq!(b.vlan, 3);
        assert_eq!(a.ipv4, Some("10.0.1.5".parse().unwrap()));
    }

    #[test]
    fn pod_eni_rejects_missing_parts() {
        for (raw, needle) in [
            (r#"{"eniId":"x"}"#, "JSON array"),
            (r#"[]"#, "empty"),
            (
                r#"[{"ifAddress":"zz","privateIp":"10.0.0.1","vlanId":1}]"#,
                "ifAddress",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","privateIp":"10.0.0.1","vlanId":0}]"#,
                "vlanId",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","vlanId":2}]"#,
                "no privateIp",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","privateIp":"0.0.0.0","vlanId":2}]"#,
                "no privateIp",
            ),
        ] {
            let e = parse_pod_eni(raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let mut k = KubeObjects::default();
        k.add_documents(
            r#"
apiVersion: vpcresources.k8s.aws/v1beta1
kind: SecurityGroupPolicy
metadata: {name: p, namespace: ns1}
spec:
  podSelector: {matchLabels: {role: my-role}}
  securityGroups: {groupIds: [sg-1, sg-2]}
---
kind: List
items:
- kind: Pod
  metadata: {name: a, namespace: ns1, labels: {role: my-role}}
  spec: {serviceAccountName: sa1}
"#,
            "test",
        )
        .unwrap();
        assert_eq!(k.policies[0].group_ids, vec!["sg-1", "sg-2"]);
        assert_eq!(k.pods[0].service_account, "sa1");
    }
}
