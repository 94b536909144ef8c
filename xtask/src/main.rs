//! Developer tasks: `cargo xtask setup | build-ebpf | test | demo | bench`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
enum Task {
    /// Install what is missing: apt packages, nightly rust-src, bpf-linker (LLVM 22).
    Setup,
    /// Build the eBPF object (with BTF) into target/ebpf.
    BuildEbpf,
    /// Set up if needed, then run every test (unit, property, test_run, namespaces).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up if needed, build, and replay the security-groups tutorial on a simulated node.
    Demo {
        /// The same pods in standard mode: source NAT to the internet, the node's probes
        /// without rules.
        #[arg(long)]
        standard: bool,
    },
    /// ns/packet at 1, 60 and 1000 rules (test_run and real traffic), the other paths
    /// (source NAT, reverse NAT, host-local) beside a redirect-only floor, the control
    /// plane (110 pods: resync, rule change, pod event), podsg against its peers
    /// through the node, denied frames flooding the trunk (XDP against TC), then the cost
    /// of each stage; writes target/bench/results.json.
    Bench {
        /// Only podsg against its peers (no filter, the forwarding floor, iptables-nft,
        /// an nft set): 64-byte UDP pps through the node; its rows replace the last
        /// ones in results.json.
        #[arg(long)]
        compare: bool,
        /// Only the trunk flood: denied frames with the XDP pre-filter and with TC
        /// alone (drop rate, allowed traffic kept); its rows replace the last ones.
        #[arg(long)]
        xdp: bool,
    },
}

/// What the build, tests and demo use that a fresh machine lacks: LLVM 22 for
/// bpf-linker, ping for ICMP tests, dnsmasq and curl for the demo, bpftool for the
/// benchmark's kernel stats and the tests' map dumps, nftables and iptables for the
/// benchmark's peers. (moto and the AWS CLI, for the
/// EC2 source's tests, and kubernetes-validate for the deploy test, come from pip: see
/// `setup`.)
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "curl",
    "dnsmasq-base",
    "python3",
    "bpftool",
    "nftables",
    "iptables",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout).contains("nightly") {
        // Installing today's nightly would bring an LLVM that bpf-linker 0.13 can't read.
        bail!(
            "no nightly toolchain: the eBPF build needs the machine's preinstalled nightly (LLVM 22)"
        );
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup")?;
    if !String::from_utf8_lossy(&src.stdout).contains("rust-src") {
        // Never `rustup update nightly`: newer nightlies use an LLVM bpf-linker can't read.
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !have("bpf-linker") {
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker@0.13.0",
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    // The EC2 source's tests: a local EC2 API (moto) and the AWS CLI to drive it.
    // And the deploy test's offline manifest check against Kubernetes' schemas.
    for (bin, package) in [
        ("moto_server", "moto[server]"),
        ("aws", "awscli"),
        ("kubernetes-validate", "kubernetes-validate"),
    ] {
        if !have(bin) {
            run(Command::new("python3").args(["-m", "pip", "install", "-q", package]))?;
        }
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "-p",
            "enforcer-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf"])
        .current_dir(root())
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf"))
}

/// `target/release/enforcer-layout-next`: the daemon built with the next map layout
/// (a FlowValue one u64 longer, layout version + 1), for the upgrade test. Built in
/// the same target dir (only enforcer and enforcer-common compile again; the eBPF
/// object goes to target/ebpf-next) and copied aside, then the normal build is
/// linked back into place by the caller's build.
fn build_layout_next() -> Result<()> {
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "enforcer",
            "--features",
            "layout-next",
        ])
        .current_dir(root()))?;
    let release = root().join("target/release");
    std::fs::copy(
        release.join("enforcer"),
        release.join("enforcer-layout-next"),
    )
    .context("copying the layout-next build aside")?;
    Ok(())
}

/// Runs one of the test bed's programs (release build), with `arg`.
fn run_test_bed_bin(bin: &str, arg: Option<&str>) -> Result<()> {
    run(Command::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "integration-tests",
            "--bin",
            bin,
            "--",
        ])
        .args(arg)
        .current_dir(root()))
}

fn main() -> Result<()> {
    match Task::parse() {
        Task::Setup => setup(),
        Task::BuildEbpf => {
            setup()?;
            build_ebpf()
        }
        Task::Test { args } => {
            setup()?;
            build_ebpf()?;
            // The upgrade test runs the next layout's build over this one's datapath.
            build_layout_next()?;
            // The namespace tests run the real daemon binary.
            run(Command::new("cargo")
                .args(["build", "--release", "-p", "enforcer"])
                .current_dir(root()))?;
            // Tests that load programs and build namespaces run one at a time.
            run(Command::new("cargo")
                // The eBPF crate only builds for bpfel-unknown-none (build-ebpf did it).
                .args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "enforcer-ebpf",
                    "--release",
                ])
                .args(&args)
                .args(["--", "--test-threads=1"])
                .current_dir(root()))
        }
        Task::Demo { standard } => {
            setup()?;
            // The demo (test bed) drives the real daemon binary, built beside it.
            run(Command::new("cargo")
                .args(["build", "--release", "-p", "enforcer"])
                .current_dir(root()))?;
            run_test_bed_bin("demo", standard.then_some("--standard"))
        }
        Task::Bench { compare, xdp } => {
            setup()?;
            run(Command::new("cargo")
                .args(["build", "--release", "-p", "enforcer"])
                .current_dir(root()))?;
            if compare {
                return run_test_bed_bin("bench", Some("compare"));
            }
            if xdp {
                return run_test_bed_bin("bench", Some("xdp"));
            }
            for bin in ["bench", "stages"] {
                run_test_bed_bin(bin, None)?;
            }
            Ok(())
        }
    }
}
