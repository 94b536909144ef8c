//! The policy model and its compiler: pure Rust, no kernel access.
pub mod compile;
pub mod model;
pub mod resolve;
pub mod selector;

#[cfg(test)]
mod equivalence;
