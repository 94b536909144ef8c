//! `enforcer status --rules`: each pod's rules with the flows each admitted (the
//! programs' `RULE_HITS`, since the daemon started), rules that never matched marked.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::explain::rule_text;
use crate::model::group::{Direction, GroupCatalog};
use crate::policy::compile::CookieTable;
use crate::status::{PodState, PodStatus};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHits {
    pub group: String,
    pub direction: Direction,
    /// Its place among the group's rules of that direction (one per peer).
    pub index: usize,
    pub rule: String,
    /// EC2's `SecurityGroupRuleId`, when the source has it.
    pub rule_id: Option<String>,
    /// Flows it admitted (untracked rules: packets).
    pub hits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRules {
    pub namespace: String,
    pub name: String,
    pub rules: Vec<RuleHits>,
}

/// The enforced pods' rules (their groups', then in standard mode the node's), with the
/// hits counted under each rule's cookie.
pub fn report(
    pods: &[PodStatus],
    node_groups: &[String],
    catalog: &GroupCatalog,
    cookies: &CookieTable,
    hits: &HashMap<u32, u64>,
) -> Vec<PodRules> {
    let by_rule: HashMap<(&str, Direction, usize), u32> = (1..=cookies.len() as u32)
        .filter_map(|c| {
            cookies
                .rule(c)
                .map(|r| ((&*r.group, r.direction, r.index), c))
        })
        .collect();
    pods.iter()
        .filter(|p| p.state == PodState::Enforced)
        .map(|p| {
            let standard = p.mode == Some(crate::config::Mode::Standard);
            let groups = p
                .groups
                .iter()
                .chain(node_groups.iter().filter(|_| standard));
            let mut rules = Vec::new();
            for g in groups {
                let Some(group) = catalog.groups.get(g) else {
                    continue;
                };
                for direction in [Direction::Inbound, Direction::Outbound] {
                    for (index, rule) in group.rules(direction).iter().enumerate() {
                        let cookie = by_rule.get(&(g.as_str(), direction, index));
                        rules.push(RuleHits {
                            group: g.clone(),
                            direction,
                            index,
                            rule: rule_text(rule, direction),
                            rule_id: catalog
                                .rule_ids
                                .get(&(g.clone(), direction, index))
                                .cloned(),
                            hits: cookie.and_then(|c| hits.get(c)).copied().unwrap_or(0),
                        });
                    }
                }
            }
            PodRules {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                rules,
            }
        })
        .collect()
}

/// The table: one block per pod, a line per rule.
pub fn render(report: &[PodRules]) -> String {
    let mut out = String::new();
    for p in report {
        out.push_str(&format!("{}/{}\n", p.namespace, p.name));
        if p.rules.is_empty() {
            out.push_str("  (no rules)\n");
        }
        for r in &p.rules {
            let dir = if r.direction == Direction::Inbound {
                "inbound"
            } else {
                "outbound"
            };
            out.push_str(&format!(
                "  {:<24} {:<8} #{:<3} {:<48} {:>8}{}{}\n",
                r.group,
                dir,
                r.index,
                r.rule,
                r.hits,
                r.rule_id
                    .as_ref()
                    .map_or(String::new(), |i| format!("  {i}")),
                if r.hits == 0 { "  never matched" } else { "" }
            ));
        }
    }
    out
}
