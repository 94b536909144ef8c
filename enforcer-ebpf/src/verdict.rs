//! Packet -> verdict for one pod and one direction: flow table first, policy on a miss.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, btf_maps::lpm_trie::Key, helpers::bpf_ktime_get_coarse_ns};
use enforcer_common::flow::{idle_limit, initial_state, next_state, timeout_ns};
use enforcer_common::*;

use crate::maps::*;
use enforcer_ebpf::parse::*;

/// `-EEXIST` from a map insert with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

pub enum Verdict {
    Allow(Reason),
    Drop(Reason),
}

/// Refreshing `last_seen` on every packet would dirty a cache line per packet; a second
/// of slack is nothing against timeouts of 30 s and more.
const REFRESH_NS: u64 = 1_000_000_000;

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

/// Stores an address into a map key's byte-array field with word stores. The maps keep
/// bytes (bpftool prints them readably); a 16-byte array copy would be a memmove call.
/// `dst` must be 4-byte aligned, which every key struct here guarantees.
#[inline(always)]
fn put_addr(dst: &mut [u8; 16], a: &Addr) {
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
fn flow_key(t: &Tuple, family: u8, dir: Direction) -> FlowKey {
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
fn normalise_ports(k: &mut FlowKey) {
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
fn flows_of(slot: u32) -> u64 {
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
/// daemon) whose delete succeeded does.
#[inline(always)]
fn remove_flow(key: &FlowKey, slot: u32) {
    if FLOWS.remove(key).is_ok() {
        charge(slot, u64::MAX);
    }
}

/// Looks the flow up; refreshes it on a hit, removes it when it has gone idle.
#[inline(always)]
fn flow_hit(
    cfg: &NodeConfig,
    pod: &PodInfo,
    key: &FlowKey,
    pkt: &Packet,
    dir: Direction,
    now: u64,
) -> bool {
    let Some(v) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a hash value pointer stays valid for the program's run (RCU).
    let v = unsafe { &mut *v };
    let age = now.saturating_sub(v.last_seen_ns);
    if age > idle_limit(cfg, v.state, flows_of(v.slot)) || v.slot != pod.slot {
        // Idle, or left by a deleted pod whose address this pod now has.
        remove_flow(key, v.slot);
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
    if dir != v.origin() && v.seen_reply == 0 {
        v.seen_reply = 1;
    }
    true
}

#[inline(always)]
fn always_allowed(pkt: &Packet, dir: Direction) -> bool {
    let remote = if dir == Direction::Egress {
        &pkt.outer.dst
    } else {
        &pkt.outer.src
    };
    if pkt.family == AF_V4 {
        ALWAYS_V4
            .get(&Key::new(32, remote[0].to_ne_bytes()))
            .is_some()
    } else {
        // [u32; 4] and [u8; 16] share size; the u32 view keeps the key aligned.
        ALWAYS_V6
            // SAFETY: same size, and every bit pattern is valid for both.
            .get(&Key::new(128, unsafe {
                core::mem::transmute::<Addr, [u8; 16]>(*remote)
            }))
            .is_some()
    }
}

/// Two map lookups whatever the number of rules: remote prefix -> class, then
/// (class, protocol, port) -> rule. Returns the allowing rule's cookie and flags.
#[inline(always)]
fn policy_allows(pod: &PodInfo, pkt: &Packet, dir: Direction) -> Option<(u32, u32)> {
    let sc = scope(pod.policy_id, dir);
    let remote = if dir == Direction::Egress {
        &pkt.outer.dst
    } else {
        &pkt.outer.src
    };
    let class = if pkt.family == AF_V4 {
        let data = PeerKeyV4 {
            scope: sc,
            addr: remote[0].to_ne_bytes(),
        };
        PEER_V4.get(&Key::new(PEER_SCOPE_BITS + 32, data))?
    } else {
        let mut data = PeerKeyV6 {
            scope: sc,
            addr: [0; 16],
        };
        put_addr(&mut data.addr, remote);
        PEER_V6.get(&Key::new(PEER_SCOPE_BITS + 128, data))?
    };
    if class.all_cookie != 0 {
        return Some((class.all_cookie, class.all_flags));
    }
    let pk = PortKey::new(class.class_id, pkt.outer.proto, pkt.policy_port);
    let r = PORT_RULES.get(&Key::new(PORT_FIXED_BITS + 16, pk))?;
    Some((r.cookie, r.flags))
}

#[inline(always)]
pub fn decide(pod: &PodInfo, pkt: &Packet, dir: Direction) -> Verdict {
    if pod.is_fail_closed() {
        if always_allowed(pkt, dir) {
            return Verdict::Allow(Reason::AllowAlways);
        }
        return Verdict::Drop(Reason::DropFailClosed);
    }
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return Verdict::Drop(Reason::DropInternal);
    };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if pkt.kind == KIND_FRAGMENT {
        // Later fragments carry no ports: they follow their first fragment's verdict.
        // SAFETY: LRU values stay valid for the program's run (RCU); we only read.
        return match unsafe { FRAGS.get(frag_key(pkt)) } {
            Some(f) if now.saturating_sub(f.first_seen_ns) <= FRAG_TIMEOUT_NS => {
                Verdict::Allow(Reason::AllowFragment)
            }
            _ => Verdict::Drop(Reason::DropFragment),
        };
    }
    let v = decide_packet(cfg, pod, pkt, dir, now);
    if pkt.frag_first != 0
        && let Verdict::Allow(_) = v
    {
        let f = FragValue {
            first_seen_ns: now,
            cookie: 0,
            _pad: 0,
        };
        // Best effort: an LRU insert only fails under memory pressure, and then the
        // later fragments are dropped (and counted), never wrongly allowed.
        let _ = FRAGS.insert(frag_key(pkt), f, 0);
    }
    v
}

#[inline(always)]
fn frag_key(pkt: &Packet) -> FragKey {
    let mut k = FragKey {
        id: pkt.frag_id,
        proto: pkt.outer.proto,
        family: pkt.family,
        ..FragKey::default()
    };
    put_addr(&mut k.src, &pkt.outer.src);
    put_addr(&mut k.dst, &pkt.outer.dst);
    k
}

/// The verdict for a packet with ports (or a first fragment): state, then policy.
#[inline(always)]
fn decide_packet(
    cfg: &NodeConfig,
    pod: &PodInfo,
    pkt: &Packet,
    dir: Direction,
    now: u64,
) -> Verdict {
    if pkt.kind == KIND_ICMP_ERROR && pkt.inner_ok != 0 {
        // The quoted packet travelled the other way: an error about a tracked flow is
        // related traffic and passes.
        let back = dir.reverse();
        let mut k = flow_key(&pkt.inner, pkt.family, back);
        normalise_ports(&mut k);
        // SAFETY: hash values stay valid for the program's run (RCU); we only read.
        if let Some(v) = unsafe { FLOWS.get(k) }
            && v.slot == pod.slot
            && now.saturating_sub(v.last_seen_ns) <= timeout_ns(cfg, v.state)
        {
            return Verdict::Allow(Reason::AllowRelated);
        }
    }

    let mut key = flow_key(&pkt.outer, pkt.family, dir);
    normalise_ports(&mut key);
    if pkt.kind != KIND_ICMP_ERROR && flow_hit(cfg, pod, &key, pkt, dir, now) {
        return Verdict::Allow(Reason::AllowFlow);
    }

    let Some((cookie, flags)) = policy_allows(pod, pkt, dir) else {
        // Checked only when no rule allows: it costs an LPM lookup that the common
        // path should not pay.
        if always_allowed(pkt, dir) {
            return Verdict::Allow(Reason::AllowAlways);
        }
        return Verdict::Drop(Reason::DropNoRule);
    };
    // EC2 leaves only TCP and UDP untracked; an all-protocols rule still tracks ICMP
    // and the rest. ICMP errors and query replies never create state of their own.
    let untracked = flags & RULE_UNTRACKED != 0 && matches!(pkt.outer.proto, PROTO_TCP | PROTO_UDP);
    if untracked || pkt.kind == KIND_ICMP_ERROR || pkt.icmp_query == ICMP_REPLY {
        return Verdict::Allow(Reason::AllowPolicy);
    }
    if flows_of(pod.slot) >= cfg.flows_per_pod as u64 {
        // One pod must not fill the node-wide table and starve every other pod.
        return Verdict::Drop(Reason::DropPodFlowLimit);
    }
    let v = FlowValue {
        last_seen_ns: now,
        cookie,
        state: initial_state(pkt.outer.proto, pkt.tcp_flags),
        origin_dir: dir as u8,
        seen_reply: 0,
        _pad: 0,
        slot: pod.slot,
        _pad2: 0,
    };
    match FLOWS.insert(key, v, BPF_NOEXIST as u64) {
        Ok(()) => {
            charge(pod.slot, 1);
            Verdict::Allow(Reason::AllowPolicy)
        }
        // Another CPU created it first.
        Err(EEXIST) => Verdict::Allow(Reason::AllowPolicy),
        Err(_) => Verdict::Drop(Reason::DropFlowTableFull),
    }
}
