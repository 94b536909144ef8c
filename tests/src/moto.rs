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

/// A front for the local EC2 that can be made to throttle: while `throttle` is set it
/// answers every call as EC2 does when an account's request budget is spent (HTTP 503,
/// `RequestLimitExceeded`); otherwise it relays the call to moto. One request per
/// connection; stops when dropped.
pub struct ThrottlingFront {
    pub port: u16,
    pub throttle: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for ThrottlingFront {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttled</RequestID></Response>";

/// Reads one HTTP request (headers and a Content-Length body).
fn read_request(c: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Ok(buf);
        }
    }
}

impl Moto {
    /// Starts a [`ThrottlingFront`] in the node's namespace.
    pub fn throttling_front(&self) -> ThrottlingFront {
        use std::io::{Read, Write};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (throttle, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (t, s, moto) = (throttle.clone(), stop.clone(), self.port);
        let (ptx, prx) = std::sync::mpsc::channel();
        crate::sim::spawn_in_netns(&self.ns, move || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            ptx.send(l.local_addr().unwrap().port()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(req) = read_request(&mut c) else { continue };
                if t.load(Ordering::Relaxed) {
                    let _ = write!(
                        c,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{THROTTLED}",
                        THROTTLED.len()
                    );
                    continue;
                }
                // Relayed with the connection closed after the answer, which is then
                // read to its end.
                let text = String::from_utf8_lossy(&req).replacen(
                    "\r\n",
                    "\r\nConnection: close\r\n",
                    1,
                );
                let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", moto)) else { continue };
                let _ = up.set_read_timeout(Some(Duration::from_secs(10)));
                let mut answer = Vec::new();
                if up.write_all(text.as_bytes()).is_ok() && up.read_to_end(&mut answer).is_ok() {
                    let _ = c.write_all(&answer);
                }
            }
        })
        .unwrap();
        let port = prx.recv_timeout(Duration::from_secs(10)).unwrap();
        ThrottlingFront {
            port,
            throttle,
            stop,
        }
    }
}
