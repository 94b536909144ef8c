//! Which security groups each pod gets (SPEC §2).
use std::collections::BTreeMap;

use crate::config::UnmatchedPods;
use crate::model::group::GroupCatalog;
use crate::model::objects::KubeObjects;
use crate::model::pod::{BranchEni, Pod};
use crate::model::policy::SecurityGroupPolicy;
use crate::plan::PodError;

/// The outcome of resolving one pod.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub pod: Pod,
    pub eni: Option<BranchEni>,
    /// Group ids, de-duplicated, in the order policies (sorted by name) list them.
    pub groups: Vec<String>,
    /// Names of the matching SecurityGroupPolicies.
    pub policies: Vec<String>,
    /// Why the pod cannot be enforced as configured; it is then fail-closed.
    pub error: Option<PodError>,
    /// The pod is not a branch-ENI pod and is not ours to enforce.
    pub not_branch: bool,
    /// A second Pod object with this namespace/name: ignored (see `claims`).
    pub duplicate: bool,
    /// Its VLAN, MAC or an address is another pod's: never entered under its VLAN.
    pub clash: bool,
}

fn policy_matches(
    p: &SecurityGroupPolicy,
    pod: &Pod,
    sa_labels: &BTreeMap<String, String>,
) -> bool {
    match (&p.pod_selector, &p.service_account_selector) {
        (None, None) => false,
        (Some(ps), None) => ps.matches(&pod.labels),
        (None, Some(ss)) => ss.matches(sa_labels),
        (Some(ps), Some(ss)) => ps.matches(&pod.labels) && ss.matches(sa_labels),
    }
}

/// Why a pod can't use group `id`, if it can't.
pub fn group_error(catalog: &GroupCatalog, id: &str) -> Option<PodError> {
    if catalog.groups.contains_key(id) {
        return None;
    }
    Some(match catalog.invalid_groups.get(id) {
        Some(why) => PodError::GroupUnusable {
            group: id.to_string(),
            why: why.clone(),
        },
        None => PodError::GroupNotFound(id.to_string()),
    })
}

pub fn resolve_pods(
    kube: &KubeObjects,
    catalog: &GroupCatalog,
    node_groups: &[String],
    unmatched: UnmatchedPods,
    max_groups: usize,
) -> Vec<Resolved> {
    let mut policies: Vec<&SecurityGroupPolicy> = kube.policies.iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for pod in &kube.pods {
        let sa_labels = kube
            .service_accounts
            .iter()
            .find(|s| s.namespace == pod.namespace && s.name == pod.service_account)
            .map(|s| &s.labels)
            .unwrap_or(&empty);
        let mut groups: Vec<String> = Vec::new();
        let mut names = Vec::new();
        // A policy that can't be used fails what it would select: which pods it would
        // select decides which ones it fails, never whether anything opens.
        let mut policy_error = None;
        for p in policies.iter().filter(|p| p.namespace == pod.namespace) {
            if let Some(e) = &p.error {
                if !p.selectors_readable {
                    policy_error.get_or_insert(PodError::PolicyUnreadable {
                        policy: p.key(),
                        why: e.clone(),
                        namespace: p.namespace.clone(),
                    });
                } else if policy_matches(p, pod, sa_labels) {
                    names.push(p.name.clone());
                    policy_error.get_or_insert(PodError::PolicyInvalid {
                        policy: p.key(),
                        why: e.clone(),
                    });
                }
                continue;
            }
            if policy_matches(p, pod, sa_labels) {
                names.push(p.name.clone());
                for g in &p.group_ids {
                    if !groups.contains(g) {
                        groups.push(g.clone());
                    }
                }
            }
        }
        let mut r = Resolved {
            pod: pod.clone(),
            eni: None,
            groups,
            policies: names,
            error: None,
            not_branch: false,
            duplicate: false,
            clash: false,
        };
        match pod.branch_eni.clone() {
            None => {
                // No branch ENI: not ours, whether or not a policy selects it yet (the
                // resource controller has not attached one). Status says which.
                r.not_branch = true;
                if !r.groups.is_empty() {
                    r.error = Some(PodError::NoBranchEniYet(r.policies.join(",")));
                }
            }
            Some(Err(e)) => r.error = Some(PodError::Annotation(e)),
            Some(Ok(eni)) => {
                r.eni = Some(eni);
                if policy_error.is_some() {
                    r.error = policy_error;
                } else if r.groups.is_empty() {
                    match unmatched {
                        UnmatchedPods::FailClosed => r.error = Some(PodError::Unmatched),
                        UnmatchedPods::NodeGroups => r.groups = node_groups.to_vec(),
                    }
                }
            }
        }
        if r.error.is_none() && r.groups.len() > max_groups {
            r.error = Some(PodError::TooManyGroups {
                count: r.groups.len(),
                list: r.groups.join(","),
                limit: max_groups,
            });
        }
        if r.error.is_none() {
            r.error = r.groups.iter().find_map(|g| group_error(catalog, g));
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::group::SecurityGroup;

    fn objects(yaml: &str) -> KubeObjects {
        let mut k = KubeObjects::default();
        k.add_documents(yaml, "t").unwrap();
        k
    }

    fn catalog(ids: &[&str]) -> GroupCatalog {
        let mut c = GroupCatalog::default();
        for id in ids {
            c.groups.insert(
                id.to_string(),
                std::sync::Arc::new(SecurityGroup {
                    id: id.to_string(),
                    name: String::new(),
                    inbound: vec![],
                    outbound: vec![],
                    tags: Default::default(),
                }),
            );
        }
        c
    }

    const ENI: &str = r#"'[{"eniId":"eni-1","ifAddress":"02:00:00:00:00:01","privateIp":"10.0.1.5","vlanId":3}]'"#;

    fn pod(name: &str, ns: &str, labels: &str, sa: &str) -> String {
        format!(
            "---\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}, annotations: {{vpc.amazonaws.com/pod-eni: {ENI}}}}}\nspec: {{serviceAccountName: {sa}}}\n"
        )
    }

    #[test]
    fn union_dedup_namespace_and_both_selectors() {
        let y = format!(
            "{}{}{}{}",
            r#"
kind: SecurityGroupPolicy
metadata: {name: a, namespace: ns1}
spec: {podSelector: {matchLabels: {role: web}}, securityGroups: {groupIds: [sg-1, sg-2]}}
---
kind: SecurityGroupPolicy
metadata: {name: b, namespace: ns1}
spec: {podSelector: {}, securityGroups: {groupIds: [sg-2, sg-3]}}
---
kind: SecurityGroupPolicy
metadata: {name: c, namespace: ns1}
spec:
  podSelector: {matchLabels: {role: web}}
  serviceAccountSelector: {matchLabels: {team: pay}}
  securityGroups: {groupIds: [sg-4]}
---
kind: SecurityGroupPolicy
metadata: {name: other-ns, namespace: ns2}
spec: {podSelector: {}, securityGroups: {groupIds: [sg-9]}}
---
kind: SecurityGroupPolicy
metadata: {name: no-selector, namespace: ns1}
spec: {securityGroups: {groupIds: [sg-8]}}
---
kind: ServiceAccount
metadata: {name: payer, namespace: ns1, labels: {team: pay}}
"#,
            pod("web1", "ns1", "{role: web}", "default"),
            pod("web2", "ns1", "{role: web}", "payer"),
            pod("db", "ns1", "{role: db}", "payer"),
        );
        let k = objects(&y);
        let r = resolve_pods(
            &k,
            &catalog(&["sg-1", "sg-2", "sg-3", "sg-4"]),
            &[],
            UnmatchedPods::FailClosed,
            5,
        );
        assert_eq!(r[0].groups, vec!["sg-1", "sg-2", "sg-3"]);
        assert_eq!(r[1].groups, vec!["sg-1", "sg-2", "sg-3", "sg-4"]);
        assert_eq!(r[2].groups, vec!["sg-2", "sg-3"]);
        assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    }

    #[test]
    fn unknown_group_and_too_many_groups_fail_the_pod() {
        let y = format!(
            "{}{}",
            "kind: SecurityGroupPolicy\nmetadata: {name: a, namespace: ns1}\nspec: {podSelector: {}, securityGroups: {groupIds: [sg-1, sg-missing]}}\n",
            pod("p", "ns1", "{}", "default")
        );
        let r = resolve_pods(
            &objects(&y),
            &catalog(&["sg-1"]),
            &[],
            UnmatchedPods::FailClosed,
            5,
        );
        assert!(
            r[0].error
                .as_ref()
                .unwrap()
                .to_string()
                .contains("InvalidSecurityGroupID.NotFound")
        );
        let r = resolve_pods(
            &objects(&y),
            &catalog(&["sg-1", "sg-missing"]),
            &[],
            UnmatchedPods::FailClosed,
            1,
        );
        assert!(
            r[0].error
                .as_ref()
                .unwrap()
                .to_string()
                .contains("exceed the limit of 1")
        );
    }

    #[test]
    fn branch_pod_without_policy_is_explicit() {
        let y = pod("p", "ns1", "{}", "default");
        let r = resolve_pods(
            &objects(&y),
            &catalog(&["sg-node"]),
            &["sg-node".into()],
            UnmatchedPods::FailClosed,
            5,
        );
        assert!(
            r[0].error
                .as_ref()
                .unwrap()
                .to_string()
                .contains("no SecurityGroupPolicy")
        );
        let r = resolve_pods(
            &objects(&y),
            &catalog(&["sg-node"]),
            &["sg-node".into()],
            UnmatchedPods::NodeGroups,
            5,
        );
        assert_eq!(r[0].groups, vec!["sg-node"]);
    }
}
