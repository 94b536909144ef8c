//! The kernel side as userspace sees it: desired map contents and the loaded programs.
pub mod kernel;
pub mod links;
mod pins;
mod readers;
pub mod state;
pub mod sweep;
mod writer;
