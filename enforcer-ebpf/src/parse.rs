//! Defensive packet parsing: 802.1Q in the bytes, IPv4 with options (IHL), IPv4 fragments,
//! IPv6 extension headers, ICMP errors with their quoted inner packet.
use aya_ebpf::programs::TcContext;
use enforcer_common::*;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

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

/// What kind of packet this is, for the verdict.
pub const KIND_NORMAL: u8 = 0;
/// An ICMP/ICMPv6 error quoting another packet: `inner` holds the quoted tuple.
pub const KIND_ICMP_ERROR: u8 = 1;
/// IPv6 neighbour discovery / MLD: link plumbing, never filtered.
pub const KIND_ND: u8 = 2;
/// A non-first fragment: no L4 header.
pub const KIND_FRAGMENT: u8 = 3;

/// A 5-tuple with ports in host order. For ICMP echo both ports are the echo id, so
/// requests and replies land on the same flow.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
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
    pub inner: Tuple,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*const T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(ParseError::Truncated);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ParseError> {
    let p = ptr_at::<T>(ctx, off)?;
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
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
pub fn parse_l2(ctx: &TcContext) -> Result<L2, ParseError> {
    let eth: EthHdr = read(ctx, 0)?;
    let ethertype = u16::from_be(eth.ether_type);
    let skb = unsafe { &*ctx.skb.skb };
    if skb.vlan_present != 0 {
        return Ok(L2 {
            l3_off: EthHdr::LEN,
            ethertype,
            vlan: Some((skb.vlan_tci & 0x0fff) as u16),
        });
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: [u8; 4] = read(ctx, EthHdr::LEN)?;
        return Ok(L2 {
            l3_off: EthHdr::LEN + 4,
            ethertype: be16([tag[2], tag[3]]),
            vlan: Some(be16([tag[0], tag[1]]) & 0x0fff),
        });
    }
    Ok(L2 {
        l3_off: EthHdr::LEN,
        ethertype,
        vlan: None,
    })
}

#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[0] = a[0];
    o[1] = a[1];
    o[2] = a[2];
    o[3] = a[3];
    o
}

#[inline(always)]
pub fn parse_l3(ctx: &TcContext, l2: &L2, pkt: &mut Packet) -> Result<(), ParseError> {
    pkt.family = 0;
    pkt.kind = KIND_NORMAL;
    pkt.tcp_flags = 0;
    pkt.policy_port = 0;
    pkt.outer.sport = 0;
    pkt.outer.dport = 0;
    pkt.inner = Tuple::default();
    let l4_off;
    match l2.ethertype {
        ETH_P_IP => {
            let ip: Ipv4Hdr = read(ctx, l2.l3_off)?;
            let ihl = (ip.vihl & 0x0f) as usize;
            if ihl < 5 || (ip.vihl >> 4) != 4 {
                return Err(ParseError::Truncated);
            }
            pkt.family = AF_V4;
            pkt.outer.proto = ip.proto;
            pkt.outer.src = v4_in_16(ip.src_addr);
            pkt.outer.dst = v4_in_16(ip.dst_addr);
            let frags = be16(ip.frags);
            if frags & 0x1fff != 0 {
                pkt.kind = KIND_FRAGMENT;
                return Ok(());
            }
            l4_off = l2.l3_off + ihl * 4;
        }
        ETH_P_IPV6 => {
            let first: [u8; 8] = read(ctx, l2.l3_off)?;
            if first[0] >> 4 != 6 {
                return Err(ParseError::Truncated);
            }
            pkt.family = AF_V6;
            pkt.outer.src = read(ctx, l2.l3_off + 8)?;
            pkt.outer.dst = read(ctx, l2.l3_off + 24)?;
            let mut next = first[6];
            let mut off = l2.l3_off + Ipv6Hdr::LEN;
            // Hop-by-hop, routing, fragment and destination options; a bounded walk.
            let mut i = 0;
            while i < 6 {
                i += 1;
                match next {
                    0 | 43 | 60 => {
                        let h: [u8; 2] = read(ctx, off)?;
                        next = h[0];
                        off += ((h[1] as usize) + 1) * 8;
                    }
                    44 => {
                        let h: [u8; 4] = read(ctx, off)?;
                        next = h[0];
                        off += 8;
                        if be16([h[2], h[3]]) & 0xfff8 != 0 {
                            pkt.outer.proto = next;
                            pkt.kind = KIND_FRAGMENT;
                            return Ok(());
                        }
                    }
                    _ => break,
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
fn parse_l4(ctx: &TcContext, pkt: &mut Packet, off: usize) -> Result<(), ParseError> {
    match pkt.outer.proto {
        PROTO_TCP => {
            let h: [u8; 14] = read(ctx, off)?;
            pkt.outer.sport = be16([h[0], h[1]]);
            pkt.outer.dport = be16([h[2], h[3]]);
            pkt.tcp_flags = h[13];
            pkt.policy_port = pkt.outer.dport;
        }
        PROTO_UDP => {
            let h: [u8; 4] = read(ctx, off)?;
            pkt.outer.sport = be16([h[0], h[1]]);
            pkt.outer.dport = be16([h[2], h[3]]);
            pkt.policy_port = pkt.outer.dport;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h: [u8; 8] = read(ctx, off)?;
            let (ty, code) = (h[0], h[1]);
            pkt.policy_port = ((ty as u16) << 8) | code as u16;
            let v6 = pkt.outer.proto == PROTO_ICMPV6;
            let echo = if v6 {
                ty == 128 || ty == 129
            } else {
                ty == 8 || ty == 0
            };
            let error = if v6 {
                ty >= 1 && ty <= 4
            } else {
                ty == 3 || ty == 11 || ty == 12
            };
            if echo {
                let id = be16([h[4], h[5]]);
                pkt.outer.sport = id;
                pkt.outer.dport = id;
            } else if v6 && (ty >= 133 && ty <= 137 || ty == 130 || ty == 131 || ty == 143) {
                pkt.kind = KIND_ND;
            } else if error {
                pkt.kind = KIND_ICMP_ERROR;
                parse_inner(ctx, pkt, off + 8, v6)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The packet an ICMP error quotes: its addresses and the first 8 bytes of its L4 header.
#[inline(always)]
fn parse_inner(ctx: &TcContext, pkt: &mut Packet, off: usize, v6: bool) -> Result<(), ParseError> {
    let l4;
    if v6 {
        let first: [u8; 8] = read(ctx, off)?;
        pkt.inner.src = read(ctx, off + 8)?;
        pkt.inner.dst = read(ctx, off + 24)?;
        pkt.inner.proto = first[6];
        l4 = off + Ipv6Hdr::LEN;
    } else {
        let ip: Ipv4Hdr = read(ctx, off)?;
        let ihl = (ip.vihl & 0x0f) as usize;
        if ihl < 5 {
            return Err(ParseError::Truncated);
        }
        pkt.inner.src = v4_in_16(ip.src_addr);
        pkt.inner.dst = v4_in_16(ip.dst_addr);
        pkt.inner.proto = ip.proto;
        l4 = off + ihl * 4;
    }
    let h: [u8; 8] = read(ctx, l4)?;
    match pkt.inner.proto {
        PROTO_TCP | PROTO_UDP => {
            pkt.inner.sport = be16([h[0], h[1]]);
            pkt.inner.dport = be16([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = be16([h[4], h[5]]);
            pkt.inner.sport = id;
            pkt.inner.dport = id;
        }
        _ => {}
    }
    Ok(())
}
