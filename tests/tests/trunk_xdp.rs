//! The trunk's XDP pre-filter on a simulated node, with real traffic: frames from the
//! VPC that `trunk_ingress` would drop die in XDP, before the node builds an skb (the
//! TC program never runs for them), while allowed new flows and replies by state pass
//! on to TC. Turned off, TC alone drops the same frames for the same reasons.
use integration_tests::enforcer_bin;
use integration_tests::frames::{Frame, L4};
use integration_tests::net::{echo_server, tcp_echo};
use integration_tests::raw::send_frames;
use integration_tests::realbench::{StatsGuard, prog_stats_of};
use integration_tests::shop::*;
use integration_tests::sim::{
    FABRIC_MAC, SimPod, in_netns, sh, tcx_programs, write_config, xdp_program,
};

/// web admits TCP 8080 from the VPC's 10.0.2.0/24 and fd00:10:2::/64 and may reach
/// 10.0.2.5:443; client and other as in the shop.
fn groups() -> String {
    let g = integration_tests::shop::groups().replace(
        r#""IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"UserIdGroupPairs":[{"GroupId":"sg-client"}]},"#,
        r#""IpPermissions":[
    {"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.2.0/24"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::/64"}]},"#,
    );
    assert!(g.contains("10.0.2.0/24"), "web's inbound rule replaced");
    g
}

/// Frames per kind of denied traffic.
const N: usize = 2000;

/// A TCP SYN from the VPC on `vlan`, as the fabric would put it on the trunk (the tag
/// in the bytes).
fn syn(to: &SimPod, src: &str, dst: &str, vlan: u16) -> Vec<u8> {
    let mac = |s: &str| s.parse::<enforcer::model::mac::MacAddr>().unwrap().octets();
    Frame::new(
        mac(FABRIC_MAC),
        mac(&to.mac),
        src,
        dst,
        L4::Syn {
            sport: 1000,
            dport: 8080,
        },
    )
    .tagged(vlan)
    .bytes()
}

/// Packets counted for `reason` on `pod` (None: traffic no pod could be named for).
fn counted(n: &Node, pod: Option<&str>, reason: &str) -> u64 {
    let st = n.sim.status().unwrap();
    let c = match pod {
        Some(p) => st
            .pods
            .iter()
            .find(|x| x.name == p)
            .unwrap()
            .counters
            .clone(),
        None => st.unattributed.clone(),
    };
    c.get(reason).map_or(0, |c| c[0])
}

/// The denied kinds: (what, frame, pod counted on, reason).
fn denied(n: &Node) -> Vec<(&'static str, Vec<u8>, Option<&'static str>, &'static str)> {
    let web = &n.web;
    vec![
        (
            "no rule: a v4 peer outside the /24",
            syn(web, "10.0.9.9", &web.ipv4, web.vlan),
            Some("web"),
            "drop_no_rule",
        ),
        (
            "no rule: a v6 peer outside the /64",
            syn(web, "fd00:10:9::9", &web.ipv6, web.vlan),
            Some("web"),
            "drop_no_rule",
        ),
        (
            "a VLAN no pod has",
            syn(web, "10.0.2.5", &web.ipv4, 999),
            None,
            "drop_unknown_vlan",
        ),
        (
            "misaddressed: the client's address on web's VLAN",
            syn(web, "10.0.2.5", &n.client.ipv4, web.vlan),
            Some("web"),
            "drop_spoof_ip",
        ),
    ]
}

/// Sends each denied kind N times; checks each was counted N times for its reason, and
/// returns (runs of the XDP program, runs of trunk_ingress) meanwhile.
fn flood_denied(n: &Node, xdp: Option<u32>, tc: u32) -> (u64, u64) {
    let ids: Vec<u32> = xdp.into_iter().chain([tc]).collect();
    let runs = |id: u32| prog_stats_of(&ids).unwrap().get(&id).map_or(0, |s| s.1);
    let (x0, t0) = (xdp.map_or(0, runs), runs(tc));
    for (what, frame, pod, reason) in denied(n) {
        let before = counted(n, pod, reason);
        let sent = send_frames(&n.sim.fabric_ns, "fab0", vec![frame], N).unwrap();
        assert_eq!(sent, N as u64, "{what}: frames sent");
        n.sim
            .wait_status(&format!("{what}: {N} counted as {reason}"), |_| {
                counted(n, pod, reason) >= before + N as u64
            });
        // Nothing else on the node is denied this way meanwhile: N, give or take the
        // odd neighbour discovery.
        let got = counted(n, pod, reason) - before;
        assert!(got < N as u64 + 20, "{what}: {got} counted as {reason}");
    }
    (xdp.map_or(0, runs) - x0, runs(tc) - t0)
}

fn trunk_ingress_id(n: &Node) -> u32 {
    tcx_programs(&n.sim.node_ns, "trunk0")
        .into_iter()
        .find(|(_, name)| name == "trunk_ingress")
        .map(|(id, _)| id)
        .expect("trunk_ingress on trunk0")
}

/// Allowed traffic through the trunk: new flows by rule in both families, and the
/// replies of web's own flow by state.
fn allowed_passes(n: &Node) {
    let web_ns = n.sim.pod_ns("web").to_string();
    for addr in ["10.0.1.11:8080", "[fd00:10:1::11]:8080"] {
        assert!(
            tcp_echo(&n.sim.fabric_ns, addr).unwrap(),
            "a VPC host reaches {addr}\n{}",
            n.sim.status().unwrap().render_table()
        );
    }
    assert!(
        tcp_echo(&web_ns, "10.0.2.5:443").unwrap(),
        "web's own flow: its replies pass by state"
    );
}

/// Without the pre-filter: allowed traffic passes, and TC judges (and drops) every
/// denied frame, counted for the same reasons.
fn tc_alone_enforces(n: &Node) {
    let web_ns = n.sim.pod_ns("web").to_string();
    let _web = echo_server(&web_ns, "10.0.1.11:8080").unwrap();
    let _web6 = echo_server(&web_ns, "[fd00:10:1::11]:8080").unwrap();
    let _vpc = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    allowed_passes(n);
    let tc = trunk_ingress_id(n);
    let _stats = StatsGuard::enable().unwrap();
    let (_, tc_runs) = flood_denied(n, None, tc);
    assert!(
        tc_runs >= denied(n).len() as u64 * N as u64,
        "TC judged every denied frame: {tc_runs} runs"
    );
}

#[test]
fn denied_frames_from_the_vpc_die_in_xdp_and_allowed_ones_pass() {
    let n = node_with_groups("", &groups());
    let web_ns = n.sim.pod_ns("web").to_string();
    let _web = [
        echo_server(&web_ns, "10.0.1.11:8080").unwrap(),
        echo_server(&web_ns, "[fd00:10:1::11]:8080").unwrap(),
    ];
    let _vpc = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    assert_eq!(n.sim.status().unwrap().trunk_xdp, "attached (native)");
    let xdp = xdp_program(&n.sim.node_ns, "trunk0").expect("an XDP program on trunk0");
    let tc = trunk_ingress_id(&n);
    allowed_passes(&n);

    let _stats = StatsGuard::enable().unwrap();
    let (xdp_runs, tc_runs) = flood_denied(&n, Some(xdp), tc);
    let kinds = denied(&n).len() as u64;
    eprintln!("during the flood: XDP ran {xdp_runs} times, trunk_ingress {tc_runs}");
    assert!(xdp_runs >= kinds * N as u64, "XDP ran {xdp_runs} times");
    // The denied frames never reached TC: what ran there is the node's background
    // (neighbour discovery, the status probes' traffic), far below one kind's N.
    assert!(
        tc_runs < N as u64 / 10,
        "trunk_ingress ran {tc_runs} times during {} denied frames",
        kinds * N as u64
    );
    allowed_passes(&n);
}

/// `node.trunkXdp: false` after a daemon that had it on: the pinned XDP link goes, and
/// TC alone drops the same frames for the same reasons.
#[test]
fn turned_off_tc_alone_drops_the_same() {
    let mut n = node_with_groups("", &groups());
    assert!(xdp_program(&n.sim.node_ns, "trunk0").is_some());
    n.sim.stop_daemon();
    let k8s = std::fs::read_to_string(n.sim.workdir.join("k8s.yaml")).unwrap();
    let cfg = write_config(&n.sim, &groups(), &k8s, "  trunkXdp: false\n").unwrap();
    n.sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
    assert_eq!(
        n.sim.status().unwrap().trunk_xdp,
        "not attached: turned off (node.trunkXdp: false)"
    );
    assert_eq!(xdp_program(&n.sim.node_ns, "trunk0"), None, "XDP detached");
    let pins: Vec<String> = std::fs::read_dir(n.sim.bpffs_dir.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!pins.iter().any(|p| p.starts_with("trunkxdp-")), "{pins:?}");

    tc_alone_enforces(&n);
}

/// Another program holds the trunk's XDP hook: the daemon says so (status, its log) and
/// goes on with TC alone, which enforces the same for every pod.
#[test]
fn where_xdp_cannot_attach_tc_alone_enforces() {
    use integration_tests::sim::{in_netns, pods_yaml, sim_pod};
    let web = sim_pod("shop", "web", 1);
    let client = sim_pod("shop", "client", 2);
    let other = sim_pod("shop", "other", 3);
    let pods = vec![web.clone(), client.clone(), other];
    let mut sim = integration_tests::sim::SimNode::build(&pods, REMOTE).unwrap();
    let _occupier = in_netns(&sim.node_ns, || {
        integration_tests::fabric::Fabric::occupy_xdp("trunk0")
    })
    .unwrap()
    .unwrap();
    let k8s = format!(
        "{}{}",
        policies(),
        pods_yaml(&pods, &|p| format!("{{app: {}}}", p.name))
    );
    let cfg = write_config(&sim, &groups(), &k8s, "").unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).unwrap();
    let groups_path = sim.workdir.join("groups.json");
    let n = Node {
        sim,
        web,
        client,
        groups_path,
    };
    let st = n.sim.status().unwrap();
    assert!(
        st.trunk_xdp.starts_with("not attached:") && st.trunk_xdp.contains("native XDP refused"),
        "{}",
        st.trunk_xdp
    );
    assert!(
        n.sim
            .daemon_log()
            .contains("XDP pre-filter not attached, TC alone enforces"),
        "{}",
        n.sim.daemon_log()
    );
    tc_alone_enforces(&n);
}

/// The cookie the running `trunk_ingress` (program `id`) believes: the global's place in
/// the object's .rodata (`vouch::VOUCH_COOKIE`), read from the program's .rodata map —
/// as only root, who could load programs anyway, can.
fn believed_cookie(id: u32) -> u32 {
    use object::{Object, ObjectSymbol};
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&sh(&[&["bpftool", "-j"], args].concat()).unwrap()).unwrap()
    };
    let obj = object::File::parse(enforcer::datapath::kernel::OBJECT).unwrap();
    let at = obj
        .symbol_by_name(enforcer_common::vouch::VOUCH_COOKIE)
        .expect("the cookie's symbol")
        .address() as usize;
    let prog = json(&["prog", "show", "id", &id.to_string()]);
    for m in prog["map_ids"].as_array().expect("map ids") {
        let m = m.to_string();
        if json(&["map", "show", "id", &m])["name"] != ".rodata" {
            continue;
        }
        let bytes: Vec<u8> = json(&["map", "dump", "id", &m])[0]["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect();
        return u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    }
    panic!("no .rodata map on program {id}");
}

/// An attacker's XDP program on the trunk (the pre-filter off, so the hook is free)
/// writes `trunk_xdp`'s word for TC in front of frames no rule allows, claiming them
/// for web. TC believes only its own load's cookie: with any other word the frames
/// are judged, and dropped; with the cookie itself — which only root can read — they
/// are delivered, which shows the word does reach TC (so the first row can fail).
#[test]
fn a_word_forged_in_front_of_a_frame_is_not_believed() {
    use enforcer_common::vouch::Vouch;
    use integration_tests::fabric::Fabric;
    let n = node_with_groups("  trunkXdp: false\n", &groups());
    assert_eq!(
        xdp_program(&n.sim.node_ns, "trunk0"),
        None,
        "the hook is free"
    );
    let st = n.sim.status().unwrap();
    let web = st.pods.iter().find(|p| p.name == "web").unwrap();
    let iface = web.interface.clone().expect("web's host interface");
    let host_ifindex = in_netns(&n.sim.node_ns, move || {
        integration_tests::netdev_index(&iface)
    })
    .unwrap()
    .unwrap();
    let cookie = believed_cookie(trunk_ingress_id(&n));
    assert_ne!(cookie, 0, "the daemon set a cookie");
    let mac = |s: &str| s.parse::<enforcer::model::mac::MacAddr>().unwrap().octets();
    let macs = enforcer_common::mac_words(&mac(&n.web.mac), &[0; 6]);
    // UDP to a port nobody listens on: what web sends back (rate-limited ICMP errors)
    // stays far below N, where TCP resets would not.
    let frame = Frame::new(
        mac(FABRIC_MAC),
        mac(&n.web.mac),
        "10.0.9.9",
        &n.web.ipv4,
        L4::Udp {
            sport: 1000,
            dport: 9,
        },
    )
    .tagged(n.web.vlan)
    .bytes();
    let (denied, allowed) = ("drop_no_rule", "allow_flow");
    // The last column: under that forger, also every denied kind (no rule in both
    // families, a VLAN no pod has, the client's address on web's VLAN) is still judged
    // and dropped by TC, and allowed traffic (both families, web's own flow) passes.
    for (what, cookie, counted_as, not_as, every_pod) in [
        (
            "a word without the cookie",
            cookie ^ 0x5a5a_5a5a,
            denied,
            allowed,
            true,
        ),
        ("no cookie at all", 0, denied, allowed, false),
        ("the cookie itself", cookie, allowed, denied, false),
    ] {
        let vouch = Vouch {
            cookie,
            slot: web.slot,
            host_ifindex,
            macs,
        };
        let _forger = in_netns(&n.sim.node_ns, move || Fabric::forge_vouch("trunk0", vouch))
            .unwrap()
            .unwrap();
        let before = |r| counted(&n, Some("web"), r);
        let (was, other_was) = (before(counted_as), before(not_as));
        let sent = send_frames(&n.sim.fabric_ns, "fab0", vec![frame.clone()], N).unwrap();
        assert_eq!(sent, N as u64, "{what}: frames sent");
        n.sim
            .wait_status(&format!("{what}: {N} counted as {counted_as}"), |_| {
                counted(&n, Some("web"), counted_as) >= was + N as u64
            });
        let other = counted(&n, Some("web"), not_as) - other_was;
        assert!(other < N as u64 / 10, "{what}: {other} counted as {not_as}");
        if every_pod {
            tc_alone_enforces(&n);
        }
    }
}
