//! The kernel side as userspace sees it: desired map contents and the loaded programs.
pub mod kernel;
pub mod links;
pub mod migrate;
mod peers;
mod pins;
mod raw;
mod readers;
pub mod state;
pub mod sweep;
mod writer;
