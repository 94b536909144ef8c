//! Why a pod is not enforced as configured: every error a pod can carry, each text
//! written once. A branch pod with an error is fail-closed (only the always-allowed
//! destinations pass) until the error goes away.
use std::net::IpAddr;

use crate::datapath::state::CapacityError;
use crate::policy::compile::CompileError;
use crate::sources::kube::POD_ENI_ANNOTATION;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The pod-eni annotation can't be used (the parser's words).
    #[error("{0}")]
    Annotation(String),
    #[error(
        "annotation {POD_ENI_ANNOTATION}: address {0} is always-allowed (VPC resolver, \
         instance metadata, time sync): no pod can have it"
    )]
    ReservedAddress(IpAddr),
    #[error("InvalidSecurityGroupID.NotFound: The security group '{0}' does not exist")]
    GroupNotFound(String),
    #[error("security group {group} is unusable: {why}")]
    GroupUnusable { group: String, why: String },
    #[error("{count} security groups ({list}) exceed the limit of {limit} per pod")]
    TooManyGroups {
        count: usize,
        list: String,
        limit: usize,
    },
    #[error("has a branch ENI but no SecurityGroupPolicy in its namespace selects it")]
    Unmatched,
    #[error("selected by SecurityGroupPolicy {0} but has no {POD_ENI_ANNOTATION} annotation yet")]
    NoBranchEniYet(String),
    #[error("SecurityGroupPolicy {policy} selects this pod but is invalid: {why}")]
    PolicyInvalid { policy: String, why: String },
    #[error(
        "SecurityGroupPolicy {policy} is invalid ({why}); with its selectors unreadable it \
         fails closed every branch pod of namespace {namespace} until fixed"
    )]
    PolicyUnreadable {
        policy: String,
        why: String,
        namespace: String,
    },
    /// `what` is "VLAN 11", "MAC 02:…", "address 10.0.1.5".
    #[error("{what} is already used by pod {holder}")]
    Clash { what: String, holder: String },
    #[error(
        "a second Pod object named {key} ({origin}); the one from {first} is used and this \
         one is ignored"
    )]
    Duplicate {
        key: String,
        origin: String,
        first: String,
    },
    #[error("{problem} ({origin})")]
    BadObject { problem: String, origin: String },
    #[error(
        "standard mode needs the node's security groups, and node.nodeGroups is empty; \
         the pod stays fail-closed until they are configured"
    )]
    NoNodeGroups,
    /// The node's groups can't be compiled for a standard-mode pod.
    #[error("standard mode: the node's security groups can't be used: {0}")]
    NodeGroups(Box<PodError>),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error("more than {0} branch pods on this node")]
    TooManyPods(u32),
}
