//! One pod's outcome: what the kernel gets for it and what status says.
use enforcer_common::{MAX_PODS, PodInfo, PodMode};

use crate::config::{Config, Mode, host_veth_name};
use crate::memory::Memory;
use crate::model::pod::{BadPod, link_local_v6};
use crate::netdev::Iface;
use crate::plan::PodError;
use crate::plan::cache::Round;
use crate::policy::compile::Peers;
use crate::policy::resolve::{Resolved, group_error};
use crate::status::{PodState, PodStatus};

/// What happens to one pod.
#[derive(Debug)]
pub enum PodOutcome {
    /// No branch ENI: not ours. The error says why a policy that selects it can't apply.
    NotBranch(Option<PodError>),
    /// A second object with this namespace/name, or one with no name: nothing in the
    /// kernel for it (its interface, if any, is another object's).
    Ignored(PodError),
    /// Its host interface does not exist yet; the error is what it will fail closed with.
    Waiting(Option<PodError>),
    /// Only the always-allowed destinations pass (`entry` is flagged fail-closed; none
    /// when no counter slot was left).
    FailClosed {
        error: PodError,
        entry: Option<PodInfo>,
    },
    Enforced {
        entry: PodInfo,
    },
}

impl PodOutcome {
    /// The pod's entry for the kernel's pod tables.
    pub fn entry(&self) -> Option<&PodInfo> {
        match self {
            PodOutcome::FailClosed { entry, .. } => entry.as_ref(),
            PodOutcome::Enforced { entry } => Some(entry),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&PodError> {
        match self {
            PodOutcome::NotBranch(e) | PodOutcome::Waiting(e) => e.as_ref(),
            PodOutcome::Ignored(e) | PodOutcome::FailClosed { error: e, .. } => Some(e),
            PodOutcome::Enforced { .. } => None,
        }
    }

    fn state(&self) -> PodState {
        match self {
            PodOutcome::NotBranch(_) => PodState::NotBranch,
            PodOutcome::Ignored(_) | PodOutcome::FailClosed { .. } => PodState::FailClosed,
            PodOutcome::Waiting(_) => PodState::Pending,
            PodOutcome::Enforced { .. } => PodState::Enforced,
        }
    }
}

#[derive(Debug)]
pub struct PodPlan {
    /// What is known of the pod whatever its outcome; its state, error and waiting are
    /// the outcome's, filled in by [`PodPlan::status`].
    pub details: PodStatus,
    pub outcome: PodOutcome,
}

impl PodPlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.details.namespace, self.details.name)
    }

    pub fn bad_object(bad: &BadPod) -> PodPlan {
        PodPlan {
            details: PodStatus::new(&bad.namespace, "", PodState::FailClosed),
            outcome: PodOutcome::Ignored(PodError::BadObject {
                problem: bad.problem.clone(),
                origin: bad.origin.clone(),
            }),
        }
    }

    pub fn status(&self) -> PodStatus {
        let d = &self.details;
        PodStatus {
            state: self.outcome.state(),
            error: self.outcome.error().map(|e| e.to_string()),
            waiting: matches!(self.outcome, PodOutcome::Waiting(_)).then(|| {
                format!(
                    "host interface {} not found (the CNI has not set the pod up yet)",
                    d.interface.as_deref().unwrap_or("?")
                )
            }),
            ..d.clone()
        }
    }
}

/// What planning one pod reads and adds to.
pub(super) struct Ctx<'a> {
    pub cfg: &'a Config,
    /// Groups, with this node's pods among their members.
    pub peers: &'a Peers<'a>,
    pub iface: &'a dyn Fn(&str) -> Option<Iface>,
    /// Policies come from its cache and are held in its desired state
    /// (content-addressed: pods with the same groups share).
    pub mem: &'a mut Memory,
    pub round: Round,
    pub new_slots: Vec<u32>,
}

pub(super) fn plan_pod(ctx: &mut Ctx, r: Resolved) -> PodPlan {
    let key = r.pod.key();
    let mut d = PodStatus {
        groups: r.groups.clone(),
        policies: r.policies.clone(),
        ..PodStatus::new(&r.pod.namespace, &r.pod.name, PodState::NotBranch)
    };
    if r.duplicate {
        let error = r.error.expect("a duplicate carries its error");
        return PodPlan {
            details: d,
            outcome: PodOutcome::Ignored(error),
        };
    }
    if r.not_branch {
        return PodPlan {
            details: d,
            outcome: PodOutcome::NotBranch(r.error),
        };
    }
    let ifname = host_veth_name(
        &ctx.cfg.node.host_veth_prefix,
        &r.pod.namespace,
        &r.pod.name,
    );
    d.interface = Some(ifname.clone());
    let mut error = r.error;
    // Slot and interface are filled in once known.
    let mut entry = PodInfo::fail_closed(0, 0, [0; 6]);
    if let Some(eni) = &r.eni {
        let mode = *ctx.mem.modes.entry(key.clone()).or_insert(ctx.cfg.mode());
        d.mode = Some(mode);
        d.vlan = Some(eni.vlan);
        d.ipv4 = eni.ipv4.map(|a| a.to_string());
        d.ipv6 = eni.ipv6.map(|a| a.to_string());
        let mut node_policy_id = 0;
        if error.is_none() && mode == Mode::Standard {
            match node_policy(ctx) {
                Ok(id) => node_policy_id = id,
                Err(e) => error = Some(e),
            }
        }
        if error.is_none() {
            match policy_for(ctx, &r.groups) {
                Ok((id, inbound, outbound)) => {
                    d.policy_id = id;
                    d.inbound_rules = inbound;
                    d.outbound_rules = outbound;
                }
                Err(e) => error = Some(e),
            }
        }
        entry = PodInfo {
            policy_id: d.policy_id,
            mac: eni.mac.octets(),
            // A pod whose VLAN, MAC or address another pod holds is reachable by its
            // interface only: its entry must not replace the other pod's.
            vlan: if r.clash { 0 } else { eni.vlan },
            flags: match (&error, ctx.cfg.audit(&r.pod.namespace)) {
                (Some(_), _) => entry.flags,
                (None, true) => enforcer_common::POD_AUDIT,
                (None, false) => 0,
            },
            ipv6_ll: link_local_v6(&eni.mac).octets(),
            node_policy_id,
            ..entry
        }
        .with_addresses(eni.ipv4, eni.ipv6)
        .with_mode(match mode {
            Mode::Strict => PodMode::Strict,
            Mode::Standard => PodMode::Standard,
        });
        d.audit = entry.is_audit();
    }
    // No ENI (an annotation we can't use): we know the pod's interface from its name
    // but not its VLAN, MAC or IPs, so everything from it is dropped. It must not run
    // unenforced.
    let Some((slot, fresh)) = ctx.mem.slots.get(&key) else {
        return PodPlan {
            details: d,
            outcome: PodOutcome::FailClosed {
                error: PodError::TooManyPods(MAX_PODS - 1),
                entry: None,
            },
        };
    };
    if fresh {
        ctx.new_slots.push(slot);
    }
    d.slot = slot;
    let Some(dev) = (ctx.iface)(&ifname) else {
        return PodPlan {
            details: d,
            outcome: PodOutcome::Waiting(error),
        };
    };
    entry.slot = slot;
    entry.host_ifindex = dev.ifindex;
    entry.host_mac = dev.mac;
    let outcome = match error {
        Some(error) => PodOutcome::FailClosed {
            error,
            entry: Some(entry),
        },
        None => PodOutcome::Enforced { entry },
    };
    PodPlan {
        details: d,
        outcome,
    }
}

/// Standard mode: the node's groups, compiled (once) as a policy every standard-mode
/// pod's traffic must also pass.
fn node_policy(ctx: &mut Ctx) -> Result<u32, PodError> {
    let groups = ctx.cfg.node.node_groups.clone();
    if groups.is_empty() {
        return Err(PodError::NoNodeGroups);
    }
    if let Some(e) = groups
        .iter()
        .find_map(|g| group_error(ctx.peers.catalog, g))
    {
        return Err(PodError::NodeGroups(Box::new(e)));
    }
    policy_for(ctx, &groups)
        .map(|(id, _, _)| id)
        .map_err(|e| PodError::NodeGroups(Box::new(e)))
}

/// The policy of a group list (compiled once, then cached while pods use it), held in
/// the desired state: (policy id, inbound rules, outbound rules).
fn policy_for(ctx: &mut Ctx, groups: &[String]) -> Result<(u32, usize, usize), PodError> {
    let Ctx {
        cfg,
        peers,
        mem,
        round,
        ..
    } = ctx;
    let Memory {
        cache,
        cookies,
        ids,
        desired,
        ..
    } = &mut **mem;
    let c = cache.get(
        round,
        peers,
        &cfg.node.quotas,
        groups,
        cookies,
        ids,
        desired,
    )?;
    Ok((c.id, c.inbound_rules, c.outbound_rules))
}
