//! Per-pod, per-reason, per-CPU packet and byte counters.
use enforcer_common::{Reason, counter_index};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(slot: u32, reason: Reason, bytes: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(slot, reason)) {
        // SAFETY: this CPU's slot of a per-CPU array: no other writer while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}
