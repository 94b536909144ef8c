//! What the product's programs and the simulated fabric's share: defensive parsing and
//! frame rewrites. Maps and programs live in the binaries (`main.rs`: the product;
//! `bin/fabric.rs`: the test bed's VPC fabric), so each object holds only its own.
#![no_std]

pub mod parse;
pub mod rewrite;
