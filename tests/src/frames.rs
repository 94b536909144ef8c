//! Crafted frames for test_run, built with etherparse.
use std::net::IpAddr;

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, VlanId, icmpv4, icmpv6};

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Syn {
        sport: u16,
        dport: u16,
    },
    SynAck {
        sport: u16,
        dport: u16,
    },
    Ack {
        sport: u16,
        dport: u16,
    },
    /// FIN-ACK: the sender closes its side.
    Fin {
        sport: u16,
        dport: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// Port unreachable (v4) / port unreachable (v6) quoting `quoted`'s IP packet.
    PortUnreachable,
    Gre,
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// For `PortUnreachable`: the quoted packet (an IP packet, no L2).
    pub quoted: Option<Vec<u8>>,
}

impl Frame {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: &str, dst: &str, l4: L4) -> Frame {
        Frame {
            src_mac,
            dst_mac,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            l4,
            quoted: None,
        }
    }

    pub fn tagged(mut self, vlan: u16) -> Frame {
        self.vlan = Some(vlan);
        self
    }

    pub fn quoting(mut self, ip_packet: Vec<u8>) -> Frame {
        self.quoted = Some(ip_packet);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let mut out = Vec::new();
        macro_rules! l4 {
            ($ip:expr, $v6:expr) => {{
                let ip = $ip;
                let payload = self.quoted.clone().unwrap_or_default();
                match self.l4 {
                    L4::Syn { sport, dport } => {
                        ip.tcp(sport, dport, 1000, 64000).syn().write(&mut out, &[])
                    }
                    L4::SynAck { sport, dport } => ip
                        .tcp(sport, dport, 5000, 64000)
                        .syn()
                        .ack(1001)
                        .write(&mut out, &[]),
                    L4::Ack { sport, dport } => ip
                        .tcp(sport, dport, 1001, 64000)
                        .ack(5001)
                        .write(&mut out, b"hello"),
                    L4::Fin { sport, dport } => ip
                        .tcp(sport, dport, 1006, 64000)
                        .ack(5001)
                        .fin()
                        .write(&mut out, &[]),
                    L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, b"ping"),
                    L4::EchoRequest { id } if $v6 => {
                        ip.icmpv6_echo_request(id, 1).write(&mut out, b"x")
                    }
                    L4::EchoRequest { id } => ip.icmpv4_echo_request(id, 1).write(&mut out, b"x"),
                    L4::EchoReply { id } if $v6 => {
                        ip.icmpv6_echo_reply(id, 1).write(&mut out, b"x")
                    }
                    L4::EchoReply { id } => ip.icmpv4_echo_reply(id, 1).write(&mut out, b"x"),
                    L4::PortUnreachable if $v6 => ip
                        .icmpv6(Icmpv6Type::DestinationUnreachable(
                            icmpv6::DestUnreachableCode::Port,
                        ))
                        .write(&mut out, &payload),
                    L4::PortUnreachable => ip
                        .icmpv4(Icmpv4Type::DestinationUnreachable(
                            icmpv4::DestUnreachableHeader::Port,
                        ))
                        .write(&mut out, &payload),
                    L4::Gre => unreachable!(),
                }
                .unwrap()
            }};
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                if let L4::Gre = self.l4 {
                    return self.raw_v4(47);
                }
                match self.vlan {
                    Some(v) => l4!(
                        eth.single_vlan(VlanId::try_new(v).unwrap()).ipv4(
                            s.octets(),
                            d.octets(),
                            64
                        ),
                        false
                    ),
                    None => l4!(eth.ipv4(s.octets(), d.octets(), 64), false),
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => match self.vlan {
                Some(v) => l4!(
                    eth.single_vlan(VlanId::try_new(v).unwrap())
                        .ipv6(s.octets(), d.octets(), 64),
                    true
                ),
                None => l4!(eth.ipv6(s.octets(), d.octets(), 64), true),
            },
            _ => panic!("mixed address families"),
        }
        out
    }

    /// An IPv4 packet of another protocol (no L4 parsing), for "other protocols".
    fn raw_v4(&self, proto: u8) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (self.src, self.dst) else {
            panic!()
        };
        let mut out = Vec::new();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        if let Some(v) = self.vlan {
            out.extend_from_slice(&[0x81, 0x00]);
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[0x08, 0x00]);
        let ip =
            etherparse::Ipv4Header::new(4, 64, etherparse::IpNumber(proto), s.octets(), d.octets())
                .unwrap();
        ip.write(&mut out).unwrap();
        out.extend_from_slice(&[0, 0, 0x08, 0x00]);
        out
    }

    /// The IP packet without its L2 header (for quoting in ICMP errors).
    pub fn ip_packet(&self) -> Vec<u8> {
        let b = self.bytes();
        b[if self.vlan.is_some() { 18 } else { 14 }..].to_vec()
    }
}

/// Inserts IPv4 options (NOPs and an end-of-list) after the 20-byte header; IHL and the
/// total length follow, so the L4 header moves.
pub fn with_ipv4_options(frame: &[u8], l3: usize, words: usize) -> Vec<u8> {
    let mut out = frame[..l3 + 20].to_vec();
    let mut opts = vec![1u8; words * 4];
    *opts.last_mut().unwrap() = 0;
    out.extend_from_slice(&opts);
    out.extend_from_slice(&frame[l3 + 20..]);
    out[l3] = 0x40 | (5 + words as u8);
    let tot = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) + (words * 4) as u16;
    out[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
    out
}

/// Inserts an 8-byte IPv6 extension header (`kind`: 0 hop-by-hop, 60 destination
/// options, 44 fragment with `frag_offset` in 8-byte units) after the fixed header.
pub fn with_ipv6_ext(frame: &[u8], l3: usize, kind: u8, frag_offset: u16) -> Vec<u8> {
    let next = frame[l3 + 6];
    let mut ext = [0u8; 8];
    ext[0] = next;
    if kind == 44 {
        // M flag set on the first fragment (offset 0), as a sender splitting a datagram.
        let more = if frag_offset == 0 { 1 } else { 0 };
        ext[2..4].copy_from_slice(&((frag_offset << 3) | more).to_be_bytes());
        ext[4..8].copy_from_slice(&0x1234u32.to_be_bytes());
    } else {
        // Hdr Ext Len 0 (8 bytes), then a PadN option filling the rest.
        ext[2] = 1;
        ext[3] = 4;
    }
    let mut out = frame[..l3 + 40].to_vec();
    out[l3 + 6] = kind;
    let plen = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) + 8;
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&frame[l3 + 40..]);
    out
}

/// Marks an IPv4 packet as fragment `id` at `offset` (8-byte units); 0 with MF = first.
pub fn as_ipv4_fragment(frame: &[u8], l3: usize, id: u16, offset: u16, more: bool) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
    let v = offset | if more { 0x2000 } else { 0 };
    out[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
    out
}

/// An ICMP (v4) or ICMPv6 (v6) message of any type: `rest` is bytes 4..8 of the ICMP
/// header (identifier and sequence for queries), `hop_limit` the IPv4 TTL or IPv6 hop
/// limit. Untagged; see [`with_vlan`].
#[expect(
    clippy::too_many_arguments,
    reason = "a frame is that many fields; a builder would hide which is which"
)]
pub fn icmp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &str,
    dst: &str,
    hop_limit: u8,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let mut out = Vec::new();
    match (
        src.parse::<IpAddr>().unwrap(),
        dst.parse::<IpAddr>().unwrap(),
    ) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), hop_limit)
            .icmpv4(Icmpv4Type::Unknown {
                type_u8: ty,
                code_u8: code,
                bytes5to8: rest,
            })
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), hop_limit)
            .icmpv6(Icmpv6Type::Unknown {
                type_u8: ty,
                code_u8: code,
                bytes5to8: rest,
            })
            .write(&mut out, payload),
        _ => panic!("mixed address families"),
    }
    .unwrap();
    out
}

/// Rewrites an IPv4 frame's protocol number (e.g. an ICMP message relabelled as
/// protocol 58, ICMPv6, which IPv4 does not carry).
pub fn with_ipv4_protocol(frame: &[u8], l3: usize, proto: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[l3 + 9] = proto;
    out
}

/// Inserts an 802.1Q tag after the MAC addresses (as the trunk receives frames).
pub fn with_vlan(frame: &[u8], vlan: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&vlan.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}
