//! The reference the compiled form is checked against (property tests, and the kernel
//! in the random-policy test).
use std::net::IpAddr;

use super::flatten::FlatRule;
use crate::model::group::Direction;

/// The obviously-correct evaluator: a loop over every rule.
pub fn reference_verdict(
    rules: &[FlatRule],
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    rules.iter().any(|r| {
        r.dir == dir
            && r.net.contains(&remote)
            && match r.proto {
                None => true,
                Some(p) => p == proto && (r.lo..=r.hi).contains(&port),
            }
    })
}
