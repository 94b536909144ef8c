//! Fragments (SPEC §7): a first fragment is judged like any packet; later ones follow
//! its verdict for up to `FRAG_TIMEOUT_NS`.
use enforcer_common::*;
use enforcer_ebpf::parse::Packet;

use crate::conntrack::put_addr;
use crate::maps::FRAGS;
use crate::verdict::Verdict;

/// The verdict of a later fragment (no ports to judge).
#[inline(always)]
pub fn later_fragment(pkt: &Packet, slot: u32, now: u64) -> Verdict {
    // SAFETY: LRU values stay valid for the program's run (RCU); we only read.
    match unsafe { FRAGS.get(frag_key(pkt, slot)) } {
        Some(f) if now.saturating_sub(f.first_seen_ns) <= FRAG_TIMEOUT_NS => {
            Verdict::Allow(Reason::AllowFragment)
        }
        _ => Verdict::Drop(Reason::DropFragment),
    }
}

/// An allowed first fragment: later fragments of its datagram may follow it.
#[inline(always)]
pub fn record_first(pkt: &Packet, slot: u32, now: u64) {
    let f = FragValue {
        first_seen_ns: now,
        cookie: 0,
        _pad: 0,
    };
    // Best effort: an LRU insert only fails under memory pressure, and then the later
    // fragments are dropped (and counted), never wrongly allowed.
    let _ = FRAGS.insert(frag_key(pkt, slot), f, 0);
}

#[inline(always)]
fn frag_key(pkt: &Packet, slot: u32) -> FragKey {
    let mut k = FragKey {
        id: pkt.frag_id,
        proto: pkt.outer.proto,
        family: pkt.family,
        slot: slot as u16,
        ..FragKey::default()
    };
    put_addr(&mut k.src, &pkt.outer.src);
    put_addr(&mut k.dst, &pkt.outer.dst);
    k
}
