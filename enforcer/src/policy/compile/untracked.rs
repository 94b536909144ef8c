//! EC2 "untracked" flows (SPEC §4).
use std::collections::BTreeSet;

use super::flatten::{FlatRule, is_v4};
use crate::model::group::Direction;

/// EC2: a TCP/UDP flow allowed by a rule for 0.0.0.0/0 (or ::/0), when the other
/// direction allows all traffic for all ports from/to 0/0 too, is not tracked.
pub(super) fn mark_untracked(rules: &mut [FlatRule]) {
    let open: BTreeSet<(Direction, bool, Option<u8>)> = rules
        .iter()
        .filter(|r| r.net.prefix_len() == 0 && r.lo == 0 && r.hi == 0xffff)
        .map(|r| (r.dir, is_v4(&r.net), r.proto))
        .collect();
    for r in rules.iter_mut() {
        if r.net.prefix_len() != 0 || !matches!(r.proto, None | Some(6) | Some(17)) {
            continue;
        }
        let back = r.dir.reverse();
        let v4 = is_v4(&r.net);
        r.untracked = open.contains(&(back, v4, None)) || open.contains(&(back, v4, r.proto));
    }
}
