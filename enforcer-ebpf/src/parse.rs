//! Defensive packet parsing: 802.1Q in the bytes, IPv4 with options (IHL), IPv4 fragments,
//! IPv6 extension headers, ICMP errors with their quoted inner packet. The same code
//! reads an skb (TC) and an XDP buffer: both are a `Frame`.
use aya_ebpf::programs::{TcContext, XdpContext};
use enforcer_common::*;
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Why a frame could not be parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    Truncated,
    Ethertype,
}

impl ParseError {
    pub fn reason(self) -> Reason {
        match self {
            ParseError::Truncated => Reason::DropMalformed,
            ParseError::Ethertype => Reason::DropEthertype,
        }
    }
}

/// What the parser needs of a frame, whether the kernel holds it as an skb (TC) or as an
/// XDP buffer (before any skb exists).
pub trait Frame {
    /// The first byte's address, and the address just past the directly readable bytes.
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// The 802.1Q tag's VLAN id when the kernel moved it out of the bytes (skb
    /// metadata); XDP sees every tag in the bytes.
    fn tag(&self) -> Option<u16>;
    /// `size_of::<T>()` bytes at `off` through the kernel's copy helper: no bounds
    /// proof at a variable offset, and bytes past the linear area too.
    fn copy<T>(&self, off: usize) -> Result<T, ParseError>;
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn tag(&self) -> Option<u16> {
        // SAFETY: the context's skb pointer is valid for the program's run.
        let skb = unsafe { &*self.skb.skb };
        (skb.vlan_present != 0).then_some((skb.vlan_tci & 0x0fff) as u16)
    }
    #[inline(always)]
    fn copy<T>(&self, off: usize) -> Result<T, ParseError> {
        self.load(off).map_err(|_| ParseError::Truncated)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn tag(&self) -> Option<u16> {
        None
    }
    #[inline(always)]
    fn copy<T>(&self, off: usize) -> Result<T, ParseError> {
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `v`, which is that
        // large, and fails (nothing read) when the frame is shorter.
        let r = unsafe {
            aya_ebpf::helpers::bpf_xdp_load_bytes(
                self.ctx,
                off as u32,
                v.as_mut_ptr() as *mut core::ffi::c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if r != 0 {
            return Err(ParseError::Truncated);
        }
        // SAFETY: the helper succeeded, so all of `v` was written; callers read only
        // plain integer arrays, for which every bit pattern is valid.
        Ok(unsafe { v.assume_init() })
    }
}

/// What kind of packet this is, for the verdict.
pub const KIND_NORMAL: u8 = 0;
/// An ICMP/ICMPv6 error quoting another packet: `inner` holds the quoted tuple.
pub const KIND_ICMP_ERROR: u8 = 1;
/// ICMPv6 neighbour discovery / MLD (types only; whether it is valid link plumbing is
/// judged where the pod's link-local address is known).
pub const KIND_ND: u8 = 2;
/// A non-first fragment: no L4 header.
pub const KIND_FRAGMENT: u8 = 3;

/// `Packet::snat`: no translation.
pub const SNAT_NONE: u8 = 0;
/// From a pod, off-VPC: judged by the node's groups, then source-NATed.
pub const SNAT_FORWARD: u8 = 1;
/// To the node's NAT port, already translated back to the pod: only state (a flow
/// hit, a related error) may let it in; it never opens a flow.
pub const SNAT_REVERSE: u8 = 2;

/// An address as four 32-bit words holding the packet's bytes in network order (IPv4:
/// first word, rest zero). Words, not bytes: byte arrays are copied by the compiler with
/// `memcpy`/`memset` subprograms, which cost more than the rest of the parse.
pub type Addr = [u32; 4];

/// A 5-tuple with ports in host order. ICMP queries: a request has (id, request type),
/// its reply (request type, id), so both land on the same flow seen from either side.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Tuple {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Lives in a per-CPU scratch slot (`SCRATCH`): too large for the 512-byte BPF stack
/// together with everything else.
#[repr(C)]
pub struct Packet {
    pub family: u8,
    pub kind: u8,
    pub tcp_flags: u8,
    /// Port the policy matches on: destination port, or ICMP `type << 8 | code`.
    pub policy_port: u16,
    pub outer: Tuple,
    /// Only meaningful for `KIND_ICMP_ERROR`.
    pub inner: Tuple,
    /// IP identification (IPv4: 16 bits; IPv6: the fragment header's 32).
    pub frag_id: u32,
    /// The first fragment of a fragmented datagram (offset 0, more to come).
    pub frag_first: u8,
    /// IPv6 hop limit (IPv4: TTL), for neighbour-discovery validity.
    pub hop_limit: u8,
    /// `ICMP_NOT_QUERY`, `ICMP_REQUEST` or `ICMP_REPLY`.
    pub icmp_query: u8,
    /// `KIND_ICMP_ERROR` only: the quoted packet parsed, so `inner` is meaningful. A
    /// quote that does not parse is related to no flow, and the rules decide.
    pub inner_ok: u8,
    /// Set by a flow-table hit: where the flow goes (`PATH_*`).
    pub flow_path: u8,
    /// Source NAT (`SNAT_*`): set by the paths before the verdict, which then judges by
    /// the node's groups alone (SPEC §5).
    pub snat: u8,
    /// `SNAT_FORWARD`: the flow's NAT port, from its entry (a hit) or just allocated.
    pub nat_port: u16,
    /// Offsets of the L4 header and of an ICMP error's quoted IP and L4 headers, for
    /// the NAT rewrites.
    pub l4_off: u16,
    pub inner_l3_off: u16,
    pub inner_l4_off: u16,
    /// Handed to the host-local tail call: the receiving pod's host interface, the
    /// sender's verdict (a `Reason` number) and counter slot.
    pub peer_ifindex: u32,
    pub sent: u32,
    pub sender_slot: u32,
    /// Set by a flow-table hit on a `PATH_POD` flow: the other pod's host interface.
    pub flow_peer: u32,
}

#[inline(always)]
fn ptr_at<T>(ctx: &impl Frame, off: usize) -> Result<*const T, ParseError> {
    let start = ctx.start();
    let end = ctx.end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(ParseError::Truncated);
    }
    Ok((start + off) as *const T)
}

/// A typed load from the packet. Packet loads need no alignment where we run (x86-64,
/// arm64: the verifier enforces it only under strict alignment), and a typed load is
/// one instruction where `read_unaligned` is a byte loop.
///
/// Never with a 1-byte type: LLVM turns `p + off + 1 > end` into `p + off >= end`, from
/// which the verifier proves no range at a variable offset. Take bytes out of a u16/u32.
#[inline(always)]
pub fn load<T: Copy>(ctx: &impl Frame, off: usize) -> Result<T, ParseError> {
    const { assert!(core::mem::size_of::<T>() > 1) };
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: ptr_at checked that size_of::<T>() bytes at `p` lie inside the packet.
    Ok(unsafe { *p })
}

/// An IPv6 address at `off`, as four word loads (a 16-byte copy is a memmove call).
#[inline(always)]
pub fn load_addr(ctx: &impl Frame, off: usize) -> Result<Addr, ParseError> {
    let p = ptr_at::<Addr>(ctx, off)? as *const u32;
    // SAFETY: ptr_at checked that 16 bytes at `p` lie inside the packet.
    Ok(unsafe { [*p, *p.add(1), *p.add(2), *p.add(3)] })
}

/// Two packet bytes at `off`, as (first, second).
#[inline(always)]
fn bytes2(ctx: &impl Frame, off: usize) -> Result<(u8, u8), ParseError> {
    let w: u16 = load(ctx, off)?;
    Ok((w as u8, (w >> 8) as u8))
}

/// Two big-endian bytes at `off` as a host-order u16.
#[inline(always)]
fn be16_at(ctx: &impl Frame, off: usize) -> Result<u16, ParseError> {
    Ok(u16::from_be(load::<u16>(ctx, off)?))
}

/// Source and destination ports (the first 4 bytes of TCP/UDP) in host order.
#[inline(always)]
fn ports_at(ctx: &impl Frame, off: usize) -> Result<(u16, u16), ParseError> {
    let w: u32 = load(ctx, off)?;
    Ok((u16::from_be(w as u16), u16::from_be((w >> 16) as u16)))
}

/// L2 view of a frame: where the network header starts and what it is.
pub struct L2 {
    pub l3_off: usize,
    pub ethertype: u16,
    /// VLAN id when the frame carried a tag (metadata or bytes), else `None`.
    pub vlan: Option<u16>,
}

/// Reads the Ethernet header and an 802.1Q tag, whether the kernel already moved the
/// tag into `__sk_buff` (real receive) or it is still in the bytes (test_run, XDP).
#[inline(always)]
pub fn parse_l2(ctx: &impl Frame) -> Result<L2, ParseError> {
    let ethertype = be16_at(ctx, 12)?;
    if let Some(vlan) = ctx.tag() {
        return Ok(L2 {
            l3_off: EthHdr::LEN,
            ethertype,
            vlan: Some(vlan),
        });
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Ok(L2 {
            l3_off: EthHdr::LEN + 4,
            ethertype: be16_at(ctx, EthHdr::LEN + 2)?,
            vlan: Some(be16_at(ctx, EthHdr::LEN)? & 0x0fff),
        });
    }
    Ok(L2 {
        l3_off: EthHdr::LEN,
        ethertype,
        vlan: None,
    })
}

/// IPv4 header fields we use: (IHL in bytes, protocol, flags+fragment offset, src, dst).
#[inline(always)]
fn ipv4_at(ctx: &impl Frame, off: usize) -> Result<(usize, u8, u16, u32, u32), ParseError> {
    let (vihl, _) = bytes2(ctx, off)?;
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(ParseError::Truncated);
    }
    let frag = be16_at(ctx, off + 6)?;
    let (_, proto) = bytes2(ctx, off + 8)?;
    let src: u32 = load(ctx, off + 12)?;
    let dst: u32 = load(ctx, off + 16)?;
    Ok((((vihl & 0x0f) as usize) * 4, proto, frag, src, dst))
}

/// Headers not in the skb's linear area (AF_PACKET TX rings, some drivers) can't be
/// read directly: pull up to `PULL_MAX` bytes in and parse again. Only after a parse
/// came up short, so packets whose headers are linear (nearly all) never pay for it.
const PULL_MAX: u32 = 1024;

#[inline(always)]
pub fn parse_l3_pulled(ctx: &TcContext, l2: &L2, pkt: &mut Packet) -> Result<(), ParseError> {
    match parse_l3(ctx, l2, pkt) {
        Err(ParseError::Truncated) => {
            let len = ctx.len();
            let linear = (ctx.data_end() - ctx.data()) as u32;
            if linear >= len {
                return Err(ParseError::Truncated);
            }
            let want = if len < PULL_MAX { len } else { PULL_MAX };
            // SAFETY: the helper takes the program's own skb; packet pointers taken
            // before it are dead (parse_l3 re-reads them from the context).
            if unsafe { aya_ebpf::helpers::bpf_skb_pull_data(ctx.skb.skb, want) } != 0 {
                return Err(ParseError::Truncated);
            }
            parse_l3(ctx, l2, pkt)
        }
        r => r,
    }
}

#[inline(always)]
pub fn parse_l3(ctx: &impl Frame, l2: &L2, pkt: &mut Packet) -> Result<(), ParseError> {
    pkt.kind = KIND_NORMAL;
    pkt.tcp_flags = 0;
    pkt.policy_port = 0;
    pkt.outer.sport = 0;
    pkt.outer.dport = 0;
    pkt.frag_first = 0;
    pkt.icmp_query = ICMP_NOT_QUERY;
    pkt.inner_ok = 0;
    pkt.snat = SNAT_NONE;
    pkt.nat_port = 0;
    let l4_off;
    match l2.ethertype {
        ETH_P_IP => {
            let (ihl, proto, frag, src, dst) = ipv4_at(ctx, l2.l3_off)?;
            pkt.family = AF_V4;
            pkt.hop_limit = bytes2(ctx, l2.l3_off + 8)?.0;
            pkt.outer.proto = proto;
            pkt.outer.src = [src, 0, 0, 0];
            pkt.outer.dst = [dst, 0, 0, 0];
            if frag & 0x3fff != 0 {
                // MF set or an offset: part of a fragmented datagram.
                pkt.frag_id = be16_at(ctx, l2.l3_off + 4)? as u32;
                if frag & 0x1fff != 0 {
                    pkt.kind = KIND_FRAGMENT;
                    return Ok(());
                }
                pkt.frag_first = 1;
            }
            l4_off = l2.l3_off + ihl;
        }
        ETH_P_IPV6 => {
            let (version, _) = bytes2(ctx, l2.l3_off)?;
            if version >> 4 != 6 {
                return Err(ParseError::Truncated);
            }
            pkt.family = AF_V6;
            pkt.outer.src = load_addr(ctx, l2.l3_off + 8)?;
            pkt.outer.dst = load_addr(ctx, l2.l3_off + 24)?;
            let (mut next, hop_limit) = bytes2(ctx, l2.l3_off + 6)?;
            pkt.hop_limit = hop_limit;
            let mut off = l2.l3_off + Ipv6Hdr::LEN;
            // Hop-by-hop, routing, fragment and destination options; a bounded walk. Rare,
            // so read with the load helper: a loop of direct packet reads at growing
            // offsets is where LLVM's merged bounds checks lose the verifier.
            let mut i = 0;
            while i < 6 && matches!(next, 0 | 43 | 60 | 44) {
                i += 1;
                let h: [u8; 4] = ctx.copy(off)?;
                if next == 44 {
                    let frag = u16::from_be_bytes([h[2], h[3]]);
                    let id: [u8; 4] = ctx.copy(off + 4)?;
                    pkt.frag_id = u32::from_be_bytes(id);
                    next = h[0];
                    off += 8;
                    if frag & 0xfff8 != 0 {
                        pkt.outer.proto = next;
                        pkt.kind = KIND_FRAGMENT;
                        return Ok(());
                    }
                    pkt.frag_first = (frag & 1) as u8;
                } else {
                    next = h[0];
                    off += ((h[1] as usize) + 1) * 8;
                }
                // Keeps the offset's range small for the verifier.
                if off > 1024 {
                    return Err(ParseError::Truncated);
                }
            }
            if matches!(next, 0 | 43 | 60 | 44) {
                // More extension headers than we walk: refuse rather than guess.
                return Err(ParseError::Truncated);
            }
            pkt.outer.proto = next;
            l4_off = off;
        }
        _ => return Err(ParseError::Ethertype),
    }
    parse_l4(ctx, pkt, l4_off)
}

#[inline(always)]
fn parse_l4(ctx: &impl Frame, pkt: &mut Packet, off: usize) -> Result<(), ParseError> {
    pkt.l4_off = off as u16;
    match pkt.outer.proto {
        PROTO_TCP => {
            (pkt.outer.sport, pkt.outer.dport) = ports_at(ctx, off)?;
            pkt.tcp_flags = bytes2(ctx, off + 12)?.1;
            pkt.policy_port = pkt.outer.dport;
        }
        PROTO_UDP => {
            (pkt.outer.sport, pkt.outer.dport) = ports_at(ctx, off)?;
            pkt.policy_port = pkt.outer.dport;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let (ty, code) = bytes2(ctx, off)?;
            pkt.policy_port = ((ty as u16) << 8) | code as u16;
            // Protocol numbers 1 and 58 match rules in either family (as in EC2), but
            // only ICMP in IPv4 and ICMPv6 in IPv6 are queries, errors or ND.
            let v6 = pkt.family == AF_V6;
            if v6 != (pkt.outer.proto == PROTO_ICMPV6) {
                return Ok(());
            }
            let error = if v6 {
                (1..=4).contains(&ty)
            } else {
                ty == 3 || ty == 11 || ty == 12
            };
            if let Some((request, reply)) = icmp_query(v6, ty) {
                let id = be16_at(ctx, off + 4)?;
                (pkt.outer.sport, pkt.outer.dport) = query_ports(id, request, reply);
                pkt.icmp_query = if reply { ICMP_REPLY } else { ICMP_REQUEST };
            } else if v6 && ((133..=137).contains(&ty) || (130..=132).contains(&ty) || ty == 143) {
                pkt.kind = KIND_ND;
            } else if error {
                pkt.kind = KIND_ICMP_ERROR;
                pkt.inner_ok = parse_inner(ctx, pkt, off + 8, v6).is_ok() as u8;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The packet an ICMP error quotes: its addresses and the first 8 bytes of its L4 header.
#[inline(always)]
fn parse_inner(ctx: &impl Frame, pkt: &mut Packet, off: usize, v6: bool) -> Result<(), ParseError> {
    let l4;
    if v6 {
        if bytes2(ctx, off)?.0 >> 4 != 6 {
            return Err(ParseError::Truncated);
        }
        pkt.inner.src = load_addr(ctx, off + 8)?;
        pkt.inner.dst = load_addr(ctx, off + 24)?;
        pkt.inner.proto = bytes2(ctx, off + 6)?.0;
        l4 = off + Ipv6Hdr::LEN;
    } else {
        let (ihl, proto, _, src, dst) = ipv4_at(ctx, off)?;
        pkt.inner.src = [src, 0, 0, 0];
        pkt.inner.dst = [dst, 0, 0, 0];
        pkt.inner.proto = proto;
        l4 = off + ihl;
    }
    pkt.inner_l3_off = off as u16;
    pkt.inner_l4_off = l4 as u16;
    pkt.inner.sport = 0;
    pkt.inner.dport = 0;
    match pkt.inner.proto {
        PROTO_TCP | PROTO_UDP => {
            (pkt.inner.sport, pkt.inner.dport) = ports_at(ctx, l4)?;
        }
        PROTO_ICMP | PROTO_ICMPV6 if (pkt.inner.proto == PROTO_ICMPV6) == v6 => {
            let (ty, _) = bytes2(ctx, l4)?;
            if let Some((request, reply)) = icmp_query(v6, ty) {
                let id = be16_at(ctx, l4 + 4)?;
                (pkt.inner.sport, pkt.inner.dport) = query_ports(id, request, reply);
            }
        }
        _ => {}
    }
    Ok(())
}

/// (sport, dport) of an ICMP query: the flow key of a request is (id, request type) and
/// its reply's the mirror image, so a reply finds the flow its request created.
#[inline(always)]
fn query_ports(id: u16, request: u8, reply: bool) -> (u16, u16) {
    if reply {
        (request as u16, id)
    } else {
        (id, request as u16)
    }
}
