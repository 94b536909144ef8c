//! The programs' caches of pods and flows (`enforcer-ebpf`'s `cache`): each CPU's
//! slots, CPU after CPU, in one plain array. A per-CPU array would cost every look-up
//! one more dependent load (its pointer table, then the CPU's copy); here the slot is
//! `cpu * slots + i`, the CPU's number a load the kernel inlines. The loader sizes
//! both maps for the CPUs the kernel may bring up ([`entries`]); a CPU past them finds
//! no slot and simply goes without a cache.

/// Slots per CPU (powers of two: the index is a mask).
pub const POD_CACHE_SLOTS: u32 = 64;
pub const FLOW_CACHE_SLOTS: u32 = 1024;

/// The maps' names, for the loader.
pub const POD_CACHE: &str = "POD_CACHE";
pub const FLOW_CACHE: &str = "FLOW_CACHE";

/// CPUs the object's maps are sized for until the loader sizes them.
pub const BUILT_CPUS: u32 = 1;

/// Entries of a cache of `slots` per CPU for `cpus` possible CPUs (saturating: past
/// what a map can hold the kernel refuses the size, with the map's name, at load).
pub const fn entries(slots: u32, cpus: u32) -> u32 {
    slots.saturating_mul(cpus)
}

/// The object's sizes (`BUILT_CPUS`).
pub const POD_ENTRIES: u32 = entries(POD_CACHE_SLOTS, BUILT_CPUS);
pub const FLOW_ENTRIES: u32 = entries(FLOW_CACHE_SLOTS, BUILT_CPUS);
