//! Source NAT of standard-mode pods' off-VPC IPv4 traffic (SPEC §5): port allocation,
//! the rewrites with their checksums, and the way back (replies and ICMP errors about a
//! translated flow). Endpoint-dependent: a mapping is keyed by the remote end too, so a
//! NAT port serves one flow per remote address and port.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use enforcer_common::*;
use enforcer_ebpf::parse::{KIND_ICMP_ERROR, Packet, Tuple};
use enforcer_ebpf::rewrite::Step;

use crate::maps::SNAT_REV;

/// Offset of the IPv4 header: frames from a pod and on the primary ENI are untagged.
const L3: usize = 14;
const IP_CSUM: usize = L3 + 10;
const IP_SRC: usize = L3 + 12;
const IP_DST: usize = L3 + 16;

#[inline(always)]
fn rev_key(remote: [u8; 4], remote_port: u16, nat_port: u16, proto: u8) -> SnatKey {
    SnatKey {
        remote,
        remote_port,
        nat_port,
        proto,
        _pad: [0; 3],
    }
}

/// A NAT port for a new flow: the pod's own port when it lies in the range and is free
/// toward this remote end, else random ports from the range, `snat_probes` of them.
#[inline(always)]
pub fn allocate(cfg: &NodeConfig, flow: &FlowKey, pod_ifindex: u32) -> Option<u16> {
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    if min == 0 || max < min {
        return None;
    }
    let l = &flow.local;
    let value = SnatValue {
        pod_ip: [l[0], l[1], l[2], l[3]],
        pod_port: flow.local_port,
        _pad: 0,
        pod_ifindex,
    };
    let own = flow.local_port as u32;
    let mut i = 0;
    while i <= MAX_SNAT_PROBES && i <= cfg.snat_probes {
        let port = if i == 0 {
            if own < min || own > max {
                i += 1;
                continue;
            }
            own
        } else {
            // SAFETY: a plain helper call with no arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            // Never zero (max >= min above); `checked_rem` keeps a panic path out.
            min + r.checked_rem(max - min + 1).unwrap_or(0)
        };
        let k = SnatKey::of_flow(flow, port as u16);
        if SNAT_REV.insert(k, value, BPF_NOEXIST as u64).is_ok() {
            return Some(port as u16);
        }
        i += 1;
    }
    None
}

/// Gives a mapping back (its flow is gone).
#[inline(always)]
pub fn release(flow: &FlowKey, nat_port: u16) {
    let _ = SNAT_REV.remove(SnatKey::of_flow(flow, nat_port));
}

/// Offset of the checksum covering the L4 header at `l4`, and the helper flags for it
/// (UDP: a zero checksum means none, and stays zero). ICMP's covers no pseudo-header.
#[inline(always)]
fn l4_csum(proto: u8, l4: usize) -> Option<(usize, u64, bool)> {
    match proto {
        PROTO_TCP => Some((l4 + 16, 0, true)),
        PROTO_UDP => Some((l4 + 6, BPF_F_MARK_MANGLED_0 as u64, true)),
        PROTO_ICMP => Some((l4 + 2, 0, false)),
        _ => None,
    }
}

/// Where the port we translate sits: TCP/UDP source or destination port; an ICMP
/// query's identifier.
#[inline(always)]
fn port_off(proto: u8, l4: usize, source: bool) -> usize {
    match (proto, source) {
        (PROTO_ICMP, _) => l4 + 4,
        (_, true) => l4,
        (_, false) => l4 + 2,
    }
}

/// Replaces an IPv4 address at `at` and fixes the IP header checksum and, when it
/// covers the address (TCP/UDP pseudo-header), the L4 one.
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    at: usize,
    old: u32,
    new: u32,
    proto: u8,
    l4: usize,
) -> Result<(), Step> {
    if let Some((csum, flags, pseudo)) = l4_csum(proto, l4)
        && pseudo
    {
        ctx.l4_csum_replace(
            csum,
            old as u64,
            new as u64,
            flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )
        .map_err(|_| "NAT L4 checksum")?;
    }
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)
        .map_err(|_| "NAT IP checksum")?;
    ctx.store(at, &new, 0).map_err(|_| "NAT address")
}

/// Replaces a port (network order values) at `at`, fixing the checksum at `csum`.
#[inline(always)]
fn set_port(
    ctx: &TcContext,
    at: usize,
    old: u16,
    new: u16,
    csum: (usize, u64),
) -> Result<(), Step> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(csum.0, old as u64, new as u64, csum.1 | 2)
        .map_err(|_| "NAT port checksum")?;
    ctx.store(at, &new, 0).map_err(|_| "NAT port")
}

/// The pod's packet, allowed: source address to the node's, source port to the flow's
/// NAT port.
#[inline(always)]
pub fn translate_out(ctx: &TcContext, cfg: &NodeConfig, pkt: &Packet) -> Result<(), Step> {
    let (proto, l4) = (pkt.outer.proto, pkt.l4_off as usize);
    rewrite(
        ctx,
        proto,
        l4,
        (IP_SRC, pkt.outer.src[0], u32::from_ne_bytes(cfg.node_ipv4)),
        (
            port_off(proto, l4, true),
            pkt.outer.sport.to_be(),
            pkt.nat_port.to_be(),
        ),
    )
}

/// One translation of an address (at a fixed offset) and a port (in the L4 header):
/// the L4 checksum through the helper, which knows whether the stack left it to the
/// NIC (CHECKSUM_PARTIAL: only the pseudo-header part may change); the address, the
/// IPv4 header checksum (never deferred) and the port written directly, which costs a
/// fraction of three more helper calls. Values as they sit in the packet.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    proto: u8,
    l4: usize,
    addr: (usize, u32, u32),
    port: (usize, u16, u16),
) -> Result<(), Step> {
    let Some((csum, flags, pseudo)) = l4_csum(proto, l4) else {
        return Err("NAT protocol");
    };
    let (addr_at, old_addr, new_addr) = addr;
    let (port_at, old_port, new_port) = port;
    if pseudo {
        let f = flags | BPF_F_PSEUDO_HDR as u64 | 4;
        ctx.l4_csum_replace(csum, old_addr as u64, new_addr as u64, f)
            .map_err(|_| "NAT L4 checksum")?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(csum, old_port as u64, new_port as u64, flags | 2)
            .map_err(|_| "NAT port checksum")?;
    }
    // Bounded for the verifier: the L4 header starts within 14 + 60 bytes.
    if port_at > 14 + 60 + 4 {
        return Err("NAT offsets");
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + IP_DST + 4 > end || data + port_at + 2 > end {
        return Err("NAT rewrite");
    }
    // SAFETY: every byte written was checked above to lie inside the packet (re-read
    // after the helpers, which may move it); the IPv4 header is 2-byte aligned as the
    // programs' other header loads assume.
    unsafe {
        let sum = (data + IP_CSUM) as *mut u16;
        *sum = enforcer_common::csum::replace4(*sum, old_addr, new_addr);
        *((data + addr_at) as *mut u32) = new_addr;
        *((data + port_at) as *mut u16) = new_port;
    }
    Ok(())
}

/// The pod end of a packet sent to the node's address, if it belongs to a translated
/// flow: a reply (by its ports), or an ICMP error quoting a translated packet.
#[inline(always)]
pub fn lookup_back(pkt: &Packet) -> Option<&'static SnatValue> {
    let k = if pkt.kind == KIND_ICMP_ERROR {
        if pkt.inner_ok == 0 {
            return None;
        }
        let t: &Tuple = &pkt.inner;
        // The quoted packet is ours as it left: from the node's NAT port to the remote.
        rev_key(t.dst[0].to_ne_bytes(), t.dport, t.sport, t.proto)
    } else {
        let t = &pkt.outer;
        rev_key(t.src[0].to_ne_bytes(), t.sport, t.dport, t.proto)
    };
    // SAFETY: hash values stay valid for the program's run (RCU); we only read.
    unsafe { SNAT_REV.get(k) }
}

/// Rewrites the parsed tuple to the pod's view (before the verdict, which looks up the
/// pod's flow).
#[inline(always)]
pub fn to_pod_view(pkt: &mut Packet, back: &SnatValue) {
    let pod = u32::from_ne_bytes(back.pod_ip);
    pkt.outer.dst[0] = pod;
    if pkt.kind == KIND_ICMP_ERROR {
        pkt.inner.src[0] = pod;
        pkt.inner.sport = back.pod_port;
    } else {
        pkt.outer.dport = back.pod_port;
    }
}

/// The bytes to match `to_pod_view`: destination address and port (a reply), or the
/// destination and the quoted packet's source address and port (an ICMP error, whose
/// quoted IP header checksum is fixed too). `node` and `nat_port` are the values the
/// packet arrived with.
#[inline(always)]
pub fn translate_back(ctx: &TcContext, pkt: &Packet, node: u32, nat_port: u16) -> Result<(), Step> {
    let pod = pkt.outer.dst[0];
    let l4 = pkt.l4_off as usize;
    if pkt.kind != KIND_ICMP_ERROR {
        let proto = pkt.outer.proto;
        return rewrite(
            ctx,
            proto,
            l4,
            (IP_DST, node, pod),
            (
                port_off(proto, l4, false),
                nat_port.to_be(),
                pkt.outer.dport.to_be(),
            ),
        );
    }
    // ICMP error: the outer header (its checksum covers no pseudo-header), then the
    // quoted header, all under the ICMP checksum.
    let icmp_csum = (l4 + 2, 0u64);
    set_addr(ctx, IP_DST, node, pod, PROTO_ICMP, l4)?;
    let (in3, in4) = (pkt.inner_l3_off as usize, pkt.inner_l4_off as usize);
    let old_sum: u16 = ctx.load(in3 + 10).map_err(|_| "NAT quoted checksum")?;
    ctx.l3_csum_replace(in3 + 10, node as u64, pod as u64, 4)
        .map_err(|_| "NAT quoted checksum")?;
    let new_sum: u16 = ctx.load(in3 + 10).map_err(|_| "NAT quoted checksum")?;
    ctx.l4_csum_replace(icmp_csum.0, old_sum as u64, new_sum as u64, 2)
        .map_err(|_| "NAT ICMP checksum")?;
    ctx.l4_csum_replace(icmp_csum.0, node as u64, pod as u64, 4)
        .map_err(|_| "NAT ICMP checksum")?;
    ctx.store(in3 + 12, &pod, 0)
        .map_err(|_| "NAT quoted address")?;
    fix_quoted_l4_csum(ctx, pkt, node, nat_port, icmp_csum.0)?;
    set_port(
        ctx,
        port_off(pkt.inner.proto, in4, true),
        nat_port.to_be(),
        pkt.inner.sport.to_be(),
        icmp_csum,
    )
}

/// The quoted packet's own L4 checksum, when the quote holds it (a UDP checksum of 0
/// means none): as it would be for the untranslated packet, so the pod sees a quote of
/// exactly what it sent. The ICMP checksum follows the change.
#[inline(always)]
fn fix_quoted_l4_csum(
    ctx: &TcContext,
    pkt: &Packet,
    node: u32,
    nat_port: u16,
    icmp_csum: usize,
) -> Result<(), Step> {
    let proto = pkt.inner.proto;
    let Some((at, _, pseudo)) = l4_csum(proto, pkt.inner_l4_off as usize) else {
        return Ok(());
    };
    let Ok(old) = ctx.load::<u16>(at) else {
        return Ok(()); // not quoted
    };
    if proto == PROTO_UDP && old == 0 {
        return Ok(());
    }
    // Plain field updates (no flags): the quoted packet is data to this skb.
    if pseudo {
        ctx.l4_csum_replace(at, node as u64, pkt.outer.dst[0] as u64, 4)
            .map_err(|_| "NAT quoted L4 checksum")?;
    }
    ctx.l4_csum_replace(
        at,
        nat_port.to_be() as u64,
        pkt.inner.sport.to_be() as u64,
        2,
    )
    .map_err(|_| "NAT quoted L4 checksum")?;
    let new: u16 = ctx.load(at).map_err(|_| "NAT quoted L4 checksum")?;
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
        .map_err(|_| "NAT ICMP checksum")
}
