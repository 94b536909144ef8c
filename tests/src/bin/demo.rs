//! `cargo xtask demo`: the security-groups-for-pods tutorial replayed on a simulated node
//! against the real `enforcer` binary (built beside this one).
fn main() {
    if let Err(e) = integration_tests::demo::run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}
