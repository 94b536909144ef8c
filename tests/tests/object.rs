//! The object the daemon ships: exactly the product's programs and maps (the simulated
//! fabric is its own object), each pinned map with the layout the loader checks a
//! previous daemon's pins against.
use std::collections::BTreeSet;
use std::path::PathBuf;

use enforcer::datapath::kernel::Datapath;
use enforcer_common::{cache, map_names, maps::MAPS, prog_names};

/// A pin directory of this test only, removed also when the test fails.
struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = enforcer::datapath::links::uninstall(&self.0);
    }
}

#[test]
fn the_shipped_object_holds_the_product_and_nothing_else() {
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/podsg-object-{}",
        std::process::id()
    )));
    let mut dp = Datapath::load(Some(&pins.0)).expect("load the product object");
    let progs: BTreeSet<String> = dp.ebpf().programs().map(|(n, _)| n.to_string()).collect();
    let want: BTreeSet<String> = prog_names::ALL.iter().map(|n| n.to_string()).collect();
    assert_eq!(progs, want, "programs in the shipped object");
    // The verifier walks at most 1 000 000 instructions per program; a change that adds
    // paths shows here while there is still room, not as a program that fails to load.
    for (name, p) in dp.ebpf().programs() {
        let n = p.info().unwrap().verified_instruction_count().unwrap();
        eprintln!("{name}: the verifier walked {n} instructions");
        assert!(
            n < 900_000,
            "{name}: the verifier walked {n} instructions, within 10 % of its limit"
        );
    }

    let maps: BTreeSet<String> = dp.ebpf().maps().map(|(n, _)| n.to_string()).collect();
    let pinned: BTreeSet<String> = map_names::ALL.iter().map(|n| n.to_string()).collect();
    let unpinned: Vec<&String> = maps
        .difference(&pinned)
        .filter(|n| !n.starts_with(".rodata"))
        .collect();
    // The per-CPU parse scratch, aya-log's ring buffer, the flow events' ring buffer,
    // budgets, rule hits and audit counts, the per-CPU caches and their epoch (and the
    // compiler's constant sections): process-local, never pinned.
    assert_eq!(
        unpinned,
        [
            "AYA_LOGS",
            "CACHE_EPOCH",
            "EVENTS",
            "EVENTS_LOST",
            "EVENT_BUCKETS",
            "FLOW_CACHE",
            "POD_CACHE",
            "RULE_HITS",
            "SCRATCH",
            "WOULD_DROP"
        ],
        "maps not in the pinned table"
    );
    assert!(pinned.is_subset(&maps), "every pinned map is in the object");
    for spec in MAPS {
        let pin = enforcer::datapath::migrate::our_dir(&pins.0).join(spec.name);
        let info = aya::maps::MapInfo::from_pin(pin).unwrap();
        assert_eq!(
            (
                info.map_type().unwrap() as u32,
                info.key_size(),
                info.value_size(),
                info.max_entries()
            ),
            (
                spec.kind as u32,
                spec.key_size,
                spec.value_size,
                spec.capacity
            ),
            "{}: the loaded map is the table's row",
            spec.name
        );
    }
    // The caches hold every CPU's slots in one array: sized by the object for one CPU,
    // every other CPU would go without (correct, and silently slow).
    let cpus = aya::util::nr_cpus().unwrap() as u32;
    for (name, slots) in [
        (cache::POD_CACHE, cache::POD_CACHE_SLOTS),
        (cache::FLOW_CACHE, cache::FLOW_CACHE_SLOTS),
    ] {
        let map = dp.ebpf().map(name).unwrap();
        let info = match map {
            aya::maps::Map::Array(m) => m.info().unwrap(),
            other => panic!("{name}: a plain array, not {other:?}"),
        };
        assert_eq!(
            info.max_entries(),
            slots * cpus,
            "{name}: {slots} slots for each of the {cpus} possible CPUs"
        );
    }
}
