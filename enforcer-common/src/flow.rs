//! The flow state machine and idle timeouts (SPEC §4), shared by the programs (which
//! move flows along), the daemon's sweeper (which expires them) and the host tests,
//! which check every transition.
use crate::{NodeConfig, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

pub const FLOW_TCP_SYN: u8 = 0;
pub const FLOW_TCP_ESTABLISHED: u8 = 1;
pub const FLOW_TCP_CLOSING: u8 = 2;
pub const FLOW_UDP: u8 = 3;
pub const FLOW_UDP_STREAM: u8 = 4;
pub const FLOW_ICMP: u8 = 5;
pub const FLOW_OTHER: u8 = 6;

/// Slots in `NodeConfig::timeouts_ns`: a power of two, so a masked state always indexes.
pub const FLOW_STATES: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// State of a flow its first packet creates.
#[inline(always)]
pub const fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    match proto {
        PROTO_TCP => {
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                FLOW_TCP_CLOSING
            } else if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 {
                FLOW_TCP_SYN
            } else {
                // Picked up mid-stream (e.g. after the table was swept): allowed by policy
                // now, so tracked as established.
                FLOW_TCP_ESTABLISHED
            }
        }
        PROTO_UDP => FLOW_UDP,
        PROTO_ICMP | PROTO_ICMPV6 => FLOW_ICMP,
        _ => FLOW_OTHER,
    }
}

/// State after a packet of an existing flow; `reply` when it goes the other way from
/// the packet that created the flow.
#[inline(always)]
pub const fn next_state(state: u8, tcp_flags: u8, reply: bool) -> u8 {
    match state {
        FLOW_TCP_SYN | FLOW_TCP_ESTABLISHED => {
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                FLOW_TCP_CLOSING
            } else if reply {
                FLOW_TCP_ESTABLISHED
            } else {
                state
            }
        }
        FLOW_UDP if reply => FLOW_UDP_STREAM,
        s => s,
    }
}

/// The configured idle timeout of a state.
#[inline(always)]
pub const fn timeout_ns(cfg: &NodeConfig, state: u8) -> u64 {
    cfg.timeouts_ns[(state as usize) & (FLOW_STATES - 1)]
}

/// How long an entry may stay idle, given how many entries its pod holds: half-open TCP
/// of a pod past half its share gets the short pressure timeout, so a SYN flood ages
/// out fast.
#[inline(always)]
pub const fn idle_limit(cfg: &NodeConfig, state: u8, pod_flows: u64) -> u64 {
    let t = timeout_ns(cfg, state);
    if state == FLOW_TCP_SYN
        && cfg.syn_pressure_timeout_ns < t
        && pod_flows * 2 > cfg.flows_per_pod as u64
    {
        return cfg.syn_pressure_timeout_ns;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FIN: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;

    #[test]
    fn first_packets() {
        for (proto, flags, want, what) in [
            (PROTO_TCP, SYN, FLOW_TCP_SYN, "a SYN opens a half-open flow"),
            (
                PROTO_TCP,
                ACK,
                FLOW_TCP_ESTABLISHED,
                "mid-stream: established",
            ),
            (
                PROTO_TCP,
                SYNACK,
                FLOW_TCP_ESTABLISHED,
                "a SYN-ACK is not an opening",
            ),
            (PROTO_TCP, FIN, FLOW_TCP_CLOSING, "a FIN: closing"),
            (PROTO_TCP, RST, FLOW_TCP_CLOSING, "a RST: closing"),
            (PROTO_UDP, 0, FLOW_UDP, "UDP"),
            (PROTO_ICMP, 0, FLOW_ICMP, "ICMP"),
            (PROTO_ICMPV6, 0, FLOW_ICMP, "ICMPv6"),
            (47, 0, FLOW_OTHER, "another protocol"),
        ] {
            assert_eq!(initial_state(proto, flags), want, "{what}");
        }
    }

    #[test]
    fn every_transition() {
        for (state, flags, reply, want, what) in [
            (
                FLOW_TCP_SYN,
                SYN,
                false,
                FLOW_TCP_SYN,
                "SYN retransmitted: still half-open",
            ),
            (
                FLOW_TCP_SYN,
                ACK,
                false,
                FLOW_TCP_SYN,
                "more from the opener: still half-open",
            ),
            (
                FLOW_TCP_SYN,
                SYNACK,
                true,
                FLOW_TCP_ESTABLISHED,
                "the reply establishes",
            ),
            (
                FLOW_TCP_SYN,
                RST,
                true,
                FLOW_TCP_CLOSING,
                "refused: closing",
            ),
            (
                FLOW_TCP_SYN,
                FIN,
                false,
                FLOW_TCP_CLOSING,
                "FIN while half-open",
            ),
            (
                FLOW_TCP_ESTABLISHED,
                ACK,
                false,
                FLOW_TCP_ESTABLISHED,
                "data",
            ),
            (
                FLOW_TCP_ESTABLISHED,
                ACK,
                true,
                FLOW_TCP_ESTABLISHED,
                "reply data",
            ),
            (FLOW_TCP_ESTABLISHED, FIN, false, FLOW_TCP_CLOSING, "FIN"),
            (
                FLOW_TCP_ESTABLISHED,
                RST,
                true,
                FLOW_TCP_CLOSING,
                "RST from the peer",
            ),
            (
                FLOW_TCP_CLOSING,
                ACK,
                true,
                FLOW_TCP_CLOSING,
                "closing stays closing",
            ),
            (
                FLOW_TCP_CLOSING,
                SYN,
                false,
                FLOW_TCP_CLOSING,
                "no reopening by state",
            ),
            (FLOW_UDP, 0, false, FLOW_UDP, "one way only: still UDP"),
            (FLOW_UDP, 0, true, FLOW_UDP_STREAM, "a reply makes a stream"),
            (
                FLOW_UDP_STREAM,
                0,
                false,
                FLOW_UDP_STREAM,
                "a stream stays a stream",
            ),
            (FLOW_ICMP, 0, true, FLOW_ICMP, "ICMP"),
            (FLOW_OTHER, 0, true, FLOW_OTHER, "other protocols"),
        ] {
            assert_eq!(next_state(state, flags, reply), want, "{what}");
        }
    }

    #[test]
    fn half_open_entries_age_fast_only_under_pressure() {
        let mut cfg = NodeConfig {
            flows_per_pod: 100,
            syn_pressure_timeout_ns: 5,
            ..NodeConfig::default()
        };
        cfg.timeouts_ns = [60, 432000, 60, 30, 180, 30, 600, 600];
        assert_eq!(
            idle_limit(&cfg, FLOW_TCP_SYN, 50),
            60,
            "at half the share: normal"
        );
        assert_eq!(idle_limit(&cfg, FLOW_TCP_SYN, 51), 5, "past half: pressure");
        assert_eq!(
            idle_limit(&cfg, FLOW_TCP_ESTABLISHED, 100),
            432000,
            "only half-open entries"
        );
        cfg.syn_pressure_timeout_ns = 120;
        assert_eq!(
            idle_limit(&cfg, FLOW_TCP_SYN, 100),
            60,
            "never longer than normal"
        );
    }
}
