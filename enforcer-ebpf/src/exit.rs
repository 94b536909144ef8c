//! How a path ends: a TC action for the packet, or a drop counted on a pod with its
//! reason, or an internal failure (counted like a drop, and logged).
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use aya_log_ebpf::error;
use enforcer_common::Reason;
use enforcer_ebpf::rewrite::Step;

use crate::counters::count;

pub enum Exit {
    /// Dropped, counted on the pod's slot (0: no pod could be named).
    Drop(u32, Reason),
    /// A helper failed on a packet we meant to pass.
    Internal(u32, Step),
}

#[inline(always)]
pub fn finish(ctx: &TcContext, r: Result<i32, Exit>) -> i32 {
    match r {
        Ok(action) => action,
        Err(Exit::Drop(slot, reason)) => {
            count(slot, reason, ctx.len());
            TC_ACT_SHOT
        }
        Err(Exit::Internal(slot, step)) => internal_error(ctx, slot, step),
    }
}

/// Logged with aya-log, since it means a kernel or daemon problem, not a policy
/// decision. Never on the common path, so the log machinery costs nothing per packet.
#[inline(never)]
fn internal_error(ctx: &TcContext, slot: u32, what: &str) -> i32 {
    error!(
        ctx,
        "podsg: {} failed (pod slot {}), packet dropped", what, slot
    );
    count(slot, Reason::DropInternal, ctx.len());
    TC_ACT_SHOT
}
