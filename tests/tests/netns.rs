//! Real traffic through the real daemon on a simulated node (network namespaces):
//!
//! ```text
//!  [pod ns] eth0 ──veth── vlan<hash> [node ns] trunk0 ──veth── fab0 [fabric ns]
//!  web 10.0.1.11 (VLAN 11), client .12 (12), other .13 (13)   VPC hosts 10.0.2.5/.6
//! ```
//! web may reach TCP 443 and UDP 5353 on 10.0.2.5 and ICMP in 10.0.2.0/24; client may
//! send anything; other has no inbound rule. Each test says in its asserts what it
//! proves, and removes everything it built, also on failure.

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::*;
use integration_tests::sim::{SimNode, SimPod, pods_yaml, sh, sim_pod, tcx_programs, write_config};

#[test]
fn outbound_rules_tcp_udp_icmp_both_families() {
    let n = node();
    let st = n.sim.status().unwrap();
    assert!(
        st.pods.iter().all(|p| p.error.is_none()),
        "{}",
        st.render_table()
    );
    let _s: Vec<_> = [
        "10.0.2.5:443",
        "[fd00:10:2::5]:443",
        "10.0.2.6:443",
        "10.0.2.5:22",
        "10.0.2.5:5353",
        "[fd00:10:2::5]:5353",
        "10.0.2.6:5353",
    ]
    .iter()
    .map(|a| echo_server(&n.sim.fabric_ns, a).unwrap())
    .collect();
    let ns = n.sim.pod_ns("web").to_string();
    assert!(tcp_echo(&ns, "10.0.2.5:443").unwrap(), "tcp v4 allowed");
    assert!(
        tcp_echo(&ns, "[fd00:10:2::5]:443").unwrap(),
        "tcp v6 allowed\n{}",
        n.sim.status().unwrap().render_table()
    );
    assert!(
        !tcp_echo(&ns, "10.0.2.6:443").unwrap(),
        "tcp v4 to a host no rule names"
    );
    assert!(
        !tcp_echo(&ns, "10.0.2.5:22").unwrap(),
        "tcp v4 to a port no rule names"
    );
    assert!(
        udp_echo(&ns, "10.0.2.5:5353").unwrap(),
        "udp v4 allowed, reply by state"
    );
    assert!(
        udp_echo(&ns, "[fd00:10:2::5]:5353").unwrap(),
        "udp v6 allowed"
    );
    assert!(!udp_echo(&ns, "10.0.2.6:5353").unwrap(), "udp v4 denied");
    // Over the MTU: the datagram and its echo travel as IP fragments.
    assert!(
        udp_echo_sized(&ns, "10.0.2.5:5353", 4000).unwrap(),
        "fragmented udp v4"
    );
    assert!(
        udp_echo_sized(&ns, "[fd00:10:2::5]:5353", 4000).unwrap(),
        "fragmented udp v6"
    );
    assert!(
        n.sim.ping(&ns, "10.0.2.6"),
        "icmp echo v4 allowed out, reply by state"
    );
    assert!(n.sim.ping(&ns, "fd00:10:2::6"), "icmpv6 echo allowed out");
    let st = n.sim.status().unwrap();
    let web = st.pods.iter().find(|p| p.name == "web").unwrap();
    assert!(
        web.counters.get("drop_no_rule").map(|c| c[0]).unwrap_or(0) >= 3,
        "{:?}",
        web.counters
    );
    assert!(
        web.counters.get("allow_flow").map(|c| c[0]).unwrap_or(0) > 0,
        "{:?}",
        web.counters
    );
    // Every allowed frame left the trunk tagged with web's VLAN (and no other pod sent).
    assert!(
        n.sim.fabric_frames_on_vlan(n.web.vlan) >= 10,
        "web's frames carry VLAN {}",
        n.web.vlan
    );
    assert_eq!(n.sim.fabric_frames_on_vlan(n.client.vlan), 0);
}

#[test]
fn inbound_rules_and_same_node_pods_checked_on_both_sides() {
    let n = node();
    let (web_ns, client_ns, other_ns) = (
        n.sim.pod_ns("web").to_string(),
        n.sim.pod_ns("client").to_string(),
        n.sim.pod_ns("other").to_string(),
    );
    // Dual-stack: serves v4 and v6.
    let _w = echo_server(&web_ns, "[::]:8080").unwrap();
    let _c4 = echo_server(&client_ns, "0.0.0.0:9000").unwrap();
    // client -> web: client's outbound allows all, web's inbound admits sg-client
    // (a referenced group whose member is the client pod). Delivered on the node, never
    // through the VPC: no frame of either pod reaches the fabric.
    let fabric_before = (
        n.sim.fabric_frames_on_vlan(n.client.vlan),
        n.sim.fabric_frames_on_vlan(n.web.vlan),
    );
    assert!(
        tcp_echo(&client_ns, &v4(&n.web.ipv4, 8080)).unwrap(),
        "client -> web v4"
    );
    assert!(
        tcp_echo(&client_ns, &v6(&n.web.ipv6, 8080)).unwrap(),
        "client -> web v6"
    );
    assert_eq!(
        (
            n.sim.fabric_frames_on_vlan(n.client.vlan),
            n.sim.fabric_frames_on_vlan(n.web.vlan)
        ),
        fabric_before,
        "host-local: not hairpinned through the VPC"
    );
    // other -> web: other's outbound allows all, but web's inbound does not admit it.
    assert!(
        !tcp_echo(&other_ns, &v4(&n.web.ipv4, 8080)).unwrap(),
        "receiver's inbound decides"
    );
    // web -> client:9000: client's inbound admits sg-web, but web's outbound does not
    // allow it.
    assert!(
        !tcp_echo(&web_ns, &v4(&n.client.ipv4, 9000)).unwrap(),
        "sender's outbound decides"
    );
    // ICMP from the VPC: admitted from 10.0.2.5 only.
    assert!(
        n.sim
            .ping_from(&n.sim.fabric_ns, Some("10.0.2.5"), &n.web.ipv4),
        "icmp from 10.0.2.5"
    );
    assert!(
        !n.sim
            .ping_from(&n.sim.fabric_ns, Some("10.0.2.6"), &n.web.ipv4),
        "icmp from 10.0.2.6"
    );
    assert!(
        n.sim
            .ping_from(&n.sim.fabric_ns, Some("fd00:10:2::5"), &n.web.ipv6),
        "icmpv6 from ::5"
    );
    assert!(
        !n.sim
            .ping_from(&n.sim.fabric_ns, Some("fd00:10:2::6"), &n.web.ipv6),
        "icmpv6 from ::6"
    );
    let st = n.sim.status().unwrap();
    let web = st.pods.iter().find(|p| p.name == "web").unwrap();
    assert!(
        web.counters.get("drop_no_rule").map(|c| c[0]).unwrap_or(0) >= 3,
        "{}",
        st.render_table()
    );
}

#[test]
fn strict_mode_checks_traffic_to_the_node() {
    let n = node();
    let _srv = echo_server(&n.sim.node_ns, "10.0.0.10:7000").unwrap();
    // web's outbound allows no traffic to the node; client's allows all.
    assert!(
        !tcp_echo(n.sim.pod_ns("web"), "10.0.0.10:7000").unwrap(),
        "web -> node denied"
    );
    assert!(
        tcp_echo(n.sim.pod_ns("client"), "10.0.0.10:7000").unwrap(),
        "client -> node allowed"
    );
    assert!(
        n.sim.ping(n.sim.pod_ns("client"), "fd00:10::10"),
        "client -> node v6"
    );
    // The node probing a pod is checked against the pod's inbound rules too.
    assert!(
        !n.sim.ping(&n.sim.node_ns, &n.web.ipv4),
        "node -> web icmp not admitted"
    );
}

#[test]
fn revoked_rule_stops_new_flows_but_not_an_established_one() {
    let n = node();
    let mut n = n;
    let _srv = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let ns = n.sim.pod_ns("web").to_string();
    let mut conn = tcp_connect(&ns, "10.0.2.5:443").expect("allowed before the change");
    assert!(exchange(&mut conn));
    let revoked = groups().replace(
        r#""FromPort":443,"ToPort":443"#,
        r#""FromPort":444,"ToPort":444"#,
    );
    std::fs::write(&n.groups_path, revoked).unwrap();
    // The file watch may apply it first; the reload returns once it is applied anyway.
    let g = n.sim.reload_daemon().unwrap();
    assert!(g >= 2, "applied as generation {g}");
    assert!(exchange(&mut conn), "established tracked flow continues");
    assert!(!tcp_echo(&ns, "10.0.2.5:443").unwrap(), "new flow refused");
    drop(conn);
}

#[test]
fn bad_input_fails_only_its_pod_and_uninstall_detaches() {
    let web = sim_pod("shop", "web", 1);
    let ghost = sim_pod("shop", "ghost", 2);
    let crowded = sim_pod("shop", "crowded", 3);
    let broken = sim_pod("shop", "broken", 4);
    let pods = vec![web.clone(), ghost.clone(), crowded.clone(), broken.clone()];
    let mut sim = SimNode::build(&pods, REMOTE).expect("build simulated node");
    let many: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"GroupId":"sg-x{i}"}}"#))
        .collect();
    let groups = groups().replace("\n]}", &format!(",{}\n]}}", many.join(",")));
    let k8s = format!(
        "{}{}{}{}",
        policies(),
        "---\nkind: SecurityGroupPolicy\nmetadata: {name: ghost, namespace: shop}\nspec: {podSelector: {matchLabels: {app: ghost}}, securityGroups: {groupIds: [sg-web, sg-missing]}}\n\
         ---\nkind: SecurityGroupPolicy\nmetadata: {name: crowded, namespace: shop}\nspec: {podSelector: {matchLabels: {app: crowded}}, securityGroups: {groupIds: [sg-x0, sg-x1, sg-x2, sg-x3, sg-x4, sg-x5]}}\n",
        pods_yaml(&pods[..3], &|p| format!("{{app: {}}}", p.name)),
        // A pod-eni annotation that is not valid: this pod, and only it, fails.
        "---\nkind: Pod\nmetadata:\n  name: broken\n  namespace: shop\n  labels: {app: web}\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{\"eniId\":\"eni-b\",\"ifAddress\":\"not-a-mac\",\"privateIp\":\"10.0.1.14\",\"vlanId\":14}]'\n"
    );
    let cfg = write_config(&sim, &groups, &k8s, "").unwrap();
    let bin = enforcer_bin();
    sim.start_daemon(&bin, &cfg).expect("daemon");

    let st = sim.status().unwrap();
    let pod = |n: &str| st.pods.iter().find(|p| p.name == n).unwrap().clone();
    assert_eq!(
        pod("web").state,
        enforcer::status::PodState::Enforced,
        "{}",
        st.render_table()
    );
    let e = pod("ghost").error.unwrap();
    assert!(
        e.contains("InvalidSecurityGroupID.NotFound") && e.contains("sg-missing"),
        "{e}"
    );
    assert_eq!(pod("ghost").state, enforcer::status::PodState::FailClosed);
    assert!(
        pod("crowded")
            .error
            .unwrap()
            .contains("exceed the limit of 5")
    );
    assert!(pod("broken").error.unwrap().contains("ifAddress"));
    // Its branch ENI is unusable, but its interface is known: attached, fail-closed.
    assert_eq!(pod("broken").state, enforcer::status::PodState::FailClosed);

    let _srv = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    assert!(
        tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "good pod enforced as usual"
    );
    assert!(
        !tcp_echo(sim.pod_ns("ghost"), "10.0.2.5:443").unwrap(),
        "fail-closed pod passes nothing"
    );
    assert!(
        !tcp_echo(sim.pod_ns("broken"), "10.0.2.5:443").unwrap(),
        "bad annotation: nothing passes"
    );
    let ghost_drops = sim
        .status()
        .unwrap()
        .pods
        .iter()
        .find(|p| p.name == "ghost")
        .unwrap()
        .counters
        .clone();
    assert!(
        ghost_drops
            .get("drop_fail_closed")
            .map(|c| c[0])
            .unwrap_or(0)
            > 0,
        "{ghost_drops:?}"
    );

    // A file that no longer parses: the last good state stays, and status says why.
    std::fs::write(sim.workdir.join("groups.json"), "{ not json").unwrap();
    sim.reload_daemon().unwrap();
    let st = sim.status().unwrap();
    assert!(
        st.source_errors.iter().any(|e| e.contains("groups.json")),
        "{:?}",
        st.source_errors
    );
    assert!(
        tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "still enforced after bad reload"
    );

    // The operator's view, through the real binary.
    let out = std::process::Command::new(&bin)
        .args(["status", "-o", "json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web_json = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .unwrap();
    assert_eq!(web_json["vlan"], 11);
    assert_eq!(web_json["mode"], "strict");
    assert_eq!(web_json["groups"][0], "sg-web");
    assert!(
        v["alwaysAllowed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "10.0.0.2/32")
    );
    let table = std::process::Command::new(&bin)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("shop/ghost") && table.contains("fail-closed"),
        "{table}"
    );

    assert!(
        table.contains("maps: ") && table.contains("POD_BY_VLAN 3/1024"),
        "{table}\n{v:#}"
    );
    assert_eq!(v["maps"]["FLOWS"][1], enforcer_common::MAX_FLOWS);

    // Operators read the pinned maps with bpftool: BTF gives named fields.
    let out = integration_tests::sim::sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &sim.map_pin("POD_BY_VLAN").display().to_string(),
    ])
    .unwrap();
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web_entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["formatted"]["key"] == 11)
        .unwrap_or_else(|| panic!("no formatted entry for VLAN 11: {out}"));
    assert_eq!(web_entry["formatted"]["value"]["vlan"], 11);
    assert!(
        web_entry["formatted"]["value"]["policy_id"]
            .as_u64()
            .unwrap()
            > 0
    );

    // SIGTERM: clean exit, and the pinned datapath keeps enforcing without a daemon.
    let bpffs = sim.bpffs_dir.clone();
    assert!(sim.map_pin("FLOWS").exists());
    let status = sim.stop_daemon().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(sim.map_pin("FLOWS").exists(), "maps stay pinned");
    assert!(
        tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "allowed traffic still tagged and forwarded with no daemon"
    );
    assert!(
        !tcp_echo(sim.pod_ns("ghost"), "10.0.2.5:443").unwrap(),
        "fail-closed pod still closed with no daemon"
    );
    // Uninstall is the way to detach on purpose.
    let out = std::process::Command::new(&bin)
        .args(["uninstall", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("links/trunk-") && said.contains("links/trunkxdp-") && said.contains("FLOWS"),
        "{said}"
    );
    assert!(!bpffs.exists(), "pins removed by uninstall");
    assert_eq!(
        integration_tests::sim::xdp_program(&sim.node_ns, "trunk0"),
        None,
        "the XDP pre-filter detached"
    );
    assert!(
        !tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "detached: no redirect to the trunk"
    );
    let _ = (&ghost, &crowded, &broken);
}

#[test]
fn a_pod_whose_interface_appears_later_is_enforced_then() {
    let web = sim_pod("shop", "web", 1);
    let mut sim = SimNode::build(std::slice::from_ref(&web), REMOTE).expect("build simulated node");
    // The daemon learns the pod before the CNI has set its interface up.
    sim.disconnect_pod("web").unwrap();
    let k8s = format!(
        "{}{}",
        policies(),
        pods_yaml(std::slice::from_ref(&web), &|_| "{app: web}".into())
    );
    let cfg = write_config(&sim, &groups(), &k8s, "").unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).expect("daemon");
    let st = sim.status().unwrap();
    assert_eq!(
        st.pods[0].state,
        enforcer::status::PodState::Pending,
        "{}",
        st.render_table()
    );
    assert!(st.pods[0].waiting.as_ref().unwrap().contains("not found"));
    assert!(st.pods[0].error.is_none());

    // The kernel's interface event makes the daemon look (a 2 s check is the net). The
    // check can land first by chance: then the pod goes away and comes back again, at
    // most three times, and one of them must have been attached on the event.
    let mut by_event = Vec::new();
    for attempt in 0..3 {
        if attempt > 0 {
            // Gone, and seen gone, before the next look at the log.
            sim.disconnect_pod("web").unwrap();
            sim.wait_status("the pod pending", |st| {
                st.pods[0].state == enforcer::status::PodState::Pending
            });
        }
        let seen = sim.daemon_log().len();
        let g = sim.status().unwrap().generation;
        sim.reconnect_pod("web").unwrap();
        wait_enforced_after(&sim, g);
        let log = sim.daemon_log();
        let said = &log[seen..];
        by_event.push(said.contains("interface event: attaching what changed"));
        if by_event[attempt] {
            break;
        }
        assert!(
            said.contains("interface check: attaching what changed"),
            "{said}"
        );
    }
    assert!(
        by_event.contains(&true),
        "attached on the interface event: {}",
        sim.daemon_log()
    );
    let _srv = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    assert!(
        tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "allowed once attached"
    );
    assert!(
        !tcp_echo(sim.pod_ns("web"), "10.0.2.6:443").unwrap(),
        "and enforced"
    );

    // The CNI re-creates the interface (new ifindex): the daemon notices by itself.
    let g = sim.status().unwrap().generation;
    sim.disconnect_pod("web").unwrap();
    sim.reconnect_pod("web").unwrap();
    // A tick may land between the two steps (pod pending for a moment): wait for a
    // later generation in which the pod is enforced again.
    wait_enforced_after(&sim, g);
    assert!(
        tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "re-attached to the new interface"
    );
    assert!(
        !tcp_echo(sim.pod_ns("web"), "10.0.2.6:443").unwrap(),
        "still enforced"
    );
}

/// Waits for a generation after `g` in which the only pod is enforced.
fn wait_enforced_after(sim: &SimNode, g: u64) {
    sim.wait_status("the pod enforced again", |st| {
        st.generation > g && st.pods[0].state == enforcer::status::PodState::Enforced
    });
}

/// The link-local address Linux gives the host side of a simulated pod's veth (the sim
/// sets its MAC to 02:ee:00:00:vlan).
fn host_veth_link_local(p: &SimPod) -> std::net::Ipv6Addr {
    let mac = [0x02, 0xee, 0, 0, (p.vlan >> 8) as u8, p.vlan as u8];
    enforcer::model::pod::link_local_v6(&enforcer::model::mac::MacAddr::new(mac))
}

/// One TCP echo from inside `ns` to a link-local address over the pod's eth0.
fn tcp_echo_link_local(ns: &str, ip: std::net::Ipv6Addr, port: u16) -> bool {
    integration_tests::sim::in_netns(ns, move || {
        let eth0 = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: a valid NUL-terminated name; the call only reads it.
        let scope = unsafe { libc::if_nametoindex(eth0.as_ptr()) };
        let addr = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, scope));
        match std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(mut c) => exchange(&mut c),
            Err(_) => false,
        }
    })
    .unwrap()
}

#[test]
fn link_local_is_no_way_around_the_groups() {
    // The attack: web may reach TCP 443 on one VPC host only; a node service listening
    // on [::] is reachable on the host veth's link-local address. It must not be.
    // client (egress ::/0 allowed) shows that allowed link-scope traffic still works
    // and stays on the node, neighbour discovery included.
    let n = node();
    let _svc = echo_server(&n.sim.node_ns, "[::]:9999").unwrap();
    let web_ns = n.sim.pod_ns("web").to_string();
    let client_ns = n.sim.pod_ns("client").to_string();
    assert!(
        !tcp_echo_link_local(&web_ns, host_veth_link_local(&n.web), 9999),
        "web reached a node service through a link-local address"
    );
    assert!(
        tcp_echo_link_local(&client_ns, host_veth_link_local(&n.client), 9999),
        "client's rules allow it: delivered on the node"
    );
    assert!(
        counter_reaching(&n.sim, "web", "drop_no_rule", 1) >= 1,
        "web's SYN met its rules"
    );
    assert!(
        counter_reaching(&n.sim, "web", "pass_local", 1) >= 1,
        "web's neighbour discovery passed"
    );
    assert_eq!(
        n.sim.fabric_frames_on_vlan(n.client.vlan),
        0,
        "link-scope traffic never reaches the trunk"
    );
}

/// Sends one Ethernet frame from `ns`'s eth0 through AF_PACKET with a virtio-net header
/// whose `hdr_len` is 0: the kernel then puts only the 14-byte Ethernet header in the
/// skb's linear area and the rest in page fragments (for frames over a page), as
/// AF_PACKET TX rings and trafgen do.
fn send_nonlinear(ns: &str, frame: Vec<u8>) -> Result<(), String> {
    integration_tests::sim::in_netns(ns, move || {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes; every
        // pointer passed is to a live local of the stated size.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let on: libc::c_int = 1;
            let eth0 = std::ffi::CString::new("eth0").unwrap();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = libc::if_nametoindex(eth0.as_ptr()) as i32;
            let mut msg = vec![0u8; 10]; // struct virtio_net_hdr, all zero
            msg.extend_from_slice(&frame);
            let r = if libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of_val(&on) as u32,
            ) != 0
                || libc::bind(
                    fd,
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sll) as u32,
                ) != 0
                || libc::send(fd, msg.as_ptr() as *const libc::c_void, msg.len(), 0)
                    != msg.len() as isize
            {
                Err(format!(
                    "AF_PACKET send: {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                Ok(())
            };
            libc::close(fd);
            r
        }
    })
    .map_err(|e| e.to_string())?
}

#[test]
fn frames_with_headers_outside_the_linear_area_are_enforced() {
    let n = node();
    // Jumbo frames on web's veth and the trunk: a frame over a page is what makes the
    // kernel leave its headers in page fragments.
    for (ns, dev) in [
        (n.sim.pod_ns("web").to_string(), "eth0".to_string()),
        (
            n.sim.node_ns.clone(),
            enforcer::config::host_veth_name("vlan", "shop", "web"),
        ),
        (n.sim.node_ns.clone(), "trunk0".into()),
        (n.sim.fabric_ns.clone(), "fab0".into()),
    ] {
        integration_tests::sim::sh(&["ip", "-n", &ns, "link", "set", &dev, "mtu", "9000"]).unwrap();
    }
    let sink = |addr: &str| {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let ns = n.sim.fabric_ns.clone();
        integration_tests::sim::in_netns(&ns, move || std::net::UdpSocket::bind(addr).unwrap())
            .unwrap()
    };
    let allowed = sink("10.0.2.5:5353");
    let denied = sink("10.0.2.6:5353");
    let host_mac = [0x02, 0xee, 0, 0, 0, n.web.vlan as u8];
    let web_mac = n
        .web
        .mac
        .parse::<enforcer::model::mac::MacAddr>()
        .unwrap()
        .octets();
    let payload = vec![0x5au8; 5000];
    let frame = |dst: [u8; 4]| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(web_mac, host_mac)
            .ipv4([10, 0, 1, 11], dst, 64)
            .udp(40000, 5353)
            .write(&mut f, &payload)
            .unwrap();
        f
    };
    let ns = n.sim.pod_ns("web").to_string();
    send_nonlinear(&ns, frame([10, 0, 2, 5])).unwrap();
    send_nonlinear(&ns, frame([10, 0, 2, 6])).unwrap();
    let mut buf = vec![0u8; 9000];
    allowed.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    denied.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = allowed.recv(&mut buf).expect("allowed datagram delivered");
    assert_eq!(&buf[..got], &payload[..], "delivered whole");
    assert!(denied.recv(&mut buf).is_err(), "denied datagram dropped");
    assert!(
        counter_reaching(&n.sim, "web", "drop_no_rule", 1) >= 1,
        "the denied frame met the rules"
    );
    assert_eq!(
        counter_reaching(&n.sim, "web", "drop_malformed", u64::MAX),
        0,
        "nothing dropped as malformed"
    );
}

/// Programs attached to `ifname`'s TCX ingress in `ns`: (id, name).
#[test]
fn killed_daemon_leaves_no_pod_unfiltered_and_a_new_one_adopts() {
    let (mut n, _srv) = routing_node();
    let web_ns = n.sim.pod_ns("web").to_string();
    let ifaces = hooks();
    let before: Vec<_> = ifaces
        .iter()
        .map(|i| tcx_programs(&n.sim.node_ns, i))
        .collect();
    assert!(before.iter().all(|p| p.len() == 1), "{before:?}");
    let xdp = |sim: &SimNode| integration_tests::sim::xdp_program(&sim.node_ns, "trunk0");
    let xdp_before = xdp(&n.sim).expect("the trunk's XDP pre-filter");
    let web_slot = |sim: &SimNode| {
        sim.status()
            .unwrap()
            .pods
            .iter()
            .find(|p| p.name == "web")
            .unwrap()
            .slot
    };
    let slot_before = web_slot(&n.sim);
    let maps_before = n.sim.status().unwrap().maps;

    let probe = Probe::start(&n.sim);
    std::thread::sleep(std::time::Duration::from_millis(300));
    n.sim.kill_daemon().unwrap();
    // No daemon for a second: the pinned programs go on alone.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let during: Vec<_> = ifaces
        .iter()
        .map(|i| tcx_programs(&n.sim.node_ns, i))
        .collect();
    assert_eq!(
        xdp(&n.sim),
        Some(xdp_before),
        "the XDP pre-filter stays too"
    );
    let cfg = n.sim.workdir.join("enforcer.yaml");
    n.sim.start_daemon(&enforcer_bin(), &cfg).expect("restart");
    std::thread::sleep(std::time::Duration::from_millis(500));
    probe.finish().assert_nothing_lost_or_leaked();

    assert_eq!(
        during, before,
        "the same programs stay attached while no daemon runs"
    );
    // Adopted, not duplicated: one program per interface, now the new daemon's.
    let after: Vec<_> = ifaces
        .iter()
        .map(|i| tcx_programs(&n.sim.node_ns, i))
        .collect();
    for ((i, b), a) in ifaces.iter().zip(&before).zip(&after) {
        assert_eq!(a.len(), 1, "{i}: {a:?}");
        assert_eq!(a[0].1, b[0].1, "{i}: same program");
        assert_ne!(
            a[0].0, b[0].0,
            "{i}: the new daemon's program was swapped in"
        );
    }
    let xdp_after = xdp(&n.sim).expect("the XDP pre-filter after the restart");
    assert_ne!(
        xdp_after, xdp_before,
        "the new daemon's XDP program swapped in"
    );
    let log = n.sim.daemon_log();
    assert!(log.contains("adopted the pinned datapath"), "{log}");
    // Nothing leaked or lost: the pins are one link per hook (the trunk's TC and XDP,
    // the primary ENI, both of each pod's), the pod tables hold the three pods, web
    // kept its slot.
    let pins: Vec<_> = std::fs::read_dir(n.sim.bpffs_dir.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pins.len(), 3 + 3 * 2, "{pins:?}");
    assert!(pins.iter().any(|p| p.starts_with("trunkxdp-")), "{pins:?}");
    let st = n.sim.status().unwrap();
    assert_eq!(st.maps["POD_BY_VLAN"][0], 3, "{:?}", st.maps);
    for (name, [used, _]) in &maps_before {
        if name != "FLOWS" {
            assert_eq!(
                st.maps[name][0], *used,
                "{name}: no entry duplicated or leaked"
            );
        }
    }
    assert_eq!(web_slot(&n.sim), slot_before);
    assert!(
        tcp_echo(&web_ns, "10.0.2.5:443").unwrap(),
        "new flows after the restart"
    );
}

#[test]
fn bad_objects_fail_only_their_pods_and_a_revocation_beside_them_takes_effect() {
    let web = sim_pod("shop", "web", 1);
    let client = sim_pod("shop", "client", 2);
    let other = sim_pod("shop", "other", 3);
    let pods = vec![web.clone(), client.clone(), other.clone()];
    let mut sim = SimNode::build(&pods, REMOTE).expect("build simulated node");
    // sg-other (other's group) has a /33; sg-unused has a protocol "foo" and no pod
    // uses it. A Pod with no name, a second Pod object named web (another VLAN), and a
    // policy with an unknown selector operator in another namespace share the files.
    let bad_groups = |g: String| {
        g.replace(
            r#""GroupId":"sg-other","GroupName":"other",
  "IpPermissions":[],"#,
            r#""GroupId":"sg-other","GroupName":"other",
  "IpPermissions":[{"IpProtocol":"tcp","FromPort":1,"ToPort":2,"IpRanges":[{"CidrIp":"10.0.0.0/33"}]}],"#,
        )
        .replace(
            "\n]}",
            ",\n {\"GroupId\":\"sg-unused\",\"IpPermissions\":[{\"IpProtocol\":\"foo\"}]}\n]}",
        )
    };
    let groups = bad_groups(groups());
    assert!(groups.contains("/33") && groups.contains("sg-unused"));
    let twin = sim_pod("shop", "web", 7);
    let k8s = format!(
        "{}{}{}{}",
        policies(),
        pods_yaml(&pods, &|p| format!("{{app: {}}}", p.name)),
        pods_yaml(std::slice::from_ref(&twin), &|_| "{app: web}".into()),
        "---\nkind: Pod\nmetadata: {namespace: shop}\n---\nkind: SecurityGroupPolicy\nmetadata: {name: odd, namespace: elsewhere}\nspec: {podSelector: {matchExpressions: [{key: a, operator: Near}]}, securityGroups: {groupIds: [sg-web]}}\n"
    );
    let cfg = write_config(&sim, &groups, &k8s, "").unwrap();
    sim.start_daemon(&enforcer_bin(), &cfg).expect("daemon");
    let _srv = echo_server(&sim.fabric_ns, "10.0.2.5:443").unwrap();
    let st = sim.status().unwrap();
    let state = |st: &enforcer::status::NodeStatus, n: &str| {
        st.pods
            .iter()
            .find(|p| p.name == n)
            .map(|p| (p.state, p.error.clone().unwrap_or_default()))
            .unwrap()
    };
    use enforcer::status::PodState::*;
    assert_eq!(state(&st, "web").0, Enforced, "{}", st.render_table());
    assert_eq!(state(&st, "client").0, Enforced);
    let (s, e) = state(&st, "other");
    assert_eq!(s, FailClosed);
    assert!(
        e.contains("sg-other is unusable") && e.contains("/33"),
        "{e}"
    );
    let twins: Vec<_> = st.pods.iter().filter(|p| p.name == "web").collect();
    assert_eq!(twins.len(), 2);
    assert!(
        twins[1]
            .error
            .as_ref()
            .unwrap()
            .contains("a second Pod object")
    );
    assert!(state(&st, "").1.contains("no metadata.name"));
    assert!(
        tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "web is enforced beside the bad objects, from the start"
    );
    assert!(!tcp_echo(sim.pod_ns("other"), "10.0.2.5:443").unwrap());

    // Revoke web's TCP 443 rule in the same file as the bad groups.
    let revoked = groups.replace(
        r#"{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.5/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::5/128"}]},"#,
        "",
    );
    assert_ne!(revoked, groups);
    std::fs::write(sim.workdir.join("groups.json"), &revoked).unwrap();
    sim.reload_daemon().unwrap();
    assert!(
        !tcp_echo(sim.pod_ns("web"), "10.0.2.5:443").unwrap(),
        "the revocation took effect"
    );
    let st = sim.status().unwrap();
    assert_eq!(state(&st, "web").0, Enforced);
    assert_eq!(state(&st, "other").0, FailClosed);
    assert!(
        st.source_errors.iter().all(|e| !e.contains("groups.json")),
        "no file-level error: {:?}",
        st.source_errors
    );

    // And in the Kubernetes file, beside the nameless Pod, the twin and the bad policy:
    // client's policy goes, so client is no longer selected and fails closed.
    assert!(tcp_echo(sim.pod_ns("client"), "10.0.2.5:443").unwrap());
    let client_policy = "---\napiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata: {name: client, namespace: shop}\nspec: {podSelector: {matchLabels: {app: client}}, securityGroups: {groupIds: [sg-client]}}\n";
    assert!(k8s.contains(client_policy));
    std::fs::write(sim.workdir.join("k8s.yaml"), k8s.replace(client_policy, "")).unwrap();
    sim.reload_daemon().unwrap();
    assert!(
        !tcp_echo(sim.pod_ns("client"), "10.0.2.5:443").unwrap(),
        "the policy's removal took effect"
    );
    let st = sim.status().unwrap();
    let (s, e) = state(&st, "client");
    assert_eq!(s, FailClosed);
    assert!(e.contains("no SecurityGroupPolicy"), "{e}");
}

#[test]
fn a_pod_flooding_new_flows_cannot_starve_the_others() {
    // A share of 32 flow entries per pod. web opens 100 connections at once; client
    // (another pod) still opens its own afterwards.
    let n = node_with("  flowsPerPod: 32\n");
    let _srv = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let web_ns = n.sim.pod_ns("web").to_string();
    let opened = integration_tests::sim::in_netns(&web_ns, || {
        let addr: std::net::SocketAddr = "10.0.2.5:443".parse().unwrap();
        let conns: Vec<_> = (0..100)
            .map(|_| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100))
            })
            .collect();
        conns.iter().filter(|c| c.is_ok()).count()
    })
    .unwrap();
    assert!(
        opened <= 32,
        "web opened {opened} connections with a share of 32"
    );
    assert!(opened >= 16, "web's share was usable ({opened})");
    assert!(
        counter_reaching(&n.sim, "web", "drop_pod_flow_limit", 1) >= 1,
        "refusals counted on the flooding pod"
    );
    assert!(
        tcp_echo(n.sim.pod_ns("client"), "10.0.2.5:443").unwrap(),
        "another pod still opens new flows"
    );
    let st = n.sim.status().unwrap();
    let web = st.pods.iter().find(|p| p.name == "web").unwrap();
    assert!(
        web.flows <= 32 && web.flows > 0,
        "web holds {} entries",
        web.flows
    );
}

#[test]
fn standard_mode_pods_need_the_nodes_groups_too() {
    // client's own group allows everything out; the node's group allows TCP 443 to
    // 10.0.2.5 only. Standard mode: both must allow.
    let groups = groups().replace(
        "\n]}",
        r#",
 {"GroupId":"sg-node","IpPermissionsEgress":[{"IpProtocol":"tcp","FromPort":443,"ToPort":443,"IpRanges":[{"CidrIp":"10.0.2.5/32"}]}]}
]}"#,
    );
    let n = node_with_groups(
        "  enforcingMode: standard\n  nodeGroups: [sg-node]\n",
        &groups,
    );
    let st = n.sim.status().unwrap();
    let client = st.pods.iter().find(|p| p.name == "client").unwrap();
    assert_eq!(client.mode, Some(enforcer::config::Mode::Standard));
    assert_eq!(
        client.state,
        enforcer::status::PodState::Enforced,
        "{:?}",
        client.error
    );
    let _s: Vec<_> = ["10.0.2.5:443", "10.0.2.6:443", "10.0.2.5:5353"]
        .iter()
        .map(|a| echo_server(&n.sim.fabric_ns, a).unwrap())
        .collect();
    let ns = n.sim.pod_ns("client").to_string();
    assert!(tcp_echo(&ns, "10.0.2.5:443").unwrap(), "both groups allow");
    assert!(
        !tcp_echo(&ns, "10.0.2.6:443").unwrap(),
        "the node's group does not"
    );
    assert!(
        !udp_echo(&ns, "10.0.2.5:5353").unwrap(),
        "the node's group does not"
    );
    assert!(
        counter_reaching(&n.sim, "client", "drop_no_node_rule", 2) >= 2,
        "drops counted as the node's groups' doing"
    );
}

#[test]
fn the_node_is_on_its_primary_eni_and_the_internet_lies_outside_the_vpc() {
    // The trunk carries only branch pods' tagged frames: the node's own traffic (here to
    // a VPC host and to the internet) leaves through its primary ENI, and no strict-mode
    // pod reaches the internet (its address is not routable there; SNAT is standard
    // mode's, and absent in strict mode).
    let n = node();
    let _vpc = echo_server(&n.sim.fabric_ns, "10.0.2.6:7000").unwrap();
    let _inet = echo_server(&n.sim.internet_ns, "203.0.113.10:7000").unwrap();
    for dst in ["10.0.2.6", "203.0.113.10"] {
        let route = sh(&["ip", "-n", &n.sim.node_ns, "route", "get", dst]).unwrap();
        assert!(
            route.contains("dev eth0"),
            "node → {dst} leaves by the primary ENI: {route}"
        );
    }
    // A branch pod of this node is reached on its host interface, not through the VPC.
    let route = sh(&["ip", "-n", &n.sim.node_ns, "route", "get", "10.0.1.12"]).unwrap();
    assert!(route.contains("dev vlan"), "node → pod: {route}");
    assert!(
        tcp_echo(&n.sim.node_ns, "10.0.2.6:7000").unwrap(),
        "node → VPC host"
    );
    assert!(
        tcp_echo(&n.sim.node_ns, "203.0.113.10:7000").unwrap(),
        "node → internet"
    );
    let client = n.sim.pod_ns("client").to_string();
    assert!(
        !tcp_echo(&client, "203.0.113.10:7000").unwrap(),
        "a strict-mode pod's own address gets no answer from the internet"
    );
    assert!(
        tcp_echo(&client, "10.0.2.6:7000").unwrap(),
        "the same pod reaches the VPC host (its rules allow everything out)"
    );
}
