//! Kubernetes shapes: Pods (with the `vpc.amazonaws.com/pod-eni` annotation),
//! SecurityGroupPolicy (`vpcresources.k8s.aws/v1beta1`) and ServiceAccounts.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::model::mac::MacAddr;
use crate::model::objects::KubeObjects;
use crate::model::pod::{BadPod, BranchEni, Pod};
use crate::model::policy::{SecurityGroupPolicy, ServiceAccount};
use crate::model::selector::LabelSelector;
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

/// The TCP ports of each container's probes (`httpGet`, `tcpSocket`, `grpc`); a named
/// port is looked up in the container's `ports`. Exec probes reach nothing.
fn probe_ports(spec: &serde_json::Value) -> Vec<crate::model::pod::ProbePort> {
    let mut out = Vec::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        let container = c["name"].as_str().unwrap_or("").to_string();
        for probe in ["liveness", "readiness", "startup"] {
            let p = &c[format!("{probe}Probe")];
            for how in ["httpGet", "tcpSocket", "grpc"] {
                let port = match &p[how]["port"] {
                    serde_json::Value::Number(n) => n.as_u64(),
                    serde_json::Value::String(name) => c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|cp| cp["name"] == name.as_str())
                        .and_then(|cp| cp["containerPort"].as_u64()),
                    _ => None,
                };
                if let Some(port) = port.and_then(|p| u16::try_from(p).ok()) {
                    out.push(crate::model::pod::ProbePort {
                        container: container.clone(),
                        probe: probe.into(),
                        port,
                    });
                }
            }
        }
    }
    out
}

/// Parses the pod-eni annotation; the error says what is wrong with it.
pub fn parse_pod_eni(raw: &str) -> Result<BranchEni, String> {
    let list: Vec<RawEni> = serde_json::from_str(raw)
        .map_err(|e| format!("annotation {POD_ENI_ANNOTATION} is not a JSON array of ENIs: {e}"))?;
    let Some(e) = list.into_iter().next() else {
        return Err(format!("annotation {POD_ENI_ANNOTATION} is an empty array"));
    };
    let mac: MacAddr = e.if_address.parse().map_err(|_| {
        format!(
            "annotation {POD_ENI_ANNOTATION}: ifAddress {:?} is not a MAC address",
            e.if_address
        )
    })?;
    if mac.is_zero() {
        return Err(format!(
            "annotation {POD_ENI_ANNOTATION}: ifAddress is all zero"
        ));
    }
    if mac.is_group() {
        return Err(format!(
            "annotation {POD_ENI_ANNOTATION}: ifAddress {} is a multicast/broadcast MAC, \
             not an interface's",
            e.if_address
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
    let unusable = |ip: IpAddr| match ip {
        IpAddr::V4(a) => {
            a.is_broadcast() || a.is_loopback() || a.is_multicast() || a.is_link_local()
        }
        IpAddr::V6(a) => a.is_loopback() || a.is_multicast() || a.is_unicast_link_local(),
    };
    if let Some(ip) = ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(ipv6.map(IpAddr::V6))
        .find(|ip| unusable(*ip))
    {
        return Err(format!(
            "annotation {POD_ENI_ANNOTATION}: {ip} is a loopback, broadcast, multicast or \
             link-local address, not a branch ENI's"
        ));
    }
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

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct RawGroups {
    #[serde(default)]
    group_ids: Vec<String>,
}

/// One optional field of a spec, read on its own so a bad field names itself.
fn spec_field<T: serde::de::DeserializeOwned>(
    spec: &serde_json::Value,
    field: &str,
) -> Result<Option<T>, String> {
    match spec.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| format!("spec.{field}: {e}")),
    }
}

/// A selector field, read and validated.
fn selector(spec: &serde_json::Value, field: &str) -> Result<Option<LabelSelector>, String> {
    let sel: Option<LabelSelector> = spec_field(spec, field)?;
    if let Some(s) = &sel {
        s.validate().map_err(|e| format!("spec.{field}: {e}"))?;
    }
    Ok(sel)
}

impl KubeObjects {
    /// Adds every object of a YAML (multi-document) or JSON file; `List` kinds are
    /// opened. Only text that is not YAML at all is an error for the whole file; a
    /// document that is no Kubernetes object is recorded in `errors` and skipped.
    pub fn add_documents(&mut self, text: &str, origin: &str) -> Result<(), SourceError> {
        let mut docs = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_json::Value::deserialize(doc).map_err(|e| SourceError::Invalid {
                object: format!("{origin} document {i}"),
                problem: format!("not YAML/JSON: {e}"),
            })?;
            docs.push(value);
        }
        for (i, value) in docs.into_iter().enumerate() {
            if !value.is_null() {
                self.add_value(value, &format!("{origin} document {i}"));
            }
        }
        Ok(())
    }

    /// Adds one object (as the Kubernetes API source gets it); an object that is not
    /// usable is recorded in `errors`, like a bad document of a file.
    pub fn add_object(&mut self, value: serde_json::Value, origin: &str) {
        self.add_value(value, origin);
    }

    fn add_value(&mut self, value: serde_json::Value, origin: &str) {
        let obj: RawObject = match serde_json::from_value(value) {
            Ok(o) => o,
            Err(e) => {
                self.errors
                    .push(format!("{origin}: not a Kubernetes object, ignored: {e}"));
                return;
            }
        };
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        match obj.kind.as_str() {
            "List" | "PodList" | "SecurityGroupPolicyList" | "ServiceAccountList" => {
                for (i, item) in obj.items.into_iter().enumerate() {
                    self.add_value(item, &format!("{origin} item {i}"));
                }
            }
            "Pod" if obj.metadata.name.is_empty() => self.bad_pods.push(BadPod {
                namespace: ns,
                origin: origin.to_string(),
                problem: "Pod has no metadata.name: it can't be told apart from other pods \
                          or given its interface"
                    .into(),
            }),
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
                    branch_eni: obj
                        .metadata
                        .annotations
                        .get(POD_ENI_ANNOTATION)
                        .map(|raw| parse_pod_eni(raw)),
                    origin: origin.to_string(),
                    grace_period: obj
                        .spec
                        .get("terminationGracePeriodSeconds")
                        .and_then(|v| v.as_i64()),
                    probe_ports: probe_ports(&obj.spec),
                });
            }
            "SecurityGroupPolicy" => self.policies.push(policy(ns, obj.metadata.name, &obj.spec)),
            "ServiceAccount" => self.service_accounts.push(ServiceAccount {
                namespace: ns,
                name: obj.metadata.name,
                labels: obj.metadata.labels,
            }),
            // Other kinds (Services, Deployments, ...) may share a manifest; not ours.
            _ => {}
        }
    }
}

/// A SecurityGroupPolicy, each part read on its own: the error names the part.
fn policy(namespace: String, name: String, spec: &serde_json::Value) -> SecurityGroupPolicy {
    let pod_selector = selector(spec, "podSelector");
    let sa_selector = selector(spec, "serviceAccountSelector");
    let groups: Result<Option<RawGroups>, String> = spec_field(spec, "securityGroups");
    let selectors_readable = pod_selector.is_ok() && sa_selector.is_ok();
    let group_ids = groups.clone().ok().flatten().unwrap_or_default().group_ids;
    let error = [
        pod_selector.as_ref().err(),
        sa_selector.as_ref().err(),
        groups.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    .next()
    .cloned()
    .or_else(|| (!spec.is_object()).then(|| "spec is missing or not an object".to_string()))
    .or_else(|| {
        group_ids.is_empty().then(|| {
            "spec.securityGroups.groupIds is empty: the policy lists no security groups".to_string()
        })
    });
    SecurityGroupPolicy {
        namespace,
        name,
        pod_selector: pod_selector.ok().flatten(),
        service_account_selector: sa_selector.ok().flatten(),
        group_ids,
        error,
        selectors_readable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (
                r#"[{"ifAddress":"ff:ff:ff:ff:ff:ff","privateIp":"10.0.0.1","vlanId":2}]"#,
                "multicast/broadcast MAC",
            ),
            (
                r#"[{"ifAddress":"01:00:5e:00:00:01","privateIp":"10.0.0.1","vlanId":2}]"#,
                "multicast/broadcast MAC",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","privateIp":"255.255.255.255","vlanId":2}]"#,
                "broadcast",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","privateIp":"127.0.0.1","vlanId":2}]"#,
                "loopback",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","privateIp":"10.0.0.1","ipv6Addr":"::1","vlanId":2}]"#,
                "loopback",
            ),
            (
                r#"[{"ifAddress":"02:00:00:00:00:01","privateIp":"224.0.0.1","vlanId":2}]"#,
                "multicast",
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
