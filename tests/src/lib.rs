//! The test bed: crafted frames, a test_run harness over the real programs, the
//! simulated node (network namespaces, the VPC fabric's own eBPF object), the demo and
//! the benchmarks. None of it ships in the product.
pub mod agents;
pub mod demo;
pub mod ethtool;
pub mod fabric;
pub mod frames;
pub mod harness;
pub mod kube_fake;
pub mod moto;
pub mod net;
pub mod raw;
pub mod realbench;
pub mod scenario;
pub mod shop;
pub mod sim;

/// The enforcer binary the tests run (`PODSG_ENFORCER_BIN`, or the one built beside the
/// test binary: `cargo xtask test` builds it first).
pub fn enforcer_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("PODSG_ENFORCER_BIN") {
        return p.into();
    }
    built("enforcer")
}

/// The daemon built with the next map layout (`cargo xtask test` builds it as
/// `target/release/enforcer-layout-next`), for the upgrade test.
pub fn enforcer_next_bin() -> std::path::PathBuf {
    built("enforcer-layout-next")
}

/// A binary of the workspace beside the test binary.
fn built(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let beside = exe.parent().unwrap().join(name);
    let bin = if beside.exists() {
        beside
    } else {
        exe.parent().unwrap().parent().unwrap().join(name)
    };
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The index of interface `dev` in the calling thread's namespace.
pub fn netdev_index(dev: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name, alive for the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {dev}");
    Ok(i)
}
