//! The pre-filter's word (`enforcer_common::vouch`): `trunk_xdp` writes it before a
//! reply whose copy serves, `trunk_ingress` delivers on it. Both programs' checks are
//! the same (`fast::copied_reply` is `trunk_ingress`'s own recognition), a few
//! microseconds apart on the same CPU; a copy that stops serving in between is like
//! one that stops just after the frame, which the copies' rules allow for already.
use aya_ebpf::{
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use enforcer_common::vouch::{VOUCH_LEN, Vouch};

use crate::cache::FlowCacheEntry;

/// Set by the loader (`vouch::VOUCH_COOKIE`); read-only, so the verifier knows it.
#[unsafe(no_mangle)]
static PODSG_VOUCH_COOKIE: u32 = 0;

#[inline(always)]
fn cookie() -> u32 {
    // SAFETY: a read of our own global; volatile so the compiler does not fold the 0
    // it was built with (the loader rewrites it).
    unsafe { core::ptr::read_volatile(&PODSG_VOUCH_COOKIE) }
}

/// Writes the word for a reply `e` serves, in front of the frame. Without a cookie, or
/// where the driver keeps no metadata (the helper fails), nothing is written and TC
/// finds the copy itself.
#[inline(always)]
pub fn give(ctx: &XdpContext, e: &FlowCacheEntry) {
    let cookie = cookie();
    if cookie == 0 {
        return;
    }
    // SAFETY: the helper takes the program's own context; packet pointers are read
    // again after it.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(VOUCH_LEN as i32)) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + VOUCH_LEN > ctx.data() {
        return;
    }
    let v = Vouch {
        cookie,
        slot: e.slot,
        host_ifindex: e.host_ifindex,
        macs: e.macs,
    };
    // SAFETY: bounds-checked above against the start of the frame. A typed store, as
    // `parse::load` reads: packet memory needs no alignment where we run, and
    // `write_unaligned` would be 24 byte stores.
    unsafe { *(meta as *mut Vouch) = v };
}

/// The word in front of the frame in `ctx`, if it carries this load's cookie.
#[inline(always)]
pub fn taken(ctx: &TcContext) -> Option<Vouch> {
    let cookie = cookie();
    if cookie == 0 {
        return None;
    }
    // SAFETY: the context's skb pointer is valid for the program's run.
    let skb = unsafe { &*ctx.skb.skb };
    let (meta, data) = (skb.data_meta as usize, skb.data as usize);
    if meta + VOUCH_LEN > data {
        return None;
    }
    // SAFETY: bounds-checked above against the start of the frame; a typed load (see
    // `give`), copied out, as delivering moves the frame.
    let v = unsafe { *(meta as *const Vouch) };
    (v.cookie == cookie).then_some(v)
}
