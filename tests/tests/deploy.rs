//! deploy/: every manifest valid against Kubernetes 1.32's schemas (offline, with
//! kubernetes-validate), and in step with the binary: the env names the DaemonSet sets
//! are ones the daemon reads, the RBAC grants exactly what it watches, the config it
//! mounts is one it accepts, the SecurityGroupPolicy CRD serves what it watches.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of `deploy/<name>`.
fn documents(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(name)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind(docs: &[Value], kind: &str) -> Vec<Value> {
    docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
}

fn env_names(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Proves the manifests are what a 1.32 API server accepts, field names and types
/// included (`--strict`: an unknown or misspelt field fails).
#[test]
fn every_manifest_validates_against_kubernetes_1_32() {
    let files = manifests();
    assert!(files.len() >= 6, "deploy/ has {files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.32", "--strict"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate; `cargo xtask setup` does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    // Each object was looked at (a validator that skipped everything would pass too).
    for f in &files {
        let file = f.file_name().unwrap().to_string_lossy();
        for d in documents(&file) {
            let object = format!(
                "{} passed for resource {}/{}",
                file,
                d["kind"].as_str().unwrap().to_lowercase(),
                d["metadata"]["name"].as_str().unwrap()
            );
            assert!(text.contains(&object), "not validated: {object}\n{text}");
        }
    }
}

/// Proves a setting in the DaemonSet (or the mirror's Deployment) is never silently
/// ignored: each env name is one the binary reads (`enforcer::env`).
#[test]
fn workloads_set_only_env_names_the_daemon_reads() {
    let ds = of_kind(&documents("daemonset.yaml"), "DaemonSet");
    assert_eq!(ds.len(), 1);
    let names = env_names(&ds[0]);
    for needed in [
        enforcer::env::NODE_NAME,
        enforcer::env::ENFORCING_MODE,
        enforcer::env::EXTERNAL_SNAT,
        enforcer::env::EXCLUDE_SNAT_CIDRS,
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "DaemonSet lacks {needed}"
        );
    }
    let mirror = of_kind(&documents("mirror.yaml"), "Deployment");
    assert_eq!(mirror.len(), 1);
    for n in names.iter().chain(&env_names(&mirror[0])) {
        assert!(
            enforcer::env::ALL.contains(&n.as_str()),
            "{n} is set but the enforcer never reads it"
        );
    }
}

/// Proves the DaemonSet is what the issue asks of a node agent: privileged on the host
/// network, the host's bpffs and /run mounted, probes on the daemon's own endpoints and
/// port, requests set, one node at a time.
#[test]
fn the_daemonset_is_a_node_agent_that_survives_its_own_restarts() {
    let ds = &of_kind(&documents("daemonset.yaml"), "DaemonSet")[0];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    let cfg_text = config_text();
    let cfg = enforcer_config(&cfg_text);
    let port: u16 = cfg
        .http_address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(c[probe]["httpGet"]["port"], port, "{probe} port");
    }
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let host_path = |vol: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vol)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_string)
    };
    // The pins and the state dir the config names are the host's, at the same path.
    for dir in [&cfg.bpffs_dir, &cfg.state_dir] {
        let (vol, at) = mounts
            .iter()
            .find(|(_, at)| dir.starts_with(at))
            .unwrap_or_else(|| panic!("{} is not mounted", dir.display()));
        assert_eq!(host_path(vol).as_deref(), Some(at.as_str()), "{vol}");
    }
}

fn config_text() -> String {
    let cm = of_kind(&documents("config.yaml"), "ConfigMap");
    cm[0]["data"]["enforcer.yaml"].as_str().unwrap().to_string()
}

fn enforcer_config(text: &str) -> enforcer::config::Config {
    let dir = std::env::temp_dir().join(format!("podsg-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("enforcer.yaml");
    std::fs::write(&path, text).unwrap();
    let cfg = enforcer::config::Config::load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    cfg.unwrap_or_else(|e| panic!("deploy/config.yaml: {e:#}"))
}

/// Proves the shipped configs are ones the binaries accept (every key known), with the
/// cluster sources on, and that the DaemonSet mounts the ConfigMap where its args look.
#[test]
fn the_shipped_configs_load() {
    let cfg = enforcer_config(&config_text());
    assert!(cfg.kubernetes_api.is_some() && cfg.ec2_api.is_some());
    let ds = &of_kind(&documents("daemonset.yaml"), "DaemonSet")[0];
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(
        args,
        serde_json::json!(["run", "--config", "/etc/podsg/enforcer.yaml"])
    );
    let mirror = of_kind(&documents("mirror.yaml"), "ConfigMap");
    let text = mirror[0]["data"]["mirror.yaml"].as_str().unwrap();
    let m: enforcer::mirror::MirrorConfig = serde_yaml::from_str(text).unwrap();
    assert_eq!(m.lease.name, "podsg-mirror");
    // The Role names the lease the config contends for.
    let role = &of_kind(&documents("mirror.yaml"), "Role")[0];
    assert!(role["rules"].as_array().unwrap().iter().any(|r| {
        r["resourceNames"]
            .as_array()
            .is_some_and(|n| n.contains(&Value::from(m.lease.name.clone())))
    }));
}

/// (group, resource, verb) of every rule of the ClusterRoles bound to `sa`.
fn granted(files: &[&str], sa: &str) -> Vec<(String, String, String)> {
    let docs: Vec<Value> = files.iter().flat_map(|f| documents(f)).collect();
    let bound: Vec<String> = of_kind(&docs, "ClusterRoleBinding")
        .iter()
        .filter(|b| {
            b["subjects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == sa)
        })
        .map(|b| b["roleRef"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut out = Vec::new();
    for role in of_kind(&docs, "ClusterRole") {
        if !bound.iter().any(|b| role["metadata"]["name"] == b.as_str()) {
            continue;
        }
        for rule in role["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.push((
                            g.as_str().unwrap().into(),
                            r.as_str().unwrap().into(),
                            v.as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Proves least privilege: the daemon's service account may get, list and watch
/// exactly the kinds it watches (plus the mirrored kinds when the mirror is
/// installed), and nothing else — no write verb, no other resource.
#[test]
fn rbac_grants_the_daemon_exactly_what_it_watches() {
    for (files, mirrored) in [
        (&["rbac.yaml"][..], false),
        (&["rbac.yaml", "mirror.yaml"][..], true),
    ] {
        let mut want: Vec<(String, String, String)> =
            enforcer::sources::kube_api::watched_resources(mirrored)
                .into_iter()
                .flat_map(|(g, r)| {
                    ["get", "list", "watch"].map(|v| (g.clone(), r.clone(), v.to_string()))
                })
                .collect();
        want.sort();
        assert_eq!(granted(files, "podsg-enforcer"), want, "{files:?}");
    }
}

/// Proves the SecurityGroupPolicy CRD serves the group, version and plural the daemon
/// watches, with AWS's limits on the group list.
#[test]
fn the_sgp_crd_serves_what_the_daemon_watches() {
    let crd = &documents("securitygrouppolicy-crd.yaml")[0];
    let (group, plural) = enforcer::sources::kube_api::watched_resources(false)
        .into_iter()
        .find(|(g, _)| g == "vpcresources.k8s.aws")
        .unwrap();
    assert_eq!(crd["spec"]["group"], group.as_str());
    assert_eq!(crd["spec"]["names"]["plural"], plural.as_str());
    assert_eq!(crd["metadata"]["name"], format!("{plural}.{group}"));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1beta1");
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let ids = &spec["securityGroups"]["properties"]["groupIds"];
    assert_eq!(
        (ids["minItems"].as_u64(), ids["maxItems"].as_u64()),
        (Some(1), Some(16))
    );
    for sel in ["podSelector", "serviceAccountSelector"] {
        assert_eq!(spec[sel]["x-kubernetes-map-type"], "atomic", "{sel}");
    }
}
