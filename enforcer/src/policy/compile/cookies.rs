//! Cookies: the number each compiled entry carries to name the group and rule that
//! allowed, stable for the daemon's life (and saved across restarts).
use std::collections::HashMap;

use crate::model::group::Direction;

/// Where a cookie points: one rule of one group.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RuleRef {
    pub group: String,
    pub direction: Direction,
    pub index: usize,
}

/// Cookie <-> rule. Cookies start at 1 (0 means "no rule") and are stable for the life
/// of the daemon, so a flow's cookie keeps naming its rule.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct CookieTable {
    #[serde(with = "crate::memory::pairs")]
    by_ref: HashMap<RuleRef, u32>,
    refs: Vec<RuleRef>,
}

impl CookieTable {
    pub fn cookie(&mut self, r: RuleRef) -> u32 {
        if let Some(c) = self.by_ref.get(&r) {
            return *c;
        }
        self.refs.push(r.clone());
        let c = self.refs.len() as u32;
        self.by_ref.insert(r, c);
        c
    }
    pub fn rule(&self, cookie: u32) -> Option<&RuleRef> {
        self.refs.get((cookie as usize).checked_sub(1)?)
    }
}
