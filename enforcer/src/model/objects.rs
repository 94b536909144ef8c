//! Everything a source knows about the cluster, as one set of objects.
use crate::model::pod::{BadPod, Pod};
use crate::model::policy::{SecurityGroupPolicy, ServiceAccount};

/// Everything read from the Kubernetes side.
#[derive(Clone, Debug, Default)]
pub struct KubeObjects {
    pub pods: Vec<Pod>,
    pub policies: Vec<SecurityGroupPolicy>,
    pub service_accounts: Vec<ServiceAccount>,
    pub bad_pods: Vec<BadPod>,
    /// Documents that are not Kubernetes objects at all: reported, otherwise ignored.
    pub errors: Vec<String>,
}

impl KubeObjects {
    /// Adds the objects of another source (or file).
    pub fn extend(&mut self, other: KubeObjects) {
        self.pods.extend(other.pods);
        self.policies.extend(other.policies);
        self.service_accounts.extend(other.service_accounts);
        self.bad_pods.extend(other.bad_pods);
        self.errors.extend(other.errors);
    }
}
