//! The source-neutral model: security groups, pods, policies. Every source (files, the
//! Kubernetes and EC2 APIs) produces these types; resolving, compiling and planning read
//! only them.
pub mod group;
pub mod mac;
pub mod objects;
pub mod pod;
pub mod policy;
pub mod selector;
