//! Changes reach the datapath without a signal, and an operator (or a test) knows when:
//! the watched source files, `enforcer reload` (the control socket, answering once the
//! new generation is applied), live `enforcer status`, and SIGHUP as before.

use integration_tests::enforcer_bin;
use integration_tests::net::*;
use integration_tests::shop::*;

fn enforcer(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(enforcer_bin())
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_changed_file_is_enforced_without_a_signal_and_reload_says_when() {
    let mut n = node();
    let _srv = echo_server(&n.sim.fabric_ns, "10.0.2.5:443").unwrap();
    let client = n.sim.pod_ns("client").to_string();
    assert!(
        tcp_echo(&client, "10.0.2.5:443").unwrap(),
        "client's group allows it"
    );
    let g = n.sim.status().unwrap().generation;

    // Revoke client's outbound rules by editing the file, as an operator or a ConfigMap
    // update would: no SIGHUP, no reload.
    let revoked = groups().replace(
        r#""IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}],"Ipv6Ranges":[{"CidrIpv6":"::/0"}]}]},
 {"GroupId":"sg-other""#,
        r#""IpPermissionsEgress":[]},
 {"GroupId":"sg-other""#,
    );
    assert_ne!(revoked, groups(), "the edit changes client's group");
    let tmp = n.groups_path.with_extension("tmp");
    std::fs::write(&tmp, &revoked).unwrap();
    std::fs::rename(&tmp, &n.groups_path).unwrap();
    n.sim
        .wait_status("the edit picked up", |st| st.generation > g);
    assert!(
        !tcp_echo(&client, "10.0.2.5:443").unwrap(),
        "revoked: no new flow"
    );

    // `enforcer reload` answers once applied, with the generation.
    let state = n.sim.workdir.join("state").display().to_string();
    let before = n.sim.status().unwrap().generation;
    let (ok, out) = enforcer(&["reload", "--state-dir", &state]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "generation {} applied: 3 pods, 3 enforced",
            before + 1
        )),
        "{out}"
    );
    // A source that can't be read: the last good state stays, and reload says so (exit 1).
    std::fs::write(&n.groups_path, "{ not json").unwrap();
    let (ok, out) = enforcer(&["reload", "--state-dir", &state]);
    assert!(!ok && out.contains("source error"), "{out}");
    assert!(!tcp_echo(&client, "10.0.2.5:443").unwrap(), "still revoked");

    // Live status: the counters of the refused connections, read from the maps now.
    let (ok, out) = enforcer(&["status", "--state-dir", &state, "-o", "json"]);
    assert!(ok, "{out}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let client_st = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client")
        .unwrap();
    assert!(
        client_st["counters"]["drop_no_rule"][0].as_u64().unwrap() >= 2,
        "{client_st}"
    );

    // SIGHUP still re-reads.
    std::fs::write(&n.groups_path, groups()).unwrap();
    n.sim.signal_reload().unwrap();
    assert!(tcp_echo(&client, "10.0.2.5:443").unwrap(), "restored");
}
