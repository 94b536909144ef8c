//! `enforcer demo`: the tutorial replayed on a simulated node.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the demo is being written")
}
