//! `cargo xtask demo [--standard]`: the security-groups-for-pods tutorial replayed on a
//! simulated node against the real `enforcer` binary (built beside this one);
//! `--standard` runs it in standard mode (source NAT, host-local bypass).
fn main() {
    let standard = std::env::args().any(|a| a == "--standard");
    if let Err(e) = integration_tests::demo::run(standard) {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}
