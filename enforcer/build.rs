//! Builds the eBPF object with the nightly toolchain and embeds it in the binary.
//! The object goes to `target/ebpf` (its own target dir, so this nested cargo never waits
//! on the lock of the build that runs this script) and is incremental across profiles.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for dir in [
        "enforcer-ebpf/src",
        "enforcer-ebpf/Cargo.toml",
        "enforcer-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=PODSG_EBPF_TOOLCHAIN");
    let toolchain = env::var("PODSG_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    // The upgrade test's build of the next layout: its own object, in its own dir.
    let next = env::var_os("CARGO_FEATURE_LAYOUT_NEXT").is_some();
    let target_dir = root.join(if next {
        "target/ebpf-next"
    } else {
        "target/ebpf"
    });
    let status = Command::new("rustup")
        .args([
            "run",
            &toolchain,
            "cargo",
            "build",
            "-p",
            "enforcer-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(if next {
            &["--features", "layout-next"][..]
        } else {
            &[]
        })
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .status()
        .expect("run rustup: is rustup installed? (`cargo xtask setup` installs what is missing)");
    if !status.success() {
        panic!(
            "building the eBPF object failed; run `cargo xtask setup` (nightly rust-src, \
             bpf-linker for LLVM 22) and retry"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/enforcer");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("enforcer.bpf.o");
    std::fs::copy(&obj, &out).expect("copy eBPF object");
}
