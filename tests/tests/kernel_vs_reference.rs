//! The whole chain against the obviously-correct evaluator: random security groups are
//! compiled, written to the real maps and judged by the real programs (test_run); every
//! verdict must match `reference_verdict`, a loop over the rules. Seeded, so a failure
//! reproduces; bounded: 16 rule sets x 120 packets.
use std::net::IpAddr;

use enforcer::config::Quotas;
use enforcer::model::group::{Direction, GroupCatalog};
use enforcer::policy::compile::{CookieTable, FlatRule, flatten, reference_verdict};
use enforcer::sources::ec2::parse_security_groups;
use enforcer_common::prog_names::{POD_EGRESS, TRUNK_INGRESS};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;

/// SplitMix64: a tiny deterministic generator (the test needs repeatability, not quality).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

// Small spaces so that random packets hit random rules. 10.0.0.0/16 is the VPC of the
// harness (its resolver 10.0.0.2 is always allowed), so peers live elsewhere.
fn v4(rng: &mut Rng) -> String {
    format!("10.{}.0.{}", 1 + rng.below(3), 1 + rng.below(4))
}
fn v6(rng: &mut Rng) -> String {
    format!("fd00:{}::{}", 1 + rng.below(3), 1 + rng.below(4))
}

fn permission(rng: &mut Rng) -> String {
    let (proto, ports) = match rng.below(6) {
        0 => ("-1".to_string(), String::new()),
        1 => ("47".to_string(), String::new()),
        2 => (
            "icmp".to_string(),
            format!(r#","FromPort":{},"ToPort":-1"#, rng.pick(&[8, 0, -1])),
        ),
        3 => (
            "icmpv6".to_string(),
            format!(
                r#","FromPort":{},"ToPort":{}"#,
                rng.pick(&[128, -1]),
                rng.pick(&[0, -1])
            ),
        ),
        p => {
            let a = rng.pick(&[0u16, 20, 22, 53, 80, 443, 1000, 65535]);
            let b = rng.pick(&[0u16, 22, 80, 443, 1024, 65535]);
            let name = if p == 4 { "tcp" } else { "udp" };
            (
                name.to_string(),
                format!(r#","FromPort":{},"ToPort":{}"#, a.min(b), a.max(b)),
            )
        }
    };
    let v4_len = rng.pick(&[0, 8, 16, 24, 30, 32]);
    let v6_len = rng.pick(&[0, 16, 32, 112, 127, 128]);
    let mut ranges = String::new();
    if rng.below(3) != 0 {
        ranges.push_str(&format!(
            r#","IpRanges":[{{"CidrIp":"{}/{v4_len}"}}]"#,
            v4(rng)
        ));
    }
    if rng.below(3) != 0 {
        ranges.push_str(&format!(
            r#","Ipv6Ranges":[{{"CidrIpv6":"{}/{v6_len}"}}]"#,
            v6(rng)
        ));
    }
    format!(r#"{{"IpProtocol":"{proto}"{ports}{ranges}}}"#)
}

fn groups(rng: &mut Rng) -> (String, Vec<String>) {
    let n = 1 + rng.below(3);
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for g in 0..n {
        let inbound: Vec<String> = (0..rng.below(8)).map(|_| permission(rng)).collect();
        let outbound: Vec<String> = (0..rng.below(8)).map(|_| permission(rng)).collect();
        ids.push(format!("sg-r{g}"));
        out.push(format!(
            r#"{{"GroupId":"sg-r{g}","IpPermissions":[{}],"IpPermissionsEgress":[{}]}}"#,
            inbound.join(","),
            outbound.join(",")
        ));
    }
    (format!(r#"{{"SecurityGroups":[{}]}}"#, out.join(",")), ids)
}

fn reference_rules(groups_json: &str, ids: &[String]) -> Vec<FlatRule> {
    let mut catalog = GroupCatalog::default();
    catalog.add_groups(parse_security_groups(groups_json, "random").unwrap());
    flatten(
        ids,
        &catalog,
        &Quotas::default(),
        &mut CookieTable::default(),
    )
    .unwrap()
}

#[test]
fn kernel_agrees_with_reference_on_random_policies() {
    let mut rng = Rng(0x005e_ed0f_9095);
    let mut checked = (0, 0);
    for round in 0..16 {
        let (json, ids) = groups(&mut rng);
        let k8s = format!(
            "kind: SecurityGroupPolicy\nmetadata: {{name: r, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [{}]}}}}\n{}",
            ids.join(", "),
            pod_yaml(&CLIENT, "{}")
        );
        let rules = reference_rules(&json, &ids);
        let mut h = Harness::new();
        let plan = h.apply(&json, &k8s);
        assert!(
            plan.pods[0].error.is_none(),
            "round {round}: {:?}",
            plan.pods[0].error
        );
        for i in 0..120u16 {
            let six = rng.below(2) == 1;
            let peer = if six { v6(&mut rng) } else { v4(&mut rng) };
            let outbound = rng.below(2) == 1;
            // A fresh source port/echo id per packet, so no verdict comes from state.
            let sport = 10000 + round * 200 + i;
            let (l4, proto, port) = match rng.below(4) {
                0 => {
                    let p = rng.pick(&[22u16, 53, 80, 443, 1000, 5000, 65535]);
                    (L4::Syn { sport, dport: p }, 6u8, p)
                }
                1 => {
                    let p = rng.pick(&[22u16, 53, 80, 443, 1000, 5000, 65535]);
                    (L4::Udp { sport, dport: p }, 17, p)
                }
                2 => (
                    L4::EchoRequest { id: sport },
                    if six { 58 } else { 1 },
                    if six { 128 << 8 } else { 8 << 8 },
                ),
                _ => {
                    if six {
                        // Other protocols are tracked by address pair: keep v6 to echo.
                        (L4::EchoRequest { id: sport }, 58, 128 << 8)
                    } else {
                        (L4::Gre, 47, 0)
                    }
                }
            };
            let own = if six { CLIENT.ipv6 } else { CLIENT.ipv4 };
            let (prog, frame, dir) = if outbound {
                (
                    POD_EGRESS,
                    Frame::new(CLIENT.mac, HOST_MAC, own, &peer, l4),
                    Direction::Outbound,
                )
            } else {
                (
                    TRUNK_INGRESS,
                    Frame::new(GW_MAC, CLIENT.mac, &peer, own, l4).tagged(CLIENT.vlan),
                    Direction::Inbound,
                )
            };
            let addr: IpAddr = peer.parse().unwrap();
            let mut want = reference_verdict(&rules, dir, addr, proto, port);
            if proto == 47 && !want {
                // GRE is tracked by address pair: an earlier allowed GRE packet to the
                // same peer leaves state that lets this one pass, whatever the rules.
                want = h.dp.flows().unwrap().iter().any(|(k, _)| {
                    k.proto == 47
                        && k.remote[..4]
                            == match addr {
                                IpAddr::V4(a) => a.octets(),
                                _ => [0; 4],
                            }
                });
            }
            let got = h.run(prog, &frame.bytes()).0 == TC_ACT_REDIRECT;
            assert_eq!(
                got, want,
                "round {round} packet {i}: {dir:?} {proto} {peer} port {port}\ngroups: {json}"
            );
            checked.0 += 1;
            checked.1 += want as usize;
        }
    }
    // The generator must produce both verdicts in quantity, or this proves little.
    assert!(
        checked.1 > checked.0 / 10 && checked.1 < checked.0 * 9 / 10,
        "{checked:?}"
    );
}
