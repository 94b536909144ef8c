//! Each CPU's copies of pods and flows (eBPF `cache`): they serve, and they never
//! outlive what the daemon changes. Each test pins itself to one CPU, where test_run
//! runs the programs, so that the copies a packet leaves are the ones the next finds
//! (without the pin a test could pass because the copies were on another CPU).
//!
//! Topology: `integration_tests::scenario` (the client pod on `lo`).
use enforcer_common::prog_names::*;
use enforcer_common::vouch::{VOUCH_LEN, Vouch};
use enforcer_common::{
    FLOW_TCP_CLOSING, FLOW_TCP_ESTABLISHED, FlowKey, FlowValue, Reason, map_names, tail,
};
use integration_tests::frames::{Frame, L4};
use integration_tests::harness::*;
use integration_tests::scenario::*;

/// Runs the rest of the test on CPU 0 only.
fn pin_to_one_cpu() {
    pin_to_cpu(0);
}

/// Runs the rest of the test on CPU `cpu` only.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls write only it and the
    // calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin the test to CPU {cpu}"
        );
    }
}

fn dns() -> Vec<u8> {
    out(
        "10.0.2.53",
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    )
    .bytes()
}

/// sg-client without its outbound DNS rule.
fn without_dns() -> String {
    GROUPS.replace(
        r#"{"IpProtocol":"udp","FromPort":53,"ToPort":53,"IpRanges":[{"CidrIp":"10.0.2.53/32"}],"Ipv6Ranges":[{"CidrIpv6":"fd00:10:2::53/128"}]},"#,
        "",
    )
}

/// Opens `frame`'s flow (the rules allow it) and has this CPU copy it (a table hit, a
/// clock tick later: no copy is taken in the tick the flow was opened in).
fn open_and_copy(h: &mut Harness, slot: u32, frame: &[u8]) {
    let open = Reason::AllowPolicy;
    h.expect(
        slot,
        POD_EGRESS,
        frame,
        TC_ACT_REDIRECT,
        open,
        "opens the flow",
    );
    next_tick();
    let hit = Reason::AllowFlow;
    h.expect(
        slot,
        POD_EGRESS,
        frame,
        TC_ACT_REDIRECT,
        hit,
        "a table hit, copied",
    );
}

/// Waits out the coarse clock's tick (at most 10 ms, at HZ 100).
fn next_tick() {
    std::thread::sleep(std::time::Duration::from_millis(20));
}

/// Runs `frame` through `prog` with its full program's tail-call slot emptied, so that
/// only the fast path can pass it (the full path also reads the copies), then puts the
/// full program back. The verdict and the frame out.
fn fast_path_alone(h: &mut Harness, slot: u32, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let full = match slot {
        tail::EGRESS_FULL => POD_EGRESS_FULL,
        _ => TRUNK_INGRESS_FULL,
    };
    let fd = {
        let p: &aya::programs::SchedClassifier =
            h.dp.ebpf().program(full).unwrap().try_into().unwrap();
        p.fd().unwrap().try_clone().unwrap()
    };
    let calls = |h: &mut Harness, set: bool| {
        let mut m: aya::maps::ProgramArray<_> =
            h.dp.ebpf()
                .map_mut(map_names::TAIL_CALLS)
                .unwrap()
                .try_into()
                .unwrap();
        if set {
            m.set(slot, &fd, 0).unwrap();
        } else {
            m.clear_index(&slot).unwrap();
        }
    };
    calls(h, false);
    let out = h.run(prog, frame);
    calls(h, true);
    out
}

/// The word (`enforcer_common::vouch`) XDP left in front of `frame` in `out` (test_run
/// hands the metadata back before the frame), if any.
fn vouch_in_front(out: &[u8], frame: &[u8]) -> Option<Vouch> {
    let meta = out.len().checked_sub(frame.len())?;
    assert_eq!(&out[meta..], frame, "the frame itself unchanged");
    if meta != VOUCH_LEN {
        assert_eq!(meta, 0, "metadata of another length");
        return None;
    }
    // SAFETY: `out` holds VOUCH_LEN bytes before the frame (checked above), and every
    // bit pattern is a Vouch (plain words); read unaligned, as a Vec<u8> gives no more.
    Some(unsafe { std::ptr::read_unaligned(out.as_ptr().cast::<Vouch>()) })
}

/// Removes every flow entry behind the daemon's back (as `bpftool map delete` would).
fn delete_flows_directly(h: &mut Harness) {
    let keys: Vec<FlowKey> = h.dp.flows().unwrap().into_iter().map(|(k, _)| k).collect();
    let mut m: aya::maps::HashMap<_, FlowKey, FlowValue> =
        h.dp.ebpf().map_mut("FLOWS").unwrap().try_into().unwrap();
    for k in keys {
        m.remove(&k).unwrap();
    }
}

#[test]
fn a_copy_serves_until_the_daemon_changes_anything_and_never_past_a_second() {
    pin_to_one_cpu();
    let mut h = setup();
    let slot = h.slot("client");
    let (revoked, granted) = (without_dns(), GROUPS.to_string());
    assert_ne!(revoked, granted, "the DNS rule was found and taken out");
    let flow = Reason::AllowFlow;
    // Each step: what changes first, then the packet's verdict and reason.
    open_and_copy(&mut h, slot, &dns());

    // The rule goes (the daemon writes; EC2 keeps tracked flows): still the flow's.
    h.apply(&revoked, &k8s());
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_REDIRECT,
        flow,
        "tracked flow survives a revoke",
    );
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_REDIRECT,
        flow,
        "and is copied again",
    );

    // Behind the daemon's back the entry goes: the copy still serves — this proves the
    // copies are in use on this CPU — but for at most CACHE_TICKS (a second at most).
    delete_flows_directly(&mut h);
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_REDIRECT,
        flow,
        "served by the copy",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "a second later the copy is gone and the revoked rule decides",
    );

    // The daemon's flush ends every copy at once.
    h.apply(&granted, &k8s());
    open_and_copy(&mut h, slot, &dns());
    h.apply(&revoked, &k8s());
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_REDIRECT,
        flow,
        "copied once more",
    );
    assert_eq!(h.dp.flush_flows(slot).unwrap(), 1);
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_SHOT,
        Reason::DropNoRule,
        "flushed: judged afresh at once, never by a copy",
    );
}

/// Every CPU's copies are a stretch of one array (`enforcer_common::cache`): a copy one
/// CPU took must never serve another, which has not seen the flow's entry (the table
/// may have changed since, behind the daemon's back, as here).
#[test]
fn a_copy_serves_only_the_cpu_that_took_it() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("one CPU: nothing to tell apart");
        return;
    }
    pin_to_one_cpu();
    let mut h = setup();
    let slot = h.slot("client");
    let flow = Reason::AllowFlow;
    open_and_copy(&mut h, slot, &dns());
    // The rule goes (the epoch with it): CPU 0 copies the surviving entry again, then
    // the entry goes behind the daemon's back: only CPU 0's copy still says "allowed".
    h.apply(&without_dns(), &k8s());
    // Each row: the CPU the packet runs on, whether the entry is deleted first, then
    // the packet's verdict and reason.
    let served = (TC_ACT_REDIRECT, flow);
    let judged = (TC_ACT_SHOT, Reason::DropNoRule);
    let rows = [
        (0, false, served, "CPU 0: the table's entry, copied"),
        (0, true, served, "CPU 0: the entry gone, its copy serves"),
        (
            1,
            false,
            judged,
            "CPU 1: no copy of its own: the rules decide",
        ),
        (0, false, served, "CPU 0: its copy still"),
    ];
    for (cpu, delete, (ret, reason), what) in rows {
        pin_to_cpu(cpu);
        if delete {
            delete_flows_directly(&mut h);
        }
        h.expect(slot, POD_EGRESS, &dns(), ret, reason, what);
    }
}

#[test]
fn a_pod_that_turns_fail_closed_is_never_served_from_its_copy() {
    pin_to_one_cpu();
    let mut h = setup();
    let slot = h.slot("client");
    open_and_copy(&mut h, slot, &dns());
    let reply = into(
        "10.0.2.53",
        L4::Udp {
            sport: 53,
            dport: 5353,
        },
    )
    .bytes();
    let hit = Reason::AllowFlow;
    h.expect(
        slot,
        TRUNK_INGRESS,
        &reply,
        TC_ACT_REDIRECT,
        hit,
        "the reply: the pod copied by VLAN",
    );
    // The client's policy now names a group that does not exist: fail-closed.
    let broken = k8s().replace("groupIds: [sg-client]", "groupIds: [sg-missing]");
    let p = h.apply(GROUPS, &broken);
    assert!(p.pods.iter().any(|p| p.error.is_some()), "{:?}", p.pods);
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_SHOT,
        Reason::DropFailClosed,
        "the pod's change ended both copies",
    );
    // From the trunk (the pod by VLAN) as well.
    h.expect(
        slot,
        TRUNK_INGRESS,
        &reply,
        TC_ACT_SHOT,
        Reason::DropFailClosed,
        "the VLAN side's copy too",
    );
}

#[test]
fn tcp_teardown_and_replies_always_reach_the_table() {
    pin_to_one_cpu();
    let mut h = setup();
    let slot = h.slot("client");
    let seg = |l4| out("10.0.2.5", l4).bytes();
    let (sport, dport) = (40000, 443);
    h.expect(
        slot,
        POD_EGRESS,
        &seg(L4::Syn { sport, dport }),
        TC_ACT_REDIRECT,
        Reason::AllowPolicy,
        "SYN",
    );
    let synack = into(
        "10.0.2.5",
        L4::SynAck {
            sport: dport,
            dport: sport,
        },
    )
    .bytes();
    h.expect(
        slot,
        TRUNK_INGRESS,
        &synack,
        TC_ACT_REDIRECT,
        Reason::AllowFlow,
        "SYN-ACK",
    );
    next_tick();
    for _ in 0..3 {
        h.expect(
            slot,
            POD_EGRESS,
            &seg(L4::Ack { sport, dport }),
            TC_ACT_REDIRECT,
            Reason::AllowFlow,
            "ACKs: copied",
        );
    }
    let state = |h: &Harness| h.dp.flows().unwrap()[0].1.state;
    assert_eq!(state(&h), FLOW_TCP_ESTABLISHED);
    // A FIN changes the state: never answered from a copy, always by the table.
    h.expect(
        slot,
        POD_EGRESS,
        &seg(L4::Fin { sport, dport }),
        TC_ACT_REDIRECT,
        Reason::AllowFlow,
        "FIN",
    );
    assert_eq!(
        state(&h),
        FLOW_TCP_CLOSING,
        "the FIN reached the flow table"
    );
}

/// The egress fast path forwards from a flow's copy without the full checks; what an
/// attacker can change in a packet of that flow must send it back to them. Each row: a
/// look-alike of the copied flow's packet, then its verdict and reason.
#[test]
fn look_alikes_of_a_copied_flow_meet_the_full_checks() {
    pin_to_one_cpu();
    let mut h = setup();
    let slot = h.slot("client");
    let udp = L4::Udp {
        sport: 5353,
        dport: 53,
    };
    open_and_copy(&mut h, slot, &dns());
    // With the table's entry gone behind the daemon's back, only the copy can pass
    // anything: every row below that is not the flow's own packet must be refused.
    delete_flows_directly(&mut h);
    h.expect(
        slot,
        POD_EGRESS,
        &dns(),
        TC_ACT_REDIRECT,
        Reason::AllowFlow,
        "the fast path serves the flow",
    );
    // What it forwards is addressed from the pod to the node's gateway (the copy's MAC
    // words, written whole).
    let (ret, sent) = fast_path_alone(&mut h, tail::EGRESS_FULL, POD_EGRESS, &dns());
    assert_eq!(ret, TC_ACT_REDIRECT, "the fast path alone serves the flow");
    assert_eq!(
        sent[..6],
        [0x02, 0xfa, 0, 0, 0, 0x01],
        "to the gateway's MAC"
    );
    assert_eq!(sent[6..12], CLIENT.mac, "from the pod's MAC");
    // The fast path compares the source MAC in two pieces (bytes 6..8, then 8..12):
    // one byte off in either must miss it.
    let with_mac = |i: usize| {
        let mut f = out("10.0.2.53", udp);
        f.src_mac = CLIENT.mac;
        f.src_mac[i] ^= 0x10;
        f.bytes()
    };
    let mut other_mac = out("10.0.2.53", udp);
    other_mac.src_mac = [0x02, 0, 0, 0, 0x66, 0x66];
    let tagged = out("10.0.2.53", udp).tagged(7);
    let other_ip = Frame::new(CLIENT.mac, HOST_MAC, "10.0.1.99", "10.0.2.53", udp);
    let rows: [(&str, Vec<u8>, Reason); 6] = [
        (
            "another MAC, the flow's addresses and ports",
            other_mac.bytes(),
            Reason::DropSpoofMac,
        ),
        (
            "the pod's MAC but its first byte",
            with_mac(0),
            Reason::DropSpoofMac,
        ),
        (
            "the pod's MAC but its second byte",
            with_mac(1),
            Reason::DropSpoofMac,
        ),
        (
            "the pod's MAC but its last byte",
            with_mac(5),
            Reason::DropSpoofMac,
        ),
        (
            "the flow's packet with a VLAN tag in its bytes",
            tagged.bytes(),
            Reason::DropEthertype,
        ),
        (
            "another source address, the flow's ports",
            other_ip.bytes(),
            Reason::DropSpoofIp,
        ),
    ];
    for (what, frame, reason) in rows {
        h.expect(slot, POD_EGRESS, &frame, TC_ACT_SHOT, reason, what);
    }
}

/// IPv6: the fast path serves a copied flow through the VPC, and never one to a
/// link-scope address, which the full path keeps on the node: a copy of such a flow
/// must not send its packets to the trunk.
#[test]
fn ipv6_copies_serve_vpc_flows_and_never_link_scope_ones() {
    pin_to_one_cpu();
    let mdns_rule = r#"{"IpProtocol":"udp","FromPort":5353,"ToPort":5353,"Ipv6Ranges":[{"CidrIpv6":"ff00::/8"}]},"#;
    let groups = GROUPS.replacen(
        r#""IpPermissionsEgress":["#,
        &format!(r#""IpPermissionsEgress":[{mdns_rule}"#),
        1,
    );
    let mut h = Harness::new();
    let p = h.apply(&groups, &k8s());
    assert!(p.pods.iter().all(|p| p.error.is_none()), "{:?}", p.pods);
    let slot = h.slot("client");
    let udp = |dport| L4::Udp { sport: 5353, dport };
    let dns6 = out("fd00:10:2::53", udp(53)).bytes();
    let mdns = out("ff02::fb", udp(5353)).bytes();
    let (policy, flow) = (Reason::AllowPolicy, Reason::AllowFlow);
    open_and_copy(&mut h, slot, &dns6);
    h.expect(
        slot,
        POD_EGRESS,
        &mdns,
        TC_ACT_OK,
        policy,
        "link-scope flow opened, kept on the node",
    );
    next_tick();
    h.expect(slot, POD_EGRESS, &mdns, TC_ACT_OK, flow, "copied");
    // Only copies can pass anything now.
    delete_flows_directly(&mut h);
    h.expect(
        slot,
        POD_EGRESS,
        &dns6,
        TC_ACT_REDIRECT,
        flow,
        "the fast path serves the v6 flow",
    );
    // pod_egress's own fast path, its full program (which reads the copies too) out of
    // reach.
    let (ret, _) = fast_path_alone(&mut h, tail::EGRESS_FULL, POD_EGRESS, &dns6);
    assert_eq!(
        ret, TC_ACT_REDIRECT,
        "pod_egress's fast path alone: the v6 flow"
    );
    let mut other_mac = out("fd00:10:2::53", udp(53));
    other_mac.src_mac = [0x02, 0, 0, 0, 0x66, 0x66];
    h.expect(
        slot,
        POD_EGRESS,
        &other_mac.bytes(),
        TC_ACT_SHOT,
        Reason::DropSpoofMac,
        "another MAC",
    );
    h.expect(
        slot,
        POD_EGRESS,
        &mdns,
        TC_ACT_OK,
        flow,
        "the link-scope flow's copy answers in the full path: still on the node, never the trunk",
    );

    // Inbound: a v6 reply's copy (a flow of its own: a flow's copy holds one direction)
    // serves trunk_ingress's own fast path, and XDP writes its word for it.
    let dns6b = out(
        "fd00:10:2::53",
        L4::Udp {
            sport: 5354,
            dport: 53,
        },
    )
    .bytes();
    open_and_copy(&mut h, slot, &dns6b);
    let reply6 = Frame::new(
        GW_MAC,
        CLIENT.mac,
        "fd00:10:2::53",
        CLIENT.ipv6,
        L4::Udp {
            sport: 53,
            dport: 5354,
        },
    )
    .tagged(CLIENT.vlan)
    .bytes();
    for what in ["the first v6 reply", "a v6 reply: a table hit, copied"] {
        next_tick();
        h.expect(slot, TRUNK_INGRESS, &reply6, TC_ACT_REDIRECT, flow, what);
    }
    delete_flows_directly(&mut h);
    let (ret, got) = fast_path_alone(&mut h, tail::TRUNK_FULL, TRUNK_INGRESS, &reply6);
    assert_eq!(
        ret, TC_ACT_REDIRECT,
        "trunk_ingress's fast path alone: the v6 reply"
    );
    assert_eq!(got[..6], CLIENT.mac, "to the pod's MAC");
    let (ret, got) = h.run(TRUNK_XDP, &reply6);
    assert_eq!(ret, XDP_PASS, "XDP: the v6 copied reply");
    assert!(
        vouch_in_front(&got, &reply6).is_some(),
        "XDP vouches for the v6 copied reply"
    );
}

/// The inbound fast path (`trunk_ingress`) delivers a reply of a copied flow from its
/// copy; what a sender on the VPC side can change in such a frame must send it to the
/// full checks. Each row: a look-alike of the copied reply, its verdict and reason.
#[test]
fn look_alikes_of_a_copied_reply_meet_the_full_checks() {
    pin_to_one_cpu();
    let mut h = setup();
    let slot = h.slot("client");
    let udp = L4::Udp {
        sport: 53,
        dport: 5353,
    };
    open_and_copy(&mut h, slot, &dns());
    let reply = into("10.0.2.53", udp).bytes();
    // The first reply is a table hit (the flow is answered); the next, a tick later,
    // leaves this CPU a copy of the reply direction.
    for what in ["the first reply", "a reply: a table hit, copied"] {
        next_tick();
        h.expect(
            slot,
            TRUNK_INGRESS,
            &reply,
            TC_ACT_REDIRECT,
            Reason::AllowFlow,
            what,
        );
    }
    // With the table's entry gone behind the daemon's back, only the copy can deliver
    // anything: every row below that is not the flow's own reply must be refused.
    delete_flows_directly(&mut h);
    let (ret, got) = fast_path_alone(&mut h, tail::TRUNK_FULL, TRUNK_INGRESS, &reply);
    assert_eq!(ret, TC_ACT_REDIRECT, "the fast path serves the reply");
    assert_eq!(got[..6], CLIENT.mac, "to the pod's MAC");
    assert_eq!(got[6..12], HOST_MAC, "from its host interface's");
    assert_eq!(got[12..14], [0x08, 0x00], "untagged");
    let on_vlan = |vlan: u16| {
        Frame::new(GW_MAC, CLIENT.mac, "10.0.2.53", CLIENT.ipv4, udp)
            .tagged(vlan)
            .bytes()
    };
    let other_dst = Frame::new(GW_MAC, CLIENT.mac, "10.0.2.53", "10.0.1.99", udp)
        .tagged(CLIENT.vlan)
        .bytes();
    let rows: [(&str, Vec<u8>, Reason); 3] = [
        (
            "the reply on another pod's VLAN",
            on_vlan(SERVER.vlan),
            Reason::DropSpoofIp,
        ),
        (
            "the reply on a VLAN no pod has",
            on_vlan(99),
            Reason::DropUnknownVlan,
        ),
        (
            "on the pod's VLAN, to another address, the flow's ports",
            other_dst,
            Reason::DropSpoofIp,
        ),
    ];
    // The trunk's XDP pre-filter passes the copied reply at once, with its word for TC
    // in the metadata: this load's cookie, the pod's slot and interface (lo, 1 here),
    // the MACs TC writes. It still drops the look-alikes it can judge (TC decides
    // whatever it passes).
    let (ret, got) = h.run(TRUNK_XDP, &reply);
    assert_eq!(ret, XDP_PASS, "XDP: the copied reply");
    let v = vouch_in_front(&got, &reply).expect("XDP vouches for the copied reply");
    assert_ne!(v.cookie, 0, "the load's cookie");
    assert_eq!(
        (v.slot, v.host_ifindex),
        (slot, 1),
        "the pod's slot and interface"
    );
    let macs: Vec<u8> = v.macs.iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(
        macs,
        [CLIENT.mac, HOST_MAC].concat(),
        "to the pod, from its host interface"
    );
    for (what, frame, _) in &rows {
        assert_eq!(h.run(TRUNK_XDP, frame).0, XDP_DROP, "XDP: {what}");
    }
    // A frame XDP passes with no copy to go by carries no word: TC judges it alone.
    let new_flow = into(
        "10.0.3.5",
        L4::Syn {
            sport: 50000,
            dport: 8080,
        },
    )
    .bytes();
    let (ret, got) = h.run(TRUNK_XDP, &new_flow);
    assert_eq!(ret, XDP_PASS, "XDP: an allowed new flow");
    assert_eq!(
        got, new_flow,
        "XDP: no word for a frame it found no copy of"
    );
    // With the copies stale (the daemon changed something) and the table's entry gone,
    // XDP does not go by the copy: the reply is a new flow no inbound rule allows.
    h.dp.new_cache_epoch().unwrap();
    assert_eq!(
        h.run(TRUNK_XDP, &reply).0,
        XDP_DROP,
        "XDP: the reply, its copy stale"
    );
    for (what, frame, reason) in rows {
        let counted_on = if reason == Reason::DropUnknownVlan {
            0
        } else if what.contains("another pod's") {
            h.slot("server")
        } else {
            slot
        };
        h.expect(counted_on, TRUNK_INGRESS, &frame, TC_ACT_SHOT, reason, what);
    }
}
