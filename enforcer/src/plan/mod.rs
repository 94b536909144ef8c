//! Sources -> each pod's outcome -> the kernel's desired state and every pod's status.
//! Pure: interfaces are looked up through a function so tests (and test_run, on
//! loopback) can supply them.
//!
//! `plan_pod` decides one pod ([`PodOutcome`]); `plan` resolves every pod's groups and
//! claims first (they depend on each other), then folds the outcomes into the kernel
//! state. Status is derived from the outcomes.
pub mod cache;
pub mod desired;
mod error;
mod pod;

use std::collections::{BTreeMap, HashSet};

pub use error::PodError;
pub use pod::{PodOutcome, PodPlan};

use crate::config::Config;
use crate::datapath::state::KernelState;
pub use crate::memory::Memory;
use crate::model::group::GroupCatalog;
use crate::netdev::Iface;
use crate::policy::compile::Peers;
use crate::policy::resolve::{group_error, resolve_pods};
use crate::sources::files::Snapshot;
use crate::status::PodStatus;

/// What an apply decided. The kernel's desired state it leads to is `Memory::desired`.
pub struct Plan {
    /// One outcome per Pod object (and per nameless one), in source order with the
    /// pods that held their VLAN, MAC and addresses first.
    pub outcomes: Vec<PodPlan>,
    pub pods: Vec<PodStatus>,
    /// Slots handed out in this plan: their counters must start from zero.
    pub new_slots: Vec<u32>,
    /// Host-side interfaces of branch pods, to attach to.
    pub interfaces: Vec<String>,
}

/// Members of groups on this node: its pods by the groups they carry, and the node's
/// primary addresses for the node's groups (its primary ENI carries them, so a rule
/// naming one admits kubelet probes and the node's own traffic). Referenced groups
/// include them (SPEC §3).
pub fn local_members(
    cfg: &Config,
    resolved: &[crate::policy::resolve::Resolved],
) -> BTreeMap<String, Vec<std::net::IpAddr>> {
    let mut local: BTreeMap<String, Vec<std::net::IpAddr>> = BTreeMap::new();
    for r in resolved.iter().filter(|r| r.error.is_none()) {
        let Some(eni) = &r.eni else { continue };
        for g in &r.groups {
            let m = local.entry(g.clone()).or_default();
            m.extend(eni.ipv4.map(std::net::IpAddr::V4));
            m.extend(eni.ipv6.map(std::net::IpAddr::V6));
        }
    }
    for g in &cfg.node.node_groups {
        let m = local.entry(g.clone()).or_default();
        m.extend(cfg.node.primary_ipv4);
        m.extend(cfg.node.primary_ipv6);
    }
    local
}

pub fn plan(
    cfg: &Config,
    snap: &Snapshot,
    mem: &mut Memory,
    iface: &dyn Fn(&str) -> Option<Iface>,
) -> Plan {
    let mut resolved = resolve_pods(
        &snap.kube,
        &snap.catalog,
        &cfg.node.node_groups,
        cfg.node.unmatched_pods,
        cfg.node.quotas.groups_per_pod,
    );
    if cfg.node.freeze_pod_groups {
        freeze_groups(&mut resolved, &snap.catalog, mem);
    }
    mem.claims = crate::claims::settle(&mut resolved, &mem.claims, &cfg.always_allowed());

    let local = local_members(cfg, &resolved);
    let peers = Peers {
        catalog: &snap.catalog,
        local: &local,
    };

    // Every group list a pod may need; cached policies of others (or whose inputs
    // changed) leave the desired state before new ones are added.
    let mut wanted: HashSet<Vec<String>> = resolved
        .iter()
        .filter(|r| r.eni.is_some() && r.error.is_none())
        .map(|r| r.groups.clone())
        .collect();
    wanted.insert(cfg.node.node_groups.clone());
    let round = mem.cache.begin(
        &peers,
        &cfg.node.quotas,
        &wanted,
        &mut mem.ids,
        &mut mem.desired,
    );

    let mut ctx = pod::Ctx {
        cfg,
        peers: &peers,
        iface,
        mem,
        round,
        new_slots: Vec::new(),
    };
    let mut outcomes: Vec<PodPlan> = snap.kube.bad_pods.iter().map(PodPlan::bad_object).collect();
    outcomes.extend(resolved.into_iter().map(|r| pod::plan_pod(&mut ctx, r)));
    let new_slots = std::mem::take(&mut ctx.new_slots);
    mem.cache.end(&mut mem.ids, &mut mem.desired);

    let mut fresh = KernelState::default();
    fresh.add_always(&cfg.always_allowed());
    fresh.add_destinations(&cfg.destinations());
    let mut interfaces = Vec::new();
    for o in &outcomes {
        if let Some(entry) = o.outcome.entry() {
            fresh.add_pod(*entry);
            interfaces.extend(o.details.interface.clone());
        }
    }
    mem.desired.set_small_tables(fresh);
    let live: std::collections::HashSet<String> = outcomes
        .iter()
        .filter(|o| o.details.slot != 0)
        .map(|o| o.key())
        .collect();
    mem.slots.retain(&|k| live.contains(k));
    let pods: HashSet<String> = snap.kube.pods.iter().map(|p| p.key()).collect();
    let present = |k: &String| pods.contains(k);
    mem.modes.retain(|k, _| present(k));
    mem.frozen_groups.retain(|k, _| present(k));
    Plan {
        pods: outcomes.iter().map(PodPlan::status).collect(),
        outcomes,
        new_slots,
        interfaces,
    }
}

/// AWS's behaviour: a pod keeps the groups it was first given, whatever policies say
/// later. The groups' rules still follow changes (they are the same groups).
fn freeze_groups(
    resolved: &mut [crate::policy::resolve::Resolved],
    catalog: &GroupCatalog,
    mem: &mut Memory,
) {
    for r in resolved.iter_mut().filter(|r| r.eni.is_some()) {
        let key = r.pod.key();
        match mem.frozen_groups.get(&key) {
            Some(groups) => {
                r.groups = groups.clone();
                r.error = groups.iter().find_map(|g| group_error(catalog, g));
            }
            None if r.error.is_none() => {
                mem.frozen_groups.insert(key, r.groups.clone());
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, host_veth_name};
    use crate::model::objects::KubeObjects;
    use crate::sources::ec2::parse_security_groups;
    use crate::status::PodState;

    const GROUPS: &str = r#"{"SecurityGroups":[
        {"GroupId":"sg-a","IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]},
        {"GroupId":"sg-b","IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"IpRanges":[{"CidrIp":"10.0.0.0/8"}]}]}]}"#;

    fn pod(name: &str, vlan: u16) -> String {
        format!(
            "---\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"ifAddress\":\"02:00:00:00:00:{vlan:02x}\",\"privateIp\":\"10.0.1.{vlan}\",\"vlanId\":{vlan}}}]'\n"
        )
    }

    fn snapshot(group: &str, pods: &[(&str, u16)]) -> Snapshot {
        let mut catalog = GroupCatalog::default();
        catalog.add_groups(parse_security_groups(GROUPS, "t").unwrap());
        let mut kube = KubeObjects::default();
        let mut yaml = format!(
            "kind: SecurityGroupPolicy\nmetadata: {{name: p, namespace: ns}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [{group}]}}}}\n"
        );
        for (n, v) in pods {
            yaml.push_str(&pod(n, *v));
        }
        kube.add_documents(&yaml, "t").unwrap();
        Snapshot { catalog, kube }
    }

    fn config(extra: &str) -> Config {
        serde_yaml::from_str(&format!(
            "node: {{trunkInterface: t, gatewayMac: '02:00:00:00:00:01'{extra}}}"
        ))
        .unwrap()
    }

    fn any_iface(_: &str) -> Option<Iface> {
        Some(Iface {
            ifindex: 7,
            mac: [2, 0, 0, 0, 0, 9],
        })
    }

    #[test]
    fn groups_follow_policy_changes_unless_frozen() {
        for (freeze, want) in [(false, "sg-b"), (true, "sg-a")] {
            let cfg = config(&format!(", freezePodGroups: {freeze}"));
            let mut mem = Memory::default();
            plan(&cfg, &snapshot("sg-a", &[("p1", 11)]), &mut mem, &any_iface);
            let p = plan(&cfg, &snapshot("sg-b", &[("p1", 11)]), &mut mem, &any_iface);
            assert_eq!(p.pods[0].groups, vec![want], "freeze {freeze}");
            assert_eq!(p.pods[0].state, PodState::Enforced);
        }
    }

    #[test]
    fn mode_is_fixed_when_a_pod_is_first_seen() {
        let mut mem = Memory::default();
        plan(
            &config(""),
            &snapshot("sg-a", &[("old", 11)]),
            &mut mem,
            &any_iface,
        );
        let p = plan(
            &config(", enforcingMode: standard, nodeGroups: [sg-b]"),
            &snapshot("sg-a", &[("old", 11), ("new", 12)]),
            &mut mem,
            &any_iface,
        );
        let old = p.pods.iter().find(|p| p.name == "old").unwrap();
        let new = p.pods.iter().find(|p| p.name == "new").unwrap();
        assert_eq!(old.mode, Some(Mode::Strict));
        assert_eq!(old.state, PodState::Enforced);
        assert_eq!(new.mode, Some(Mode::Standard));
        assert_eq!(new.state, PodState::Enforced, "{:?}", new.error);
        let entry = |slot| {
            mem.desired
                .state
                .pods_by_vlan
                .values()
                .find(|e| e.slot == slot)
                .unwrap()
        };
        assert_eq!(
            entry(old.slot).node_policy_id,
            0,
            "strict: only its own groups"
        );
        let node = entry(new.slot).node_policy_id;
        assert!(
            node != 0 && node != entry(new.slot).policy_id,
            "standard: the node's too"
        );
    }

    #[test]
    fn standard_mode_without_usable_node_groups_fails_closed() {
        for (node_groups, want) in [
            ("", "node.nodeGroups is empty"),
            (
                ", nodeGroups: [sg-gone]",
                "The security group 'sg-gone' does not exist",
            ),
        ] {
            let cfg = config(&format!(", enforcingMode: standard{node_groups}"));
            let p = plan(
                &cfg,
                &snapshot("sg-a", &[("p", 11)]),
                &mut Memory::default(),
                &any_iface,
            );
            assert_eq!(p.pods[0].state, PodState::FailClosed);
            let e = p.pods[0].error.clone().unwrap();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn duplicate_vlan_or_address_fails_the_second_pod() {
        let mut mem = Memory::default();
        // pod() derives the IP from the VLAN: same VLAN, same IP.
        let p = plan(
            &config(""),
            &snapshot("sg-a", &[("a", 11), ("b", 11)]),
            &mut mem,
            &any_iface,
        );
        assert_eq!(p.pods[0].state, PodState::Enforced);
        assert_eq!(p.pods[1].state, PodState::FailClosed);
        let e = p.pods[1].error.as_ref().unwrap();
        assert!(e.contains("ns/a"), "{e}");
        // The first pod keeps its VLAN entry; the second is reachable by interface only.
        assert_eq!(mem.desired.state.pods_by_vlan[&11].slot, p.pods[0].slot);
        assert_eq!(mem.desired.state.pods_by_vlan.len(), 1);
    }

    /// A pod manifest with explicit ENI fields (MAC byte, IP octet, VLAN).
    fn pod_eni(name: &str, mac: u8, ip: u8, vlan: u16) -> String {
        format!(
            "---\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"ifAddress\":\"02:00:00:00:01:{mac:02x}\",\"privateIp\":\"10.0.1.{ip}\",\"vlanId\":{vlan}}}]'\n"
        )
    }

    fn snapshot_yaml(yaml: &str) -> Snapshot {
        let mut catalog = GroupCatalog::default();
        catalog.add_groups(parse_security_groups(GROUPS, "t").unwrap());
        let mut kube = KubeObjects::default();
        kube.add_documents(
            &format!("kind: SecurityGroupPolicy\nmetadata: {{name: p, namespace: ns}}\nspec: {{podSelector: {{}}, securityGroups: {{groupIds: [sg-a]}}}}\n{yaml}"),
            "t",
        )
        .unwrap();
        Snapshot { catalog, kube }
    }

    fn state_of<'a>(p: &'a Plan, name: &str) -> Vec<&'a PodStatus> {
        p.pods.iter().filter(|s| s.name == name).collect()
    }

    #[test]
    fn clashes_fail_the_newcomer_and_name_the_incumbent() {
        let cfg = config(", vpcCidrs: [10.0.0.0/16]");
        let mut mem = Memory::default();
        let first = plan(
            &cfg,
            &snapshot_yaml(&pod_eni("old", 1, 11, 11)),
            &mut mem,
            &any_iface,
        );
        assert_eq!(first.pods[0].state, PodState::Enforced);
        // Newcomers listed *before* the incumbent, each clashing on one thing.
        let yaml = [
            pod_eni("same-mac", 1, 12, 12),
            pod_eni("same-vlan", 2, 13, 11),
            pod_eni("same-ip", 3, 11, 14),
            pod_eni("old", 1, 11, 11),
            pod_eni("resolver", 4, 0, 15).replace("10.0.1.0", "10.0.0.2"),
        ]
        .concat();
        // Interfaces of newcomers missing: a clash is found while they wait too.
        let only_old = |n: &str| {
            (n == host_veth_name("vlan", "ns", "old")).then_some(Iface {
                ifindex: 7,
                mac: [2, 0, 0, 0, 0, 9],
            })
        };
        let p = plan(&cfg, &snapshot_yaml(&yaml), &mut mem, &only_old);
        assert_eq!(
            state_of(&p, "old")[0].state,
            PodState::Enforced,
            "incumbent keeps working"
        );
        for (name, what) in [
            (
                "same-mac",
                "MAC 02:00:00:00:01:01 is already used by pod ns/old",
            ),
            ("same-vlan", "VLAN 11 is already used by pod ns/old"),
            ("same-ip", "address 10.0.1.11 is already used by pod ns/old"),
            ("resolver", "address 10.0.0.2 is always-allowed"),
        ] {
            let e = state_of(&p, name)[0].error.clone().unwrap_or_default();
            assert!(e.contains(what), "{name}: {e}");
        }
        assert_eq!(
            mem.desired.state.pods_by_vlan[&11].slot,
            state_of(&p, "old")[0].slot
        );
    }

    #[test]
    fn a_second_pod_object_with_the_same_name_is_ignored() {
        let cfg = config("");
        let mut mem = Memory::default();
        let yaml = [pod_eni("web", 1, 11, 11), pod_eni("web", 2, 12, 12)].concat();
        let p = plan(&cfg, &snapshot_yaml(&yaml), &mut mem, &any_iface);
        let web = state_of(&p, "web");
        assert_eq!(web.len(), 2);
        assert_eq!(web[0].state, PodState::Enforced);
        assert_eq!(web[0].vlan, Some(11), "the first object is the pod");
        assert_eq!(web[1].state, PodState::FailClosed);
        assert!(
            web[1]
                .error
                .as_ref()
                .unwrap()
                .contains("a second Pod object named ns/web")
        );
        assert_eq!(
            mem.desired.state.pods_by_vlan.len(),
            1,
            "the duplicate enters no table"
        );
        // Next time the incumbent comes first whatever the order.
        let yaml = [pod_eni("web", 2, 12, 12), pod_eni("web", 1, 11, 11)].concat();
        let p = plan(&cfg, &snapshot_yaml(&yaml), &mut mem, &any_iface);
        let web = state_of(&p, "web");
        assert_eq!((web[0].state, web[0].vlan), (PodState::Enforced, Some(11)));
    }

    #[test]
    fn bad_objects_fail_only_what_depends_on_them() {
        let groups = r#"{"SecurityGroups":[
            {"GroupId":"sg-a","IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]},
            {"GroupId":"sg-bad","IpPermissions":[{"IpProtocol":"foo"}]},
            {"GroupId":"sg-unused-bad","IpPermissions":[{"IpProtocol":"tcp","FromPort":1,"ToPort":2,"IpRanges":[{"CidrIp":"10.0.0.0/33"}]}]}]}"#;
        let mut catalog = GroupCatalog::default();
        catalog.add_groups(parse_security_groups(groups, "t").unwrap());
        let mut kube = KubeObjects::default();
        let policies = "
kind: SecurityGroupPolicy
metadata: {name: good, namespace: ns}
spec: {podSelector: {matchLabels: {app: good}}, securityGroups: {groupIds: [sg-a]}}
---
kind: SecurityGroupPolicy
metadata: {name: uses-bad, namespace: ns}
spec: {podSelector: {matchLabels: {app: bad-group}}, securityGroups: {groupIds: [sg-bad]}}
---
kind: SecurityGroupPolicy
metadata: {name: bad-groups, namespace: ns}
spec: {podSelector: {matchLabels: {app: bad-policy}}, securityGroups: {groupIds: not-a-list}}
---
kind: SecurityGroupPolicy
metadata: {name: empty, namespace: ns}
spec: {podSelector: {matchLabels: {app: empty}}, securityGroups: {groupIds: []}}
---
kind: SecurityGroupPolicy
metadata: {name: bad-selector, namespace: other}
spec: {podSelector: {matchExpressions: [{key: a, operator: Bogus}]}, securityGroups: {groupIds: [sg-a]}}
---
kind: Pod
metadata: {namespace: ns}
";
        let labelled = |name: &str, ns: &str, app: &str, n: u8| {
            pod_eni(name, n, n, n as u16).replace(
                "namespace: ns",
                &format!("namespace: {ns}\n  labels: {{app: {app}}}"),
            )
        };
        let yaml = [
            policies.to_string(),
            labelled("good", "ns", "good", 1),
            labelled("bad-group", "ns", "bad-group", 2),
            labelled("bad-policy", "ns", "bad-policy", 3),
            labelled("empty", "ns", "empty", 4),
            labelled("victim", "other", "good", 5),
        ]
        .concat();
        kube.add_documents(&yaml, "t").unwrap();
        let snap = Snapshot { catalog, kube };
        let p = plan(&config(""), &snap, &mut Memory::default(), &any_iface);
        let one = |n: &str| state_of(&p, n)[0].clone();
        assert_eq!(
            one("good").state,
            PodState::Enforced,
            "{:?}",
            one("good").error
        );
        for (name, what) in [
            (
                "bad-group",
                "security group sg-bad is unusable: security group sg-bad: inbound permission 0: IpProtocol \"foo\"",
            ),
            (
                "bad-policy",
                "SecurityGroupPolicy ns/bad-groups selects this pod but is invalid: spec.securityGroups",
            ),
            ("empty", "groupIds is empty"),
            (
                "victim",
                "SecurityGroupPolicy other/bad-selector is invalid",
            ),
        ] {
            assert_eq!(one(name).state, PodState::FailClosed, "{name}");
            let e = one(name).error.unwrap();
            assert!(e.contains(what), "{name}: {e}");
        }
        let unnamed = state_of(&p, "");
        assert_eq!(unnamed.len(), 1);
        assert!(
            unnamed[0]
                .error
                .as_ref()
                .unwrap()
                .contains("no metadata.name")
        );
    }

    #[test]
    fn a_deleted_pod_leaves_no_state() {
        let cfg = config("");
        let mut mem = Memory::default();
        let before = plan(
            &cfg,
            &snapshot("sg-b", &[("p1", 11), ("p2", 12)]),
            &mut mem,
            &any_iface,
        );
        assert!(mem.desired.state.pods_by_vlan.contains_key(&12));
        let after = plan(&cfg, &snapshot("sg-b", &[("p1", 11)]), &mut mem, &any_iface);
        assert!(!mem.desired.state.pods_by_vlan.contains_key(&12));
        assert_eq!(after.pods.len(), 1);
        assert!(!mem.modes.contains_key("ns/p2"));
        // Its counter slot is free again, and a new pod gets it with fresh counters.
        let again = plan(
            &cfg,
            &snapshot("sg-b", &[("p1", 11), ("p3", 13)]),
            &mut mem,
            &any_iface,
        );
        let p3 = again.pods.iter().find(|p| p.name == "p3").unwrap();
        assert_eq!(p3.slot, before.pods[1].slot);
        assert!(again.new_slots.contains(&p3.slot));
    }
}
