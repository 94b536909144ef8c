//! `enforcer demo`: the EKS tutorial "Security groups for pods" (shared/seeds) replayed
//! on a simulated node with real programs: four nginx-like pods labelled `role: my-role`
//! get a group that admits all traffic from itself and sends DNS to the cluster group; a
//! real DNS server (dnsmasq, standing in for CoreDNS) runs in a pod carrying the cluster
//! group. `curl my-app` works; once the cluster group's DNS rules are revoked, lookup by
//! name fails while fetching by IP still works. Every verdict is checked: the demo exits
//! non-zero when one is not what the tutorial shows.
//!
//! `--standard`: the same pods in standard mode (POD_SECURITY_GROUP_ENFORCING_MODE), with
//! the node's group beside theirs: they reach an internet host (outside the VPC) through
//! source NAT, seen as the node, and the node's kubelet-style probe of each passes with
//! no rule for it (host-local traffic bypasses groups in standard mode).
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::agents::{curl, dns_server, http_server};
use crate::sim::{SimNode, SimPod, pods_yaml, sim_pod, write_config};

/// The tutorial's namespace and service name.
pub const NS: &str = "my-namespace";
pub const SERVICE: &str = "my-app.my-namespace.svc.cluster.local";

/// The node's own group (standard mode): everything out, nothing in.
const NODE_GROUP: &str = r#",
 {"GroupId":"sg-0node","GroupName":"eks-node-sg",
   "IpPermissions":[],
   "IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}
]}"#;

fn groups(dns_rules: bool) -> String {
    let dns_in = if dns_rules {
        r#"{"IpProtocol":"tcp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-0my-pod-sg","Description":"my_tcp_rule"}]},
           {"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-0my-pod-sg","Description":"my_udp_rule"}]}"#
    } else {
        ""
    };
    format!(
        r#"{{"SecurityGroups":[
 {{"GroupId":"sg-0my-pod-sg","GroupName":"my-pod-security-group",
   "IpPermissions":[{{"IpProtocol":"-1","UserIdGroupPairs":[{{"GroupId":"sg-0my-pod-sg","Description":"my_inbound_self_rule"}}]}}],
   "IpPermissionsEgress":[
     {{"IpProtocol":"-1","UserIdGroupPairs":[{{"GroupId":"sg-0my-pod-sg"}}]}},
     {{"IpProtocol":"tcp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{{"GroupId":"sg-0cluster"}}]}},
     {{"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{{"GroupId":"sg-0cluster"}}]}}]}},
 {{"GroupId":"sg-0cluster","GroupName":"eks-cluster-sg-my-cluster",
   "IpPermissions":[{dns_in}],
   "IpPermissionsEgress":[{{"IpProtocol":"-1","IpRanges":[{{"CidrIp":"0.0.0.0/0"}}]}}]}}
]}}"#
    )
}

/// The tutorial's SecurityGroupPolicies (groups sg-0my-pod-sg and sg-0cluster).
pub const POLICIES: &str = r#"
apiVersion: vpcresources.k8s.aws/v1beta1
kind: SecurityGroupPolicy
metadata:
  name: my-security-group-policy
  namespace: my-namespace
spec:
  podSelector:
    matchLabels:
      role: my-role
  securityGroups:
    groupIds:
      - sg-0my-pod-sg
---
apiVersion: vpcresources.k8s.aws/v1beta1
kind: SecurityGroupPolicy
metadata:
  name: coredns
  namespace: kube-system
spec:
  podSelector:
    matchLabels:
      k8s-app: kube-dns
  securityGroups:
    groupIds:
      - sg-0cluster
"#;

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn verdict(what: &str, ok: bool, expected: bool) -> Result<()> {
    let word = if ok { "works" } else { "fails" };
    let mark = if ok == expected {
        "as expected"
    } else {
        "UNEXPECTED"
    };
    println!("   {what}: {word} ({mark})");
    if ok != expected {
        bail!(
            "{what}: expected it to {}",
            if expected { "work" } else { "fail" }
        );
    }
    Ok(())
}

/// Step 8, continued: `enforcer flows` names the CoreDNS pod's dropped queries (from
/// my-deployment-0), `enforcer explain` says no rule admits them, and `enforcer
/// doctor` names the pods whose DNS is cut, with the fix.
fn why_dropped(bin: &std::path::Path, sim: &SimNode, client_ip: &str) -> Result<()> {
    let state = sim.workdir.join("state");
    let run = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .with_context(|| format!("running enforcer {}", args[0]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    println!("   enforcer flows --pod kube-system/coredns:");
    let events = run(&["flows", "--pod", "kube-system/coredns", "-o", "json"])?;
    let drops: Vec<enforcer::flows::FlowRecord> = events
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &enforcer::flows::FlowRecord| {
            r.reason == "drop_no_rule" && r.remote.starts_with(&format!("{client_ip}:"))
        })
        .collect();
    for r in drops.iter().take(3) {
        println!("     {}", r.line());
    }
    verdict(
        "flows name CoreDNS's dropped queries from my-deployment-0",
        !drops.is_empty(),
        true,
    )?;
    let target = format!("{client_ip}:53/udp");
    println!("   enforcer explain --pod kube-system/coredns --from {target}:");
    let text = run(&["explain", "--pod", "kube-system/coredns", "--from", &target])?;
    print!("{}", indent(&text));
    verdict(
        "explain: DROP, no rule admits DNS from my-pod-security-group",
        text.contains("DROP (drop_no_rule)"),
        true,
    )?;
    println!("   enforcer doctor:");
    let text = run(&["doctor"])?;
    for l in text
        .lines()
        .filter(|l| l.contains("my-deployment-0") || l.starts_with("  fix"))
        .take(2)
    {
        println!("     {l}");
    }
    verdict(
        "doctor: DNS to CoreDNS not allowed both ways",
        text.contains("ERROR [dns-egress] pod my-namespace/my-deployment-0"),
        true,
    )
}

pub fn run(standard: bool) -> Result<()> {
    let bin = crate::enforcer_bin();
    let apps: Vec<SimPod> = (0..4)
        .map(|i| sim_pod(NS, &format!("my-deployment-{i}"), i + 1))
        .collect();
    let coredns = sim_pod("kube-system", "coredns", 9);
    let mut all = apps.clone();
    all.push(coredns.clone());

    step(
        1,
        "Simulated node: VPC fabric, node with trunk0, 4 my-app pods and a CoreDNS pod on branch ENIs",
    );
    let mut sim = SimNode::build(&all, &[])?;
    for p in &all {
        println!(
            "   {}/{}: {} / {}  VLAN {}",
            p.namespace, p.name, p.ipv4, p.ipv6, p.vlan
        );
    }

    step(
        2,
        "Security groups, the SecurityGroupPolicy, and the pods (files the daemon reads)",
    );
    let k8s = format!(
        "{POLICIES}{}",
        pods_yaml(&all, &|p| if p.name == "coredns" {
            "{k8s-app: kube-dns}".into()
        } else {
            "{app: my-app, role: my-role}".into()
        })
    );
    let (all_groups, extra) = if standard {
        (
            groups(true).replace("\n]}", NODE_GROUP),
            "  enforcingMode: standard\n  nodeGroups: [sg-0node]\n",
        )
    } else {
        (groups(true), "")
    };
    let cfg = write_config(&sim, &all_groups, &k8s, extra)?;
    println!(
        "   my-pod-security-group: inbound all from itself; outbound all to itself, TCP+UDP 53 to the cluster group"
    );
    println!("   cluster group: inbound TCP+UDP 53 from my-pod-security-group");

    step(
        3,
        "Real servers: an HTTP server in each my-app pod, dnsmasq (as CoreDNS) answering for my-app",
    );
    for (i, p) in apps.iter().enumerate() {
        let dir = sim.workdir.join(format!("www{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("index.html"),
            format!("<title>Welcome to nginx!</title> served by {}\n", p.name),
        )?;
        let ns = sim.pod_ns(&p.name).to_string();
        http_server(&mut sim, &ns, 80, &dir)?;
        sim.set_resolver(
            &ns,
            &coredns.ipv4,
            &format!("{NS}.svc.cluster.local svc.cluster.local"),
        )?;
    }
    let dns_ns = sim.pod_ns("coredns").to_string();
    dns_server(&mut sim, &dns_ns, &coredns.ipv4, SERVICE, &apps[1].ipv4)?;

    step(
        4,
        "enforcer run (in the node's namespace): load, attach, program the maps",
    );
    sim.start_daemon(&bin, &cfg)?;
    print!("{}", indent(&sim.status()?.render_table()));
    show_pinned_pod(&sim, apps[0].vlan);
    wait_for_servers(&sim, &apps)?;

    let client = sim.pod_ns(&apps[0].name).to_string();
    step(5, "From my-deployment-0: curl my-app");
    let (ok, out) = curl(&sim, &client, "http://my-app");
    println!("   {}", out.trim());
    verdict("curl my-app", ok, true)?;

    let url = format!("http://{}", apps[1].ipv4);
    if standard {
        standard_steps(&mut sim, &apps)?;
    } else {
        step(
            6,
            "Revoke the cluster group's DNS rules (my_tcp_rule, my_udp_rule) and reload (SIGHUP)",
        );
        std::fs::write(sim.workdir.join("groups.json"), groups(false))?;
        sim.reload_daemon()?;
        println!("   applied generation {}", sim.status()?.generation);

        step(7, "From my-deployment-0 again");
        let (ok, out) = curl(&sim, &client, "http://my-app");
        println!("   {}", out.trim());
        verdict("curl my-app (name lookup)", ok, false)?;
        let (ok, out) = curl(&sim, &client, &url);
        println!("   {}", out.trim());
        verdict(&format!("curl {url} (by IP)"), ok, true)?;

        step(
            8,
            "enforcer status: the drops are counted on the CoreDNS pod (its inbound rules said no)",
        );
        print!("{}", indent(&sim.status()?.render_table()));
        let st = sim.status()?;
        let dns = st
            .pods
            .iter()
            .find(|p| p.name == "coredns")
            .context("coredns status")?;
        let dropped = dns.counters.get("drop_no_rule").map(|c| c[0]).unwrap_or(0);
        println!("   DNS queries dropped by CoreDNS's inbound rules: {dropped}");
        if dropped == 0 {
            bail!("expected the revoked DNS rules to drop queries at the CoreDNS pod");
        }
        why_dropped(&bin, &sim, &apps[0].ipv4)?;
    }
    step(
        9,
        "Stop the daemon: the pinned datapath goes on enforcing without it",
    );
    let status = sim.stop_daemon();
    println!("   daemon exit: {status:?}");
    let (ok, out) = curl(&sim, &client, &url);
    println!("   {}", out.trim());
    verdict(&format!("curl {url} (by IP, no daemon running)"), ok, true)?;
    if !standard {
        let (ok, out) = curl(&sim, &client, "http://my-app");
        println!("   {}", out.trim());
        verdict("curl my-app (name lookup, no daemon running)", ok, false)?;
    }

    step(
        10,
        "enforcer uninstall detaches on purpose; namespaces deleted",
    );
    let out = std::process::Command::new(&bin)
        .args(["uninstall", "--config"])
        .arg(&cfg)
        .output()
        .context("running enforcer uninstall")?;
    println!("   {}", String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() {
        bail!(
            "enforcer uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(sim);
    println!("\ndemo: every verdict matched the tutorial");
    Ok(())
}

/// Standard mode's own steps: the internet through source NAT, the node's probe.
fn standard_steps(sim: &mut SimNode, apps: &[SimPod]) -> Result<()> {
    let inet = crate::sim::INTERNET_IPV4;
    step(
        6,
        &format!(
            "From my-deployment-0: an internet host ({inet}, outside the VPC) asks who is calling"
        ),
    );
    let server = format!("{inet}:8080");
    let _whoami = crate::net::whoami_server(&sim.internet_ns, &server)?;
    let client = sim.pod_ns(&apps[0].name).to_string();
    let seen = crate::net::tcp_whoami(&client, &server)?;
    println!(
        "   the internet host saw {} (my-deployment-0 is {}): source NAT to the node's primary address, out of its primary ENI",
        seen.as_deref().unwrap_or("nothing"),
        apps[0].ipv4
    );
    verdict(
        "TCP to the internet, seen as the node",
        seen.is_some_and(|s| s.starts_with(&format!("{}:", crate::sim::NODE_IPV4))),
        true,
    )?;

    step(
        7,
        "From the node: a kubelet-style HTTP probe of each my-app pod (no group has a rule for it)",
    );
    let node = sim.node_ns.clone();
    for p in apps {
        let (ok, _) = curl(sim, &node, &format!("http://{}/", p.ipv4));
        verdict(&format!("probe of {} ({})", p.name, p.ipv4), ok, true)?;
    }

    step(
        8,
        "enforcer status: the probes and DNS counted as host-local, the internet flows as allowed by the node's group",
    );
    // The daemon refreshes its status every 2 s: wait (bounded) for the probes to show.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let (st, host_local) = loop {
        let st = sim.status()?;
        let n: u64 = st
            .pods
            .iter()
            .filter_map(|p| p.counters.get("allow_host_local").map(|c| c[0]))
            .sum();
        if n > 0 || std::time::Instant::now() > deadline {
            break (st, n);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    print!("{}", indent(&st.render_table()));
    println!("   host-local packets: {host_local}");
    if host_local == 0 {
        bail!("expected the probes to be delivered on the node as host-local traffic");
    }
    Ok(())
}

/// What an operator sees with bpftool: the pinned map entry of one pod, fields named
/// through BTF. Informational: a missing bpftool is mentioned, not fatal.
fn show_pinned_pod(sim: &SimNode, vlan: u16) {
    let path = sim.map_pin(enforcer_common::map_names::POD_BY_VLAN);
    let path = path.display().to_string();
    match crate::sim::sh(&["bpftool", "-j", "map", "dump", "pinned", &path]) {
        Ok(out) => {
            let entries: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let entry = entries
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["formatted"]["key"] == vlan as u64);
            if let Some(e) = entry {
                println!("   bpftool map dump pinned {path}  (VLAN {vlan}):");
                println!("   {}", e["formatted"]["value"]);
            }
        }
        Err(e) => println!("   (bpftool not available: {e})"),
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

/// The HTTP servers take a moment to bind; wait (bounded) until each answers by IP.
/// Waits until every app pod's HTTP server answers the first app pod by IP.
pub fn wait_for_servers(sim: &SimNode, apps: &[SimPod]) -> Result<()> {
    let client = sim.pod_ns(&apps[0].name);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for p in apps {
        loop {
            if curl(sim, client, &format!("http://{}", p.ipv4)).0 {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("HTTP server in {} did not answer within 15 s", p.name);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}
