//! podsg enforcer: security groups per pod, enforced by eBPF on the node.
pub mod config;
pub mod datapath;
pub mod netdev;
pub mod plan;
pub mod policy;
pub mod sources;
pub mod status;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod sim;
