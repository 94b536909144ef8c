//! podsg enforcer: security groups per pod, enforced by eBPF on the node.
pub mod config;
pub mod policy;
pub mod sources;
