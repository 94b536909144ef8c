//! SecurityGroupPolicies and ServiceAccounts: which pods get which groups (SPEC §2).
use std::collections::BTreeMap;

use crate::model::selector::LabelSelector;

#[derive(Clone, Debug)]
pub struct SecurityGroupPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Option<LabelSelector>,
    pub service_account_selector: Option<LabelSelector>,
    pub group_ids: Vec<String>,
    /// Why the policy can't be used as written. It then fails closed the pods it
    /// selects or, when its selectors can't be read, every branch pod of its namespace.
    pub error: Option<String>,
    /// The selectors were read and are valid (so we know which pods it selects).
    pub selectors_readable: bool,
}

impl SecurityGroupPolicy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}
