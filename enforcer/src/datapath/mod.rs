//! The kernel side as userspace sees it: desired map contents and the loaded programs.
pub mod kernel;
pub mod links;
pub mod state;
