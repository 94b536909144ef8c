//! A local EC2 (moto_server) in a simulated node's namespace, driven through the AWS
//! CLI as an operator would: the EC2 API the daemon and the mirror read.
use std::time::{Duration, Instant};

use crate::sim::SimNode;

/// The environment the SDK (daemon, mirror) needs to reach it: dummy credentials, no
/// instance metadata.
pub const SDK_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub struct Moto {
    pub port: u16,
    ns: String,
}

/// A free TCP port in `ns` (bound and released: the caller binds it next).
pub fn free_port(ns: &str) -> u16 {
    crate::sim::in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
    .unwrap()
}

impl Moto {
    /// Starts moto_server on 127.0.0.1 in the node's namespace (stopped with the
    /// node's other children) and waits until it answers.
    pub fn start(sim: &mut SimNode) -> Moto {
        let ns = sim.node_ns.clone();
        let port = free_port(&ns);
        sim.spawn(
            &ns,
            &["moto_server", "-H", "127.0.0.1", "-p", &port.to_string()],
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{port}/moto-api/");
        while !crate::agents::curl(sim, &ns, &url).0 {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        Moto { port, ns }
    }

    /// `endpoint` for a config's ec2Api.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS CLI (`aws ec2 ARGS`) against it; its JSON output.
    pub fn aws(&self, sim: &SimNode, args: &[&str]) -> serde_json::Value {
        let endpoint = self.endpoint();
        let mut full = vec![
            "env",
            "AWS_ACCESS_KEY_ID=test",
            "AWS_SECRET_ACCESS_KEY=test",
            "AWS_DEFAULT_REGION=us-east-1",
            "aws",
            "--endpoint-url",
            &endpoint,
            "--output",
            "json",
            "ec2",
        ];
        full.extend_from_slice(args);
        let out = sim
            .exec(&self.ns, &full, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("aws {args:?}: {e}"));
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
    }

    /// Adds ("authorize") or removes ("revoke") an outbound permission of group `sg`.
    pub fn egress(&self, sim: &SimNode, verb: &str, sg: &str, permission: &str) {
        let op = format!("{verb}-security-group-egress");
        self.aws(
            sim,
            &[&op, "--group-id", sg, "--ip-permissions", permission],
        );
    }

    /// A group for pod web, made through the API: TCP 443 out to one VPC host (the
    /// fabric's 10.0.2.5). Its id and that rule, as `egress` takes it.
    pub fn web_group(&self, sim: &SimNode) -> (String, &'static str) {
        let sg = self.bare_group(sim, "web");
        let rule = "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=10.0.2.5/32}]";
        self.egress(sim, "authorize", &sg, rule);
        (sg, rule)
    }

    /// A new group with no rules (EC2's default allow-all egress rule removed); its id.
    pub fn bare_group(&self, sim: &SimNode, name: &str) -> String {
        let sg = self.aws(
            sim,
            &[
                "create-security-group",
                "--group-name",
                name,
                "--description",
                name,
            ],
        );
        let sg = sg["GroupId"].as_str().unwrap().to_string();
        self.egress(
            sim,
            "revoke",
            &sg,
            "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]",
        );
        sg
    }
}
