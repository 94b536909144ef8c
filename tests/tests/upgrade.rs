//! Upgrades across map layouts, with two builds that differ in one map's value layout:
//! this one (layout N) and `enforcer-layout-next` (layout N+1, whose FlowValue is one
//! u64 longer). The upgrade carries every flow and counter and keeps the node enforced
//! throughout; the way back (a layout this build can't read) is refused and the newer
//! datapath keeps running. Also the copy itself, over maps made with bpftool: what the
//! old programs add, remove and count after the first copy arrives too.
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapInfo};
use enforcer::datapath::kernel::Datapath;
use enforcer::datapath::migrate::version_dir;
use enforcer_common::maps::LAYOUT_VERSION;
use enforcer_common::{FLOW_TCP_ESTABLISHED, FlowKey, FlowValue, map_names};
use integration_tests::net::*;
use integration_tests::shop::*;
use integration_tests::sim::{SimNode, sh, tcx_programs};
use integration_tests::{enforcer_bin, enforcer_next_bin};

const NEXT: u32 = LAYOUT_VERSION + 1;
/// FlowValue in the next layout: this one's fields, then a u64.
const NEXT_FLOW_VALUE: usize = size_of::<FlowValue>() + 8;

fn programs(sim: &SimNode) -> Vec<Vec<(u32, String)>> {
    hooks()
        .iter()
        .map(|i| tcx_programs(&sim.node_ns, i))
        .collect()
}

fn web_counter(sim: &SimNode, reason: &str) -> u64 {
    sim.status()
        .unwrap()
        .pods
        .iter()
        .find(|p| p.name == "web")
        .and_then(|p| p.counters.get(reason).map(|c| c[0]))
        .unwrap_or(0)
}

/// Waits (10 s at most) until the daemon's log says `what`.
fn wait_log(sim: &SimNode, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = sim.daemon_log();
        if log.contains(what) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} in:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Proves the upgrade is hitless and complete: while web's established flow is
/// exercised and its denied datagrams sent, the daemon is replaced by the next
/// layout's build; no exchange fails, no denied datagram passes, every link runs the
/// new program (atomically swapped: one program per hook throughout), web's flow entry
/// is in the new FLOWS with its fields kept and the new one zero, counters carried, the
/// old layout's pins gone. Then the old build is refused (the newer layout stays and
/// enforces), and new flows work under the new build.
#[test]
fn an_upgrade_to_a_new_value_layout_is_hitless_and_the_way_back_is_refused() {
    let next_bin = enforcer_next_bin();
    let (mut n, _srv) = routing_node();
    // Web's rules don't reach this one; client's do.
    let _other = echo_server(&n.sim.fabric_ns, "10.0.2.6:443").unwrap();
    let web_ns = n.sim.pod_ns("web").to_string();
    let bpffs = n.sim.bpffs_dir.clone();
    let before = programs(&n.sim);
    assert!(before.iter().all(|p| p.len() == 1), "{before:?}");
    assert_eq!(
        std::fs::read_link(bpffs.join("maps")).unwrap(),
        Path::new(&format!("v{LAYOUT_VERSION}"))
    );

    let probe = Probe::start(&n.sim);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let allowed_before = counter_reaching(&n.sim, "web", "allow_policy", 1);
    assert!(allowed_before > 0);
    assert!(n.sim.stop_daemon().unwrap().success());
    let cfg = n.sim.workdir.join("enforcer.yaml");
    n.sim
        .start_daemon(&next_bin, &cfg)
        .expect("the next layout's build");
    let log = wait_log(&n.sim, "migrated from layout");
    let migrated = log
        .lines()
        .find(|l| l.contains("migrated from layout"))
        .unwrap_or_default();
    // How long the upgrade took and how long both builds' programs ran side by side.
    eprintln!("{migrated}");
    assert!(migrated.contains("ms in all") && migrated.contains("both attached for"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flows_pin = version_dir(&bpffs, NEXT).join(map_names::FLOWS);
    let info = MapInfo::from_pin(&flows_pin).unwrap();
    assert_eq!(info.value_size() as usize, NEXT_FLOW_VALUE);
    // Web's established flow (still open) was carried: its fields as they were, the
    // new one zero.
    let flows: HashMap<MapData, FlowKey, [u8; NEXT_FLOW_VALUE]> = HashMap::try_from(
        aya::maps::Map::HashMap(MapData::from_pin(&flows_pin).unwrap()),
    )
    .unwrap();
    let web_flow = flows
        .iter()
        .map(Result::unwrap)
        .find(|(k, _)| k.remote[..4] == [10, 0, 2, 5] && k.remote_port == 443 && k.proto == 6)
        .expect("web's established flow in the new FLOWS");
    // SAFETY: FlowValue is plain old data (repr(C), every bit pattern valid) and
    // the array holds at least its size.
    let kept: FlowValue = unsafe { std::ptr::read_unaligned(web_flow.1.as_ptr().cast()) };
    assert_eq!(kept.state, FLOW_TCP_ESTABLISHED);
    assert_ne!(kept.cookie, 0, "the rule that allowed it is still named");
    assert_ne!(kept.opened_ns, 0, "its age too");
    assert_eq!(web_flow.1[size_of::<FlowValue>()..], [0; 8]);
    probe.finish().assert_nothing_lost_or_leaked();
    assert!(
        log.contains(&format!("upgrading from layout v{LAYOUT_VERSION}")),
        "{log}"
    );

    // Every hook runs the new build's program, swapped in place (still one each).
    let after = programs(&n.sim);
    for ((i, b), a) in hooks().iter().zip(&before).zip(&after) {
        assert_eq!(a.len(), 1, "{i}: {a:?}");
        assert_eq!(a[0].1, b[0].1, "{i}: the same program");
        assert_ne!(a[0].0, b[0].0, "{i}: the new build's program");
    }
    // The maps: the new layout's, its value one u64 longer; the old ones unpinned.
    assert!(
        !version_dir(&bpffs, LAYOUT_VERSION).exists(),
        "old layout's pins removed"
    );
    assert_eq!(
        std::fs::read_link(bpffs.join("maps")).unwrap(),
        Path::new(&format!("v{NEXT}"))
    );
    // Counters carried, and counting on.
    assert!(web_counter(&n.sim, "allow_policy") >= allowed_before);
    assert!(
        tcp_echo(&web_ns, "10.0.2.5:443").unwrap(),
        "new flows under the new build"
    );

    // Back to this build: refused, and the newer datapath stays and enforces.
    assert!(n.sim.stop_daemon().unwrap().success());
    let refused = n
        .sim
        .start_daemon(&enforcer_bin(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("layout v{NEXT}")) && refused.contains("newer"),
        "{refused}"
    );
    assert!(version_dir(&bpffs, NEXT).join(map_names::FLOWS).exists());
    assert!(
        !version_dir(&bpffs, LAYOUT_VERSION).exists(),
        "nothing of the refused build pinned"
    );
    assert_eq!(programs(&n.sim), after, "the newer programs stay attached");
    assert!(
        tcp_echo(&web_ns, "10.0.2.5:443").unwrap(),
        "allowed still flows"
    );
    assert!(
        !tcp_echo(&web_ns, "10.0.2.6:443").unwrap(),
        "denied still denied"
    );
    assert!(
        tcp_echo(n.sim.pod_ns("client"), "10.0.2.6:443").unwrap(),
        "(the denied server answers whom it may)"
    );
}

/// A pin directory of its own under /sys/fs/bpf, removed also on failure.
struct PinDir(PathBuf);

impl PinDir {
    fn new(what: &str) -> PinDir {
        let d = PathBuf::from(format!("/sys/fs/bpf/podsg-{what}-{}", std::process::id()));
        let _ = enforcer::datapath::links::uninstall(&d);
        PinDir(d)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = enforcer::datapath::links::uninstall(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bpftool map create` a map pinned at `path`.
fn create(path: &Path, kind: &str, key: usize, value: usize, entries: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
    sh(&[
        "bpftool",
        "map",
        "create",
        path.to_str().unwrap(),
        "type",
        kind,
        "key",
        &key,
        "value",
        &value,
        "entries",
        &entries,
        "name",
        name,
    ])
    .unwrap();
}

/// `bpftool map update` (with a value) or `delete` (without) of `key` in `path`.
fn bpftool_map(path: &Path, key: &[u8], value: Option<&[u8]>) {
    let op = if value.is_some() { "update" } else { "delete" };
    let mut args: Vec<String> = ["bpftool", "map", op, "pinned"].map(String::from).to_vec();
    args.push(path.to_str().unwrap().into());
    args.extend(["key".into(), "hex".into()]);
    args.extend(hex(key));
    if let Some(v) = value {
        args.extend(["value".into(), "hex".into()]);
        args.extend(hex(v));
    }
    sh(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
}

fn update(path: &Path, key: &[u8], value: &[u8]) {
    bpftool_map(path, key, Some(value));
}

fn delete(path: &Path, key: &[u8]) {
    bpftool_map(path, key, None);
}

fn flow_key(port: u16) -> FlowKey {
    let mut k = FlowKey {
        family: enforcer_common::AF_V4,
        proto: 6,
        local_port: 40000,
        remote_port: port,
        ..FlowKey::default()
    };
    k.local[..4].copy_from_slice(&[10, 0, 1, 11]);
    k.remote[..4].copy_from_slice(&[10, 0, 2, 5]);
    k
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain-old-data value of the ABI.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// A flow value as layout 6 wrote it.
fn flow_value(cookie: u32) -> Vec<u8> {
    let v = FlowValue {
        cookie,
        state: FLOW_TCP_ESTABLISHED,
        slot: 3,
        ..FlowValue::default()
    };
    bytes_of(&v)[..V6_FLOW_VALUE].to_vec()
}

/// The FlowValue size of layout 6, which layout 7 extends (by `opened_ns`).
const V6_FLOW_VALUE: usize = 32;

/// The older layout (v N-1) holding a FLOWS (its values v6's, shorter than ours) and a
/// FLOW_COUNT, made with bpftool.
fn older_layout(pins: &Path) -> (PathBuf, PathBuf) {
    let old = version_dir(pins, LAYOUT_VERSION - 1);
    let flows = old.join(map_names::FLOWS);
    let count = old.join(map_names::FLOW_COUNT);
    create(&flows, "hash", size_of::<FlowKey>(), V6_FLOW_VALUE, 64);
    create(&count, "array", 4, 8, 16);
    (flows, count)
}

/// Proves the two passes of the copy (from layout 6's shorter flow values, the
/// appended field zero): what the first copies, and what the old
/// programs did between it and the links moving (an entry added, one removed, a count
/// raised) arrives with the second; the old layout's pins go then.
#[test]
fn the_copy_catches_up_with_what_the_old_programs_did_meanwhile() {
    let pins = PinDir::new("copy");
    let (flows, count) = older_layout(&pins.0);
    update(&flows, &bytes_of(&flow_key(443)), &flow_value(7));
    update(&flows, &bytes_of(&flow_key(444)), &flow_value(8));
    update(&count, &3u32.to_ne_bytes(), &5u64.to_ne_bytes());

    let mut dp = Datapath::load(Some(&pins.0)).expect("migrates from the older layout");
    assert_eq!(dp.migration().unwrap().version, Some(LAYOUT_VERSION - 1));
    let read = |dp: &Datapath| {
        let mut f: Vec<(u16, u32)> = dp
            .flows()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                assert_eq!(v.opened_ns, 0, "v6 did not record it: unknown, zero");
                (k.remote_port, v.cookie)
            })
            .collect();
        f.sort();
        (f, dp.flow_counts().unwrap()[3])
    };
    assert_eq!(read(&dp), (vec![(443, 7), (444, 8)], 5), "the first pass");
    // The old programs go on until the links move: a flow closes, one opens, counted.
    delete(&flows, &bytes_of(&flow_key(444)));
    update(&flows, &bytes_of(&flow_key(445)), &flow_value(9));
    update(&count, &3u32.to_ne_bytes(), &6u64.to_ne_bytes());

    let done = dp.finish_migration().unwrap();
    assert!(done.contains("migrated from layout"), "{done}");
    assert_eq!(read(&dp), (vec![(443, 7), (445, 9)], 6), "the last pass");
    assert!(!flows.exists() && !version_dir(&pins.0, LAYOUT_VERSION - 1).exists());
    assert_eq!(
        std::fs::read_link(pins.0.join("maps")).unwrap(),
        Path::new(&format!("v{LAYOUT_VERSION}"))
    );
}

/// Proves an older layout that can't be carried is refused before anything changes:
/// the error names the map and the way out, this build pins nothing, the old maps and
/// their entries stay.
#[test]
fn a_layout_that_cannot_be_carried_is_refused_and_left_running() {
    let pins = PinDir::new("refuse");
    let old = version_dir(&pins.0, LAYOUT_VERSION - 1);
    let flows = old.join(map_names::FLOWS);
    // Keys one byte longer than this build's: no way to map them.
    create(
        &flows,
        "hash",
        size_of::<FlowKey>() + 1,
        size_of::<FlowValue>(),
        64,
    );
    let err = format!(
        "{:#}",
        Datapath::load(Some(&pins.0)).err().expect("refused")
    );
    assert!(
        err.contains("FLOWS")
            && err.contains(&format!("layout v{}", LAYOUT_VERSION - 1))
            && err.contains("enforcer uninstall"),
        "{err}"
    );
    assert!(
        !version_dir(&pins.0, LAYOUT_VERSION).exists(),
        "nothing of ours pinned"
    );
    assert!(flows.exists());
}

/// Proves maps pinned by a build from before versioned directories, of this very
/// layout, are adopted in place (moved, not copied: their entries stay).
#[test]
fn unversioned_maps_of_this_layout_are_moved_not_copied() {
    let pins = PinDir::new("unversioned");
    let flows = pins.0.join(map_names::FLOWS);
    let spec = enforcer_common::maps::spec_of(map_names::FLOWS).unwrap();
    create(
        &flows,
        "hash",
        spec.key_size as usize,
        spec.value_size as usize,
        spec.capacity,
    );
    let v = FlowValue {
        cookie: 7,
        ..FlowValue::default()
    };
    update(&flows, &bytes_of(&flow_key(443)), &bytes_of(&v));
    let id = MapInfo::from_pin(&flows).unwrap().id();
    let dp = Datapath::load(Some(&pins.0)).unwrap();
    assert!(dp.migration().is_none() && dp.adopted());
    let moved = version_dir(&pins.0, LAYOUT_VERSION).join(map_names::FLOWS);
    assert_eq!(MapInfo::from_pin(&moved).unwrap().id(), id, "the same map");
    assert!(!flows.exists());
    assert_eq!(dp.flows().unwrap().len(), 1);
}
