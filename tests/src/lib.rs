//! Shared test types: crafted frames, a test_run harness over the real programs, and
//! (in `enforcer::sim`) the simulated node used by the namespace tests.
pub mod frames;
pub mod harness;
pub mod net;
pub mod realbench;

/// The enforcer binary the tests run (`PODSG_ENFORCER_BIN`, or the one built beside the
/// test binary: `cargo xtask test` builds it first).
pub fn enforcer_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("PODSG_ENFORCER_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/enforcer
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("enforcer");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}
