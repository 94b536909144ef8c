//! Real programs the pods and the node run in the tests and the demo: an HTTP server
//! (python3) and client (curl), a DNS server (dnsmasq) and the C library's resolver.
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::sim::SimNode;

/// `curl` from `ns` (3 s at most): (worked, its output or its error).
pub fn curl(sim: &SimNode, ns: &str, url: &str) -> (bool, String) {
    match sim.exec(
        ns,
        &["curl", "-sS", "--max-time", "3", url],
        Duration::from_secs(5),
    ) {
        Ok(out) => (true, out),
        // Keep curl's own words, not the command line around them.
        Err(e) => (
            false,
            e.to_string()
                .rsplit(" failed: ")
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
    }
}

pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// An HTTP server (python3's) on `port` in `ns`, serving `dir`; returns once it answers
/// locally (bounded).
pub fn http_server(sim: &mut SimNode, ns: &str, port: u16, dir: &std::path::Path) -> Result<()> {
    sim.spawn(
        ns,
        &[
            python(),
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "::",
            "--directory",
            &dir.display().to_string(),
        ],
    )?;
    wait_until(
        || curl(sim, ns, &format!("http://127.0.0.1:{port}/")).0,
        "HTTP server",
    )
}

/// dnsmasq in `ns` answering on `listen` for `name` with `addr` (and nothing else).
pub fn dns_server(sim: &mut SimNode, ns: &str, listen: &str, name: &str, addr: &str) -> Result<()> {
    let record = format!("--host-record={name},{addr}");
    sim.spawn(
        ns,
        &[
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file",
            "--bind-interfaces",
            "--listen-address",
            listen,
            &record,
        ],
    )?;
    // Ready once it has bound its socket (it answers from its own namespace).
    wait_until(
        || {
            sim.exec(
                ns,
                &["sh", "-c", &format!("ss -lun | grep -q '{listen}:53'")],
                Duration::from_secs(2),
            )
            .is_ok()
        },
        "DNS server",
    )
}

/// `name` looked up from `ns` with the C library's resolver (the namespace's
/// resolv.conf); None when the lookup fails.
pub fn resolve(sim: &SimNode, ns: &str, name: &str) -> Option<String> {
    let out = sim
        .exec(ns, &["getent", "hosts", name], Duration::from_secs(4))
        .ok()?;
    out.split_whitespace().next().map(str::to_string)
}

/// Polls `ok` for up to 10 s.
fn wait_until(ok: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{what} did not come up within 10 s")
}
