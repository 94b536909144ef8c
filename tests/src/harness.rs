//! Loads the real programs (not attached), programs them through the daemon's own
//! planner, and runs crafted frames through them with BPF_PROG_TEST_RUN.
use aya::programs::{TestRun, TestRunOptions};
use enforcer::config::Config;
use enforcer::datapath::kernel::{Datapath, kernel_node_config};
use enforcer::model::group::GroupCatalog;
use enforcer::model::objects::KubeObjects;
use enforcer::netdev::Iface;
use enforcer::plan::{Memory, Plan};
use enforcer::sources::{ec2, files::Snapshot};
use enforcer_common::Reason;

pub const GW_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdicts.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A branch pod of the test node.
pub struct TestPod {
    pub name: &'static str,
    pub mac: [u8; 6],
    pub ipv4: &'static str,
    pub ipv6: &'static str,
    pub vlan: u16,
}

/// The pod whose host interface is loopback: test_run runs skbs on `lo`, so the pod
/// program sees ifindex 1 and resolves this pod.
pub const CLIENT: TestPod = TestPod {
    name: "client",
    mac: [0x02, 0, 0, 0, 0x0a, 0x01],
    ipv4: "10.0.1.10",
    ipv6: "fd00:10:1::10",
    vlan: 10,
};

pub const SERVER: TestPod = TestPod {
    name: "server",
    mac: [0x02, 0, 0, 0, 0x0a, 0x02],
    ipv4: "10.0.1.11",
    ipv6: "fd00:10:1::11",
    vlan: 11,
};

pub fn node_config() -> Config {
    let mut c: Config = serde_yaml::from_str(
        "node: {trunkInterface: lo, gatewayMac: '02:fa:00:00:00:01', vpcCidrs: [10.0.0.0/16]}",
    )
    .unwrap();
    c.node.host_veth_prefix = "t".into();
    c
}

/// A pod manifest with its branch ENI annotation and labels.
pub fn pod_yaml(p: &TestPod, labels: &str) -> String {
    let mac = p
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    format!(
        "---\nkind: Pod\nmetadata:\n  name: {}\n  namespace: test\n  labels: {labels}\n  annotations:\n    vpc.amazonaws.com/pod-eni: '[{{\"eniId\":\"eni-{}\",\"ifAddress\":\"{mac}\",\"privateIp\":\"{}\",\"ipv6Addr\":\"{}\",\"vlanId\":{}}}]'\n",
        p.name, p.name, p.ipv4, p.ipv6, p.vlan
    )
}

/// Sources parsed from DescribeSecurityGroups JSON and Kubernetes YAML.
pub fn snapshot(groups_json: &str, k8s: &str) -> Snapshot {
    let mut catalog = GroupCatalog::default();
    catalog.add_groups(ec2::parse_security_groups(groups_json, "test").unwrap());
    let mut kube = KubeObjects::default();
    kube.add_documents(k8s, "test").unwrap();
    Snapshot { catalog, kube }
}

pub struct Harness {
    pub dp: Datapath,
    pub mem: Memory,
    pub cfg: Config,
    pub last: Option<Plan>,
    /// The fabric's object, loaded on first use of [`Harness::time_floor`].
    floor: Option<crate::fabric::Fabric>,
}

/// Mean ns per run of `p` over `repeat` runs of `frame`, and its verdict.
fn time_of(p: &mut aya::programs::SchedClassifier, frame: &[u8], repeat: u32) -> (u32, f64) {
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .unwrap();
    (r.return_value, r.duration.as_nanos() as f64)
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_config(node_config())
    }

    /// A harness whose node settings differ from [`node_config`]'s.
    pub fn with_config(cfg: Config) -> Harness {
        let mut dp = Datapath::load(None).expect("load programs");
        dp.set_node_config(&kernel_node_config(&cfg, 1, 1)).unwrap();
        Harness {
            dp,
            mem: Memory::default(),
            cfg,
            last: None,
            floor: None,
        }
    }

    /// Programs the maps from DescribeSecurityGroups JSON and Kubernetes YAML.
    pub fn apply(&mut self, groups_json: &str, k8s: &str) -> &Plan {
        let snap = snapshot(groups_json, k8s);
        self.apply_snapshot(&snap)
    }

    /// Programs the maps from parsed sources (what the daemon holds between changes).
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> &Plan {
        let prefix = self.cfg.node.host_veth_prefix.clone();
        let client_if = enforcer::config::host_veth_name(&prefix, "test", CLIENT.name);
        // The client pod sits on lo (test_run runs skbs there); the others get made-up
        // interfaces, numbered in order of appearance (test_run never delivers to them).
        let others = std::cell::RefCell::new(std::collections::HashMap::<String, u32>::new());
        let iface = |name: &str| {
            let ifindex = if name == client_if {
                1
            } else {
                let mut m = others.borrow_mut();
                let next = 1000 + m.len() as u32;
                *m.entry(name.to_string()).or_insert(next)
            };
            Some(Iface {
                ifindex,
                mac: HOST_MAC,
            })
        };
        // The daemon's own sequence; no interface named here exists, so nothing attaches.
        let applied = enforcer::engine::apply(
            &self.cfg,
            snap,
            &mut self.mem,
            &iface,
            &[],
            &mut self.dp,
            &mut |_| {},
        );
        assert!(applied.errors.is_empty(), "{:?}", applied.errors);
        self.last = Some(applied.plan);
        self.last.as_ref().unwrap()
    }

    pub fn slot(&self, pod: &str) -> u32 {
        self.last
            .as_ref()
            .unwrap()
            .pods
            .iter()
            .find(|p| p.name == pod)
            .map(|p| p.slot)
            .unwrap()
    }

    /// Runs one frame through a program (TC or XDP): (return value, frame out).
    pub fn run(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 64];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        let r = match self.dp.ebpf().program(prog).unwrap() {
            aya::programs::Program::Xdp(p) => p.test_run(opts),
            aya::programs::Program::SchedClassifier(p) => p.test_run(opts),
            other => panic!("{prog}: no test_run for {:?}", other.prog_type()),
        }
        .unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Mean ns per run over `repeat` runs.
    pub fn time(&mut self, prog: &str, frame: &[u8], repeat: u32) -> (u32, f64) {
        time_of(self.dp.program(prog).unwrap(), frame, repeat)
    }

    /// The same for the floor: a trivial TC program (the fabric's, its own object).
    pub fn time_floor(&mut self, frame: &[u8], repeat: u32) -> (u32, f64) {
        self.time_fabric(crate::fabric::FLOOR_PROGRAM, frame, repeat)
    }

    /// The same for one of the fabric object's programs (the floors).
    pub fn time_fabric(&mut self, prog: &str, frame: &[u8], repeat: u32) -> (u32, f64) {
        if self.floor.is_none() {
            self.floor = Some(crate::fabric::Fabric::load_detached().expect("fabric object"));
        }
        let f = self.floor.as_mut().unwrap();
        time_of(f.program(prog).unwrap(), frame, repeat)
    }

    pub fn counter(&self, pod_slot: u32, reason: Reason) -> u64 {
        self.dp
            .counters(pod_slot)
            .unwrap()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c.packets)
            .unwrap_or(0)
    }

    /// Runs `frame` through `prog` and checks the verdict and that exactly one packet was
    /// counted for `reason` on `slot`; `what` says what the case proves.
    pub fn expect(
        &mut self,
        slot: u32,
        prog: &str,
        frame: &[u8],
        want: u32,
        reason: Reason,
        what: &str,
    ) {
        let before = self.counter(slot, reason);
        assert_eq!(self.run(prog, frame).0, want, "{what}: verdict");
        assert_eq!(
            self.counter(slot, reason),
            before + 1,
            "{what}: counted as {reason:?}"
        );
    }

    pub fn flow_count(&self) -> usize {
        self.dp.flows().unwrap().len()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
