//! Network namespaces: commands run in them, threads that enter them, and the cleanup
//! of what killed runs left behind.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail};

/// Runs a command; the error carries its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS <command>`, the command split on whitespace (no argument here has a space).
pub(super) fn ip(ns: &str, command: &str) -> Result<String> {
    let mut args = vec!["ip", "-n", ns];
    args.extend(command.split_whitespace());
    sh(&args)
}

/// `ip <command>` in our own namespace.
pub(super) fn ip_root(command: &str) -> Result<String> {
    let mut args = vec!["ip"];
    args.extend(command.split_whitespace());
    sh(&args)
}

/// Runs `f` on a thread that has entered the named network namespace. Sockets it opens
/// belong to that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
}

/// Spawns `f` on a thread inside the namespace and returns its handle.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: an open namespace file; setns moves only this (new) thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow!(
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    }))
}

/// Short, unique prefix for the names of one simulated node (interface names are
/// limited to 15 bytes; namespace names are not, but short ones read better). It carries
/// the creating process's id so leftovers of a killed run can be recognised.
pub(super) fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "ps{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes what simulated nodes of processes that no longer exist left behind: a test
/// killed by a timeout never runs its guards.
pub(super) fn remove_leftovers() {
    // Pin directories of tests named `podsg-<what>-<pid>` whose process is gone (killed
    // before its guard ran).
    for e in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("podsg-")
            .and_then(|r| r.rsplit_once('-'))
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = enforcer::datapath::links::uninstall(&e.path());
            // What is not a datapath's (the bench's pins of NPA's maps) goes too.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(prefix) = ns.split('-').next() else {
            continue;
        };
        let Some(pid) = prefix
            .strip_prefix("ps")
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sh(&["ip", "netns", "del", ns]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        let pins = PathBuf::from(format!("/sys/fs/bpf/podsg-{prefix}"));
        let _ = enforcer::datapath::links::uninstall(&pins);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("podsg-{prefix}")));
    }
}

/// (id, name) of the TCX programs on `ifname`'s ingress in `ns`.
pub fn tcx_programs(ns: &str, ifname: &str) -> Vec<(u32, String)> {
    let ifname = ifname.to_string();
    in_netns(ns, move || {
        let (_, progs) = aya::programs::SchedClassifier::query_tcx(
            &ifname,
            aya::programs::TcAttachType::Ingress,
        )
        .unwrap();
        progs
            .iter()
            .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
            .collect()
    })
    .unwrap()
}

/// The id of the XDP program attached to `ifname` in `ns` (native mode), if any.
pub fn xdp_program(ns: &str, ifname: &str) -> Option<u32> {
    let out = sh(&["ip", "-n", ns, "-j", "-d", "link", "show", "dev", ifname]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let xdp = &v[0]["xdp"];
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .map(|id| id as u32)
}
