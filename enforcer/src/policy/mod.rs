//! The policy model and its compiler: pure Rust, no kernel access.
pub mod compile;
pub mod resolve;

#[cfg(test)]
mod equivalence;
