//! Connection tracking (SPEC §4): the flow key seen from the pod, lookups that refresh
//! or expire an entry, inserts charged to the pod's share of the table. The state
//! machine and timeouts are the shared crate's (`enforcer_common::flow`).
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use enforcer_common::flow::{idle_limit, initial_state, next_state, timeout_ns};
use enforcer_common::*;
use enforcer_ebpf::parse::{Addr, Packet, SNAT_FORWARD, Tuple};

use crate::cache::{self, Clock};
use crate::maps::{FLOW_COUNT, FLOW_SWEPT, FLOWS};
use crate::snat;

/// `-EEXIST` from a map insert with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

/// Refreshing `last_seen` on every packet would dirty a cache line per packet; a second
/// of slack is nothing against timeouts of 30 s and more.
const REFRESH_NS: u64 = 1_000_000_000;

/// Stores an address into a map key's byte-array field with word stores. The maps keep
/// bytes (bpftool prints them readably); a 16-byte array copy would be a memmove call.
/// `dst` must be 4-byte aligned, which every key struct here guarantees.
#[inline(always)]
pub fn put_addr(dst: &mut [u8; 16], a: &Addr) {
    let p = dst as *mut [u8; 16] as *mut u32;
    // SAFETY: 16 writable bytes, 4-byte aligned (the caller's contract).
    unsafe {
        *p = a[0];
        *p.add(1) = a[1];
        *p.add(2) = a[2];
        *p.add(3) = a[3];
    }
}

/// Flow key as seen from the pod: `local` is the pod side whatever the direction.
#[inline(always)]
pub fn flow_key(t: &Tuple, family: u8, dir: Direction) -> FlowKey {
    let mut k = FlowKey {
        proto: t.proto,
        family,
        ..FlowKey::default()
    };
    if dir == Direction::Egress {
        put_addr(&mut k.local, &t.src);
        put_addr(&mut k.remote, &t.dst);
        k.local_port = t.sport;
        k.remote_port = t.dport;
    } else {
        put_addr(&mut k.local, &t.dst);
        put_addr(&mut k.remote, &t.src);
        k.local_port = t.dport;
        k.remote_port = t.sport;
    }
    k
}

/// Other protocols are tracked by address pair only (SPEC §4).
#[inline(always)]
pub fn normalise_ports(k: &mut FlowKey) {
    match k.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => {}
        _ => {
            k.local_port = 0;
            k.remote_port = 0;
        }
    }
}

/// Live flow entries of a pod slot (see `FLOW_SWEPT`).
#[inline(always)]
pub fn flows_of(slot: u32) -> u64 {
    let added = FLOW_COUNT.get(slot).copied().unwrap_or(0);
    let swept = FLOW_SWEPT.get(slot).copied().unwrap_or(0);
    added.saturating_sub(swept)
}

/// Adds `delta` (two's complement for a decrement) to a pod's live flow count.
#[inline(always)]
fn charge(slot: u32, delta: u64) {
    if let Some(c) = FLOW_COUNT.get_ptr_mut(slot) {
        // SAFETY: a valid, aligned map value for the program's run. The atomic add (a
        // BPF_ATOMIC instruction; core's atomics lack RMW on this target) keeps CPUs from
        // losing each other's updates.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, delta) };
    }
}

/// Removes a flow entry and gives its pod's share back, once: only the CPU (or the
/// daemon) whose delete succeeded does. A translated flow's NAT mapping goes with it.
#[inline(always)]
fn remove_flow(key: &FlowKey, slot: u32, path: u8, nat_port: u16) {
    if FLOWS.remove(key).is_ok() {
        charge(slot, u64::MAX);
        if path == PATH_SNAT {
            snat::release(key, nat_port);
        }
    }
}

/// Looks the flow up; refreshes it on a hit, removes it when it has gone idle. A hit
/// is copied into the per-CPU cache (`clock` read before the look-up).
#[inline(always)]
pub fn flow_hit(
    cfg: &NodeConfig,
    pod: &PodInfo,
    key: &FlowKey,
    pkt: &mut Packet,
    dir: Direction,
    clock: Clock,
) -> bool {
    let now = clock.now;
    let Some(v) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a hash value pointer stays valid for the program's run (RCU).
    let v = unsafe { &mut *v };
    let age = now.saturating_sub(v.last_seen_ns);
    // Only a half-open entry's limit depends on its pod's flow count: the established
    // path doesn't read the counts.
    let limit = if v.state == FLOW_TCP_SYN {
        idle_limit(cfg, v.state, flows_of(v.slot))
    } else {
        timeout_ns(cfg, v.state)
    };
    if age > limit || v.slot != pod.slot {
        // Idle, or left by a deleted pod whose address this pod now has.
        remove_flow(key, v.slot, v.path, v.nat_port);
        return false;
    }
    // A query's flow passes requests one way and the matching replies the other: a
    // reply type going out, or a new request coming back, is judged by the rules.
    if pkt.icmp_query != ICMP_NOT_QUERY && (pkt.icmp_query == ICMP_REPLY) != (dir != v.origin()) {
        return false;
    }
    let state = next_state(v.state, pkt.tcp_flags, dir != v.origin());
    if state != v.state || age > REFRESH_NS {
        v.state = state;
        v.last_seen_ns = now;
    }
    pkt.flow_path = v.path;
    pkt.nat_port = v.nat_port;
    pkt.flow_peer = v.peer_ifindex;
    if dir != v.origin() && v.seen_reply == 0 {
        v.seen_reply = 1;
    }
    cache::fill_flow(cfg, pod, key, v, dir, clock);
    true
}

/// Records where the flow of `pkt` (seen from the pod, in `dir`) goes (`PATH_*`; for
/// `PATH_POD` the other pod's host interface), so that its later packets skip the
/// look-ups that found out.
#[inline(always)]
pub fn mark_path(pkt: &Packet, dir: Direction, path: u8, peer_ifindex: u32) {
    let mut key = flow_key(&pkt.outer, pkt.family, dir);
    normalise_ports(&mut key);
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a hash value pointer stays valid for the program's run (RCU); the
        // stores race with nothing that matters (every writer stores the same values).
        unsafe {
            (*v).path = path;
            (*v).peer_ifindex = peer_ifindex;
        }
    }
}

/// Why a new flow could not be recorded.
pub enum InsertError {
    /// The pod holds its whole share of the table.
    PodShare,
    /// The node's table is full.
    TableFull,
    /// No free NAT port for the flow.
    SnatExhausted,
}

/// Records a new flow allowed by the rule `cookie`, charged to the pod's share.
#[inline(always)]
pub fn insert_flow(
    cfg: &NodeConfig,
    pod: &PodInfo,
    key: &FlowKey,
    pkt: &mut Packet,
    dir: Direction,
    cookies: (u32, u32),
    now: u64,
) -> Result<(), InsertError> {
    if flows_of(pod.slot) >= cfg.flows_per_pod as u64 {
        // One pod must not fill the node-wide table and starve every other pod.
        return Err(InsertError::PodShare);
    }
    let (path, nat_port) = if pkt.snat == SNAT_FORWARD {
        // The mapping first: a reply can only find the flow through it.
        let port = snat::allocate(cfg, key, pod.host_ifindex).ok_or(InsertError::SnatExhausted)?;
        (PATH_SNAT, port)
    } else {
        (PATH_VPC, 0)
    };
    let v = FlowValue {
        last_seen_ns: now,
        cookie: cookies.0,
        state: initial_state(pkt.outer.proto, pkt.tcp_flags),
        origin_dir: dir as u8,
        seen_reply: 0,
        path,
        slot: pod.slot,
        node_cookie: cookies.1,
        nat_port,
        _pad: 0,
        peer_ifindex: 0,
        opened_ns: now,
        #[cfg(feature = "layout-next")]
        next_field: 0,
    };
    let r = FLOWS.insert(key, v, BPF_NOEXIST as u64);
    if r.is_ok() {
        charge(pod.slot, 1);
        pkt.nat_port = nat_port;
        return Ok(());
    }
    if path == PATH_SNAT {
        // No flow holds this mapping: give the port back.
        snat::release(key, nat_port);
    }
    match r {
        // Another CPU created it first: use its mapping.
        Err(EEXIST) => {
            // SAFETY: hash values stay valid for the program's run (RCU); we only read.
            pkt.nat_port = unsafe { FLOWS.get(key) }.map_or(0, |v| v.nat_port);
            Ok(())
        }
        _ => Err(InsertError::TableFull),
    }
}
