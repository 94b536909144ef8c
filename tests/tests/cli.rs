//! The operator's commands through the real binary, on bad input. No kernel needed.
use std::path::PathBuf;
use std::process::Command;

use integration_tests::enforcer_bin;
use integration_tests::harness::{CLIENT, pod_yaml};

/// A config directory removed when dropped.
struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(name: &str, groups: &str, k8s: &str) -> (Dir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("podsg-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("groups.json"), groups).unwrap();
    std::fs::write(dir.join("k8s.yaml"), k8s).unwrap();
    let cfg = dir.join("enforcer.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node: {{trunkInterface: lo, gatewayMac: '02:00:00:00:00:01'}}\nsecurityGroups: [groups.json]\nkubernetes: [k8s.yaml]\nstateDir: {}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    (Dir(dir), cfg)
}

fn run(args: &[&str], cfg: &PathBuf) -> (bool, String, String) {
    let out = Command::new(enforcer_bin())
        // As many shells have it: expected outcomes must still print no backtrace.
        .env("RUST_BACKTRACE", "1")
        .args(args)
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GROUPS: &str = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#;

fn policy(group: &str) -> String {
    format!(
        "kind: SecurityGroupPolicy\nmetadata: {{name: p, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [{group}]}}}}\n{}",
        pod_yaml(&CLIENT, "{}")
    )
}

#[test]
fn check_passes_a_good_config() {
    let (_d, cfg) = config("good", GROUPS, &policy("sg-1"));
    let (ok, out, err) = run(&["check", "--config"], &cfg);
    // No interface for the pod in this namespace: pending, which is not a failure.
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("test/client") && out.contains("pending"),
        "{out}"
    );
    // check runs the daemon's apply sequence against a recorder: the tables it would
    // write, and how full they would be.
    assert!(out.contains("maps: ALWAYS_V4 "), "{out}");
}

#[test]
fn check_fails_and_names_the_pod_and_group() {
    let (_d, cfg) = config("ghost", GROUPS, &policy("sg-missing"));
    let (ok, out, err) = run(&["check", "--config"], &cfg);
    assert!(!ok);
    assert!(
        out.contains("InvalidSecurityGroupID.NotFound") && out.contains("sg-missing"),
        "{out}"
    );
    assert!(err.contains("would be fail-closed: test/client"), "{err}");
    assert!(
        !err.contains("backtrace"),
        "an expected outcome, not a crash: {err}"
    );
}

#[test]
fn check_names_bad_objects_in_words() {
    let groups = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissionsEgress":[
        {"IpProtocol":"tcp","FromPort":90,"ToPort":80,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#;
    let (_d, cfg) = config("words", groups, &policy("sg-1"));
    let (ok, out, err) = run(&["check", "--config"], &cfg);
    assert!(!ok);
    assert!(out.contains("port range 90..80 is not within"), "{out}");
    assert!(!out.contains("Some("), "no Rust debug text: {out}");
    let (_d, cfg) = config(
        "empty",
        GROUPS,
        &format!(
            "kind: SecurityGroupPolicy\nmetadata: {{name: p, namespace: test}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: []}}}}\n{}",
            pod_yaml(&CLIENT, "{}")
        ),
    );
    let (ok, out, _) = run(&["check", "--config"], &cfg);
    assert!(!ok);
    assert!(
        out.contains("SecurityGroupPolicy test/p selects this pod but is invalid")
            && out.contains("groupIds is empty"),
        "{out}"
    );
    let _ = err;
}

#[test]
fn unreadable_sources_and_config_are_named() {
    let (_d, cfg) = config("broken", "{ not json", &policy("sg-1"));
    let (ok, _, err) = run(&["check", "--config"], &cfg);
    assert!(!ok);
    assert!(
        err.contains("groups.json") && err.contains("not DescribeSecurityGroups output"),
        "{err}"
    );
    assert!(!err.contains("backtrace"), "{err}");

    std::fs::write(&cfg, "node: {trunkInterface: lo, gatewayMac: 'zz'}\n").unwrap();
    let (ok, _, err) = run(&["check", "--config"], &cfg);
    assert!(!ok);
    assert!(err.contains("gatewayMac") && err.contains("zz"), "{err}");
    assert!(!err.contains("acktrace"), "{err}");

    std::fs::write(
        &cfg,
        "node: {trunkInterface: lo, gatewayMac: '02:00:00:00:00:01', tpyo: 1}\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["check", "--config"], &cfg);
    assert!(!ok);
    assert!(err.contains("tpyo"), "{err}");
}

#[test]
fn status_without_a_daemon_says_where_it_looked() {
    let (_d, cfg) = config("nodaemon", GROUPS, &policy("sg-1"));
    let (ok, _, err) = run(&["status", "--config"], &cfg);
    assert!(!ok);
    assert!(
        err.contains("status.json") && err.contains("enforcer run"),
        "{err}"
    );
}

/// deploy/crds.yaml is what `enforcer crds` prints (regenerate it with
/// `enforcer crds > deploy/crds.yaml`), and each document is a CRD of ours.
#[test]
fn the_shipped_crds_are_the_binary_s() {
    let out = std::process::Command::new(integration_tests::enforcer_bin())
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml"))
            .unwrap();
    assert_eq!(printed, shipped, "deploy/crds.yaml is stale");
    let names: Vec<String> = printed
        .split("\n---\n")
        .map(|d| {
            let v: serde_json::Value = serde_yaml::from_str(d).unwrap();
            assert_eq!(v["kind"], "CustomResourceDefinition");
            assert_eq!(v["spec"]["scope"], "Cluster");
            v["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "mirroredsecuritygroups.podsg.io",
            "mirroredprefixlists.podsg.io"
        ]
    );
}
