//! podsg enforcer: security groups per pod, enforced by eBPF on the node.
pub mod claims;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod engine;
pub mod link_events;
pub mod memory;
pub mod mirror;
pub mod model;
pub mod netdev;
pub mod plan;
pub mod policy;
pub mod sources;
pub mod status;
pub mod watch;
