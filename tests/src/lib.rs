//! Shared test types: crafted frames, a test_run harness over the real programs, and
//! (in `enforcer::sim`) the simulated node used by the namespace tests.
pub mod frames;
pub mod harness;
pub mod net;
pub mod realbench;
