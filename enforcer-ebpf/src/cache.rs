//! Per-CPU caches in front of the two hash look-ups every packet of an established flow
//! paid: the pod (by host interface or VLAN) and the flow. A hash look-up is a helper
//! call, a hash and a key compare in another function, ~50 ns each under real traffic
//! here (docs/BENCHMARKS.md); a cache hit is an inlined array read and a compare.
//! Open vSwitch's exact-match cache in front of its classifier is the same idea.
//!
//! A cached entry is a copy, so it must never outlive what it copies:
//! - `CACHE_EPOCH`: the daemon bumps it after every change it makes to the pod maps or
//!   the flow table (apply, sweep, flush), so every CPU's copies stop serving at once;
//!   a copy is taken with the epoch read *before* the map look-up, so a change
//!   racing with the fill leaves a copy that is already stale by epoch;
//! - `CACHE_TICKS`: no copy serves longer than this (at most a second) after its fill,
//!   whatever happens (another process writing the pinned maps, a daemon restart's old
//!   programs);
//! - a flow is served from its copy only when the real entry would not change: same
//!   direction, TCP/UDP, no state transition. Anything else goes to the flow table, so
//!   the table's state machine, refresh and expiry stay the only ones.
//!
//! The caches are per CPU (no other writer; programs do not nest on a CPU, as for
//! `SCRATCH`) and direct-mapped: a slot holds the last key that hashed to it. Each
//! CPU's slots are its own stretch of one plain array (`enforcer_common::cache`).
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns};
pub use enforcer_common::cache::{FLOW_CACHE_SLOTS, POD_CACHE_SLOTS};
use enforcer_common::flow::{changing_flags, timeout_ns};
use enforcer_common::*;
use enforcer_ebpf::rewrite::mac_words;

use crate::maps::{CACHE_EPOCH, FLOW_CACHE, POD_CACHE};

/// The longest a copy serves after its fill, in ticks of the kernel's `jiffies`: 100
/// ticks are at most a second at every `CONFIG_HZ` the kernel offers (100 to 1000; 0.4 s
/// at this machine's 250). At most the flow table's refresh period: an entry served only
/// from its copy has its `last_seen` at most two seconds behind, and only states whose
/// timeout is well above that (`CACHE_NS`) are cached.
pub const CACHE_TICKS: u64 = 100;
/// The slowest tick the kernel offers (`CONFIG_HZ`).
const MIN_HZ: u64 = 100;
/// The most a copy's life can be, in ns (at the slowest tick).
pub const CACHE_NS: u64 = CACHE_TICKS * 1_000_000_000 / MIN_HZ;

/// A pod cache key for a VLAN (trunk side); an interface index (pod side) is its own key.
/// Interface indexes stay below 2^31, so the two never meet.
pub const fn vlan_key(vlan: u16) -> u32 {
    0x8000_0000 | vlan as u32
}

#[repr(C)]
pub struct PodCacheEntry {
    /// 0: empty (no interface has index 0).
    key: u32,
    _pad: u32,
    epoch: u64,
    /// The tick of the fill (`CopyClock`).
    filled: u64,
    pod: PodInfo,
}

/// A flow's copy, with what the fast paths (`fast`) need to forward its packets
/// without the pod's entry or the node's settings (copied from both at the fill; a
/// change to either bumps the epoch).
#[repr(C)]
pub struct FlowCacheEntry {
    key: FlowKey,
    epoch: u64,
    /// The tick of the fill (`CopyClock`).
    filled: u64,
    pub slot: u32,
    flow_peer: u32,
    nat_port: u16,
    path: u8,
    /// The direction this copy serves.
    dir: u8,
    /// The TCP flags that change the flow going `dir` (`flow::changing_flags`): a
    /// packet with any of them goes to the flow table.
    changing: u8,
    _pad: u8,
    pub vlan: u16,
    /// The pod's host interface: its packets arrive there, and the VPC's are delivered
    /// there.
    pub host_ifindex: u32,
    /// The forwarded frame's MACs (`rewrite::mac_words`). Going out (`Egress`): to the
    /// node's gateway, from the pod; the pod's MAC is also what its packets come from
    /// (bytes 6..12: the high half of word 1, and word 2). Coming in: to the pod, from
    /// its host interface.
    pub macs: [u32; 3],
    /// The pod's address of the flow's family (IPv4: the first word): what a packet
    /// coming in must be addressed to, as `trunk::misaddressed` requires.
    pub pod_addr: [u32; 4],
    /// The node's: where the VPC's traffic goes.
    pub trunk_ifindex: u32,
}

/// What a flow-cache hit tells the path (what a flow-table hit would have).
pub struct FlowHit {
    pub path: u8,
    pub nat_port: u16,
    pub flow_peer: u32,
}

/// What a copy's life is measured by: the epoch and the tick, read together before any
/// look-up whose answer is copied. All the fast paths read: the kernel inlines
/// `bpf_jiffies64` into a load, where the flow table's clock is a helper call.
#[derive(Clone, Copy)]
pub struct CopyClock {
    pub epoch: u64,
    /// `bpf_jiffies64`.
    pub tick: u64,
}

impl CopyClock {
    #[inline(always)]
    pub fn read() -> CopyClock {
        let epoch = CACHE_EPOCH.get(0).copied().unwrap_or(0);
        // SAFETY: a plain helper call with no arguments.
        let tick = unsafe { bpf_jiffies64() };
        CopyClock { epoch, tick }
    }

    /// Whether a copy taken at (epoch, tick) `filled` may serve now.
    #[inline(always)]
    fn serves(self, epoch: u64, filled: u64) -> bool {
        epoch == self.epoch && self.tick.wrapping_sub(filled) < CACHE_TICKS
    }
}

/// The copies' clock and the flow table's.
#[derive(Clone, Copy)]
pub struct Clock {
    pub copy: CopyClock,
    /// `bpf_ktime_get_coarse_ns`, the flow table's clock.
    pub now: u64,
}

impl Clock {
    #[inline(always)]
    pub fn read() -> Clock {
        Clock::after(CopyClock::read())
    }

    /// With the copies' clock read already.
    #[inline(always)]
    pub fn after(copy: CopyClock) -> Clock {
        // SAFETY: a plain helper call with no arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        Clock { copy, now }
    }
}

/// The index of this CPU's slot `i` of a cache with `slots` per CPU. A CPU past what
/// the loader sized the map for gets an index past its end, so no slot: no cache.
#[inline(always)]
fn mine(i: u32, slots: u32) -> u32 {
    // SAFETY: a plain helper call with no arguments (the kernel inlines it).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu.wrapping_mul(slots).wrapping_add(i)
}

/// The cached copy of the pod under `key`, if it may serve.
#[inline(always)]
pub fn pod(key: u32, clock: CopyClock) -> Option<&'static PodInfo> {
    let e = POD_CACHE.get_ptr(mine(key & (POD_CACHE_SLOTS - 1), POD_CACHE_SLOTS))?;
    // SAFETY: this CPU's slot of the array, valid for the program's run.
    let e = unsafe { &*e };
    (e.key == key && clock.serves(e.epoch, e.filled)).then_some(&e.pod)
}

/// Copies `pod` (just looked up under `key`, `clock` read before the look-up) into the
/// cache and returns the copy, or `pod` itself when there is no slot.
#[inline(always)]
pub fn fill_pod(key: u32, pod: &'static PodInfo, clock: CopyClock) -> &'static PodInfo {
    let Some(e) = POD_CACHE.get_ptr_mut(mine(key & (POD_CACHE_SLOTS - 1), POD_CACHE_SLOTS)) else {
        return pod;
    };
    // SAFETY: this CPU's slot of the array, valid for the program's run; nothing else
    // writes it while we run (only this CPU's programs, which do not nest).
    let e = unsafe { &mut *e };
    copy_words(&mut e.pod, pod);
    e.key = key;
    e.epoch = clock.epoch;
    e.filled = clock.tick;
    &e.pod
}

/// Copies a `T` with 4-byte word moves (a struct copy would be a byte-loop `memcpy`).
#[inline(always)]
fn copy_words<T>(dst: &mut T, src: &T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let d = dst as *mut T as *mut u32;
    let s = src as *const T as *const u32;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: both point to a whole, 4-aligned `T`; `i` stays inside it.
        unsafe { *d.add(i) = *s.add(i) };
        i += 1;
    }
}

/// The key as its five 8-byte words (`FlowKey` is 40 bytes, aligned to 8).
#[inline(always)]
fn words(k: &FlowKey) -> [u64; 5] {
    let p = k as *const FlowKey as *const u64;
    // SAFETY: a whole, 8-aligned 40-byte key.
    unsafe { [*p, *p.add(1), *p.add(2), *p.add(3), *p.add(4)] }
}

/// Stores a key from its words (a struct copy would be a byte-loop `memcpy`).
#[inline(always)]
fn put_words(k: &mut FlowKey, w: &[u64; 5]) {
    let p = k as *mut FlowKey as *mut u64;
    // SAFETY: a whole, 8-aligned 40-byte key.
    unsafe {
        for (i, x) in w.iter().enumerate() {
            *p.add(i) = *x;
        }
    }
}

/// Word by word, folded: an array `==` becomes a call to a byte-loop `memcmp`.
#[inline(always)]
fn same(a: &[u64; 5], b: &[u64; 5]) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0
}

#[inline(always)]
fn flow_index(w: &[u64; 5]) -> u32 {
    let h = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
    let h = (h ^ (h >> 32)) as u32;
    // Fibonacci hashing: the top bits of the product mix every input bit.
    h.wrapping_mul(0x9E37_79B1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

/// The copy of flow `key` for a packet going `dir` with `tcp_flags`, if it may answer
/// for the flow table: filled within its epoch and second, for that direction, and the
/// packet changes nothing in the entry (no state transition).
#[inline(always)]
fn serving(
    key: &FlowKey,
    dir: Direction,
    tcp_flags: u8,
    clock: CopyClock,
) -> Option<&'static FlowCacheEntry> {
    let w = words(key);
    let e = FLOW_CACHE.get_ptr(mine(flow_index(&w), FLOW_CACHE_SLOTS))?;
    // SAFETY: this CPU's slot of the array, valid for the program's run.
    let e = unsafe { &*e };
    let serves = same(&words(&e.key), &w)
        && clock.serves(e.epoch, e.filled)
        && e.dir == dir as u8
        && tcp_flags & e.changing == 0;
    serves.then_some(e)
}

/// A packet of `slot`'s flow `key` going `dir`, served from the cache when the flow
/// table would say "allowed" and change nothing.
#[inline(always)]
pub fn flow(
    key: &FlowKey,
    slot: u32,
    dir: Direction,
    tcp_flags: u8,
    clock: CopyClock,
) -> Option<FlowHit> {
    let e = serving(key, dir, tcp_flags, clock).filter(|e| e.slot == slot)?;
    Some(FlowHit {
        path: e.path,
        nat_port: e.nat_port,
        flow_peer: e.flow_peer,
    })
}

/// The copy of flow `key` for the egress fast path: a packet from the pod's host
/// interface `ifindex` (the caller checks its MAC against `pod_mac`), going out
/// through the VPC, that changes nothing in the flow table.
#[inline(always)]
pub fn egress_to_vpc(
    key: &FlowKey,
    ifindex: u32,
    tcp_flags: u8,
    clock: CopyClock,
) -> Option<&'static FlowCacheEntry> {
    serving(key, Direction::Egress, tcp_flags, clock)
        .filter(|e| e.host_ifindex == ifindex && e.path == PATH_VPC)
}

/// The copy of flow `key` for the inbound fast path: a frame from the VPC on `vlan`
/// addressed to `dst`, of a flow through the VPC of the pod on that VLAN, that changes
/// nothing in the flow table.
#[inline(always)]
pub fn ingress_from_vpc(
    key: &FlowKey,
    vlan: u16,
    dst: &[u32; 4],
    tcp_flags: u8,
    clock: CopyClock,
) -> Option<&'static FlowCacheEntry> {
    serving(key, Direction::Ingress, tcp_flags, clock).filter(|e| {
        e.vlan == vlan
            && e.path == PATH_VPC
            // (a pod with no address of the family: nothing is addressed to it)
            && (dst[0] | dst[1] | dst[2] | dst[3]) != 0
            && ((e.pod_addr[0] ^ dst[0])
                | (e.pod_addr[1] ^ dst[1])
                | (e.pod_addr[2] ^ dst[2])
                | (e.pod_addr[3] ^ dst[3]))
                == 0
    })
}

/// The pod's IPv6 address as words (zero when it has none: no IPv6 flow matches).
#[inline(always)]
fn pod_v6(pod: &PodInfo) -> [u32; 4] {
    if pod.has_ipv6 == 0 {
        return [0; 4];
    }
    let b = &pod.ipv6;
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// After a flow-table hit of `pod`'s that left `v` as it is now: copies what later
/// packets of the flow going `dir` need, if the flow may be served from a copy (TCP or
/// UDP, past the half-open state, a timeout well above the copy's life).
#[inline(always)]
pub fn fill_flow(
    cfg: &NodeConfig,
    pod: &PodInfo,
    key: &FlowKey,
    v: &FlowValue,
    dir: Direction,
    clock: Clock,
) {
    // Not in the clock tick the flow was opened in: its creator may still be marking
    // where it goes (`mark_path`), and a copy must not keep the unmarked path.
    if !matches!(key.proto, PROTO_TCP | PROTO_UDP)
        || v.state == FLOW_TCP_SYN
        || timeout_ns(cfg, v.state) <= 4 * CACHE_NS
        || v.opened_ns == clock.now
    {
        return;
    }
    // (`None`: every packet going `dir` changes the flow, so no copy would serve.)
    let Some(changing) = changing_flags(v.state, dir != v.origin()) else {
        return;
    };
    let w = words(key);
    let Some(e) = FLOW_CACHE.get_ptr_mut(mine(flow_index(&w), FLOW_CACHE_SLOTS)) else {
        return;
    };
    // SAFETY: this CPU's slot of the array, valid for the program's run; nothing else
    // writes it while we run (only this CPU's programs, which do not nest).
    let e = unsafe { &mut *e };
    put_words(&mut e.key, &w);
    e.epoch = clock.copy.epoch;
    e.filled = clock.copy.tick;
    e.slot = v.slot;
    e.flow_peer = v.peer_ifindex;
    e.nat_port = v.nat_port;
    e.path = v.path;
    e.dir = dir as u8;
    e.changing = changing;
    e.vlan = pod.vlan;
    e.host_ifindex = pod.host_ifindex;
    e.macs = if dir == Direction::Egress {
        mac_words(&cfg.gateway_mac, &pod.mac)
    } else {
        mac_words(&pod.mac, &pod.host_mac)
    };
    e.pod_addr = if key.family == AF_V4 {
        [u32::from_ne_bytes(pod.ipv4), 0, 0, 0]
    } else {
        pod_v6(pod)
    };
    e.trunk_ifindex = cfg.trunk_ifindex;
}
