//! The apply sequence, once: plan → fresh counter slots → write the maps → forget ids
//! nothing uses → attach. The daemon runs it against the kernel, `enforcer check`
//! against a [`Recorder`], the test harness against test_run-loaded programs.
use crate::datapath::kernel::Datapath;
use crate::datapath::state::KernelState;
use crate::memory::Memory;
use crate::netdev::Iface;
use crate::plan::desired::Touched;
use crate::plan::{Plan, plan};
use crate::sources::files::Snapshot;

/// Where an apply's effects go.
pub trait Writer {
    /// A slot handed to a new pod: its counters and flow share start from zero.
    fn zero_slot(&mut self, slot: u32) -> anyhow::Result<()>;
    /// Brings the maps to `state` (atomically per pod; see `Datapath::apply`), looking
    /// at only the rule-table keys `touched` names unless it says all.
    fn write(&mut self, state: &KernelState, touched: &Touched) -> anyhow::Result<()>;
    /// Attaches the pod program to these host interfaces; the failures, per interface.
    fn attach(&mut self, interfaces: &[String]) -> Vec<(String, anyhow::Error)>;
}

/// What one apply did.
pub struct Applied {
    pub plan: Plan,
    /// Writing or attaching failed: said in status, never fatal.
    pub errors: Vec<String>,
}

/// Runs the sequence. `persist` sees the memory before the maps change (so a crash
/// leaves a memory that knows every id the kernel may hold) and after.
/// `host_veths` are the interfaces that look like pods' host interfaces (whether or not
/// a known pod has them): each gets the pod programs, so one whose pod is not known
/// yet is closed (no pod entry: everything dropped) rather than routed unfiltered.
pub fn apply(
    cfg: &crate::config::Config,
    snap: &Snapshot,
    mem: &mut Memory,
    iface: &dyn Fn(&str) -> Option<Iface>,
    host_veths: &[String],
    writer: &mut dyn Writer,
    persist: &mut dyn FnMut(&Memory),
) -> Applied {
    let p = plan(cfg, snap, mem, iface);
    persist(mem);
    let mut errors = Vec::new();
    for s in &p.new_slots {
        if let Err(e) = writer.zero_slot(*s) {
            errors.push(format!("zeroing counters of slot {s}: {e:#}"));
        }
    }
    match writer.write(&mem.desired.state, &mem.desired.touched) {
        Ok(()) => mem.desired.touched.written(),
        Err(e) => {
            // Written part-way: the next write compares the tables whole.
            mem.desired.touched.all = true;
            errors.push(format!("writing maps: {e:#}"));
        }
    }
    // Ids of classes that left the tables are forgotten only now: one that came back
    // within the apply kept its id (and cost no write).
    for c in mem.desired.take_released() {
        mem.ids.forget_class(c);
    }
    persist(mem);
    let mut interfaces = p.interfaces.clone();
    interfaces.extend(host_veths.iter().cloned());
    interfaces.sort();
    interfaces.dedup();
    for (ifname, e) in writer.attach(&interfaces) {
        errors.push(format!("attaching to {ifname}: {e:#}"));
    }
    Applied { plan: p, errors }
}

impl Writer for Datapath {
    fn zero_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        self.zero_counters(slot)
    }
    fn write(&mut self, state: &KernelState, touched: &Touched) -> anyhow::Result<()> {
        self.apply(state, touched)
    }
    fn attach(&mut self, interfaces: &[String]) -> Vec<(String, anyhow::Error)> {
        self.sync_pod_links(interfaces)
    }
}

/// A writer that only records (`enforcer check`, planner tests): what the kernel would
/// be given.
#[derive(Default)]
pub struct Recorder {
    pub zeroed: Vec<u32>,
    pub written: Option<KernelState>,
    pub attached: Vec<String>,
}

impl Writer for Recorder {
    fn zero_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        self.zeroed.push(slot);
        Ok(())
    }
    fn write(&mut self, state: &KernelState, _: &Touched) -> anyhow::Result<()> {
        self.written = Some(state.clone());
        Ok(())
    }
    fn attach(&mut self, interfaces: &[String]) -> Vec<(String, anyhow::Error)> {
        self.attached = interfaces.to_vec();
        Vec::new()
    }
}
