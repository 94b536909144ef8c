//! Cookies: the number each compiled entry carries to name the group and rule that
//! allowed, stable for the daemon's life (and saved across restarts).
use std::collections::HashMap;
use std::sync::Arc;

use crate::model::group::Direction;

/// Where a cookie points: one rule of one group.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RuleRef {
    /// Shared by every rule of the group (tens of thousands of rules, a few hundred
    /// groups).
    pub group: Arc<str>,
    pub direction: Direction,
    pub index: usize,
}

/// Cookie <-> rule. Cookies start at 1 (0 means "no rule") and are stable for the life
/// of the daemon, so a flow's cookie keeps naming its rule.
///
/// `refs` is the table (saved in memory.json); `by_group` indexes it by group name,
/// direction and rule index, so that compiling a pod's rules looks cookies up without
/// building (and hashing) a `RuleRef` per rule — that was a fifth of a re-plan.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct CookieTable {
    refs: Vec<RuleRef>,
    #[serde(skip)]
    by_group: HashMap<Arc<str>, [Vec<u32>; 2]>,
    /// How many of `refs` `by_group` covers (a table loaded from memory.json starts
    /// unindexed).
    #[serde(skip)]
    indexed: usize,
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

impl CookieTable {
    /// The cookie of rule `index` of `group` in `direction`, made on first use.
    pub fn cookie(&mut self, group: &str, direction: Direction, index: usize) -> u32 {
        self.catch_up();
        if let Some(c) = self
            .by_group
            .get(group)
            .and_then(|d| d[slot(direction)].get(index))
            .filter(|c| **c != 0)
        {
            return *c;
        }
        let group = self
            .by_group
            .get_key_value(group)
            .map_or_else(|| Arc::from(group), |(k, _)| k.clone());
        self.refs.push(RuleRef {
            group,
            direction,
            index,
        });
        self.catch_up();
        self.refs.len() as u32
    }

    /// How many cookies were handed out.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    pub fn rule(&self, cookie: u32) -> Option<&RuleRef> {
        self.refs.get((cookie as usize).checked_sub(1)?)
    }

    /// Indexes the entries of `refs` not indexed yet.
    fn catch_up(&mut self) {
        while self.indexed < self.refs.len() {
            // Refs read back from memory.json each hold their own copy of the name.
            if let Some((k, _)) = self.by_group.get_key_value(&self.refs[self.indexed].group) {
                self.refs[self.indexed].group = k.clone();
            }
            let r = &self.refs[self.indexed];
            let v = &mut self.by_group.entry(r.group.clone()).or_default()[slot(r.direction)];
            if v.len() <= r.index {
                v.resize(r.index + 1, 0);
            }
            self.indexed += 1;
            v[r.index] = self.indexed as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_stable_and_survive_a_round_trip() {
        let mut t = CookieTable::default();
        let a = t.cookie("sg-a", Direction::Inbound, 3);
        let b = t.cookie("sg-a", Direction::Outbound, 3);
        let c = t.cookie("sg-b", Direction::Inbound, 0);
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(t.cookie("sg-a", Direction::Inbound, 3), a, "stable");
        let saved = serde_json::to_string(&t).unwrap();
        let mut back: CookieTable = serde_json::from_str(&saved).unwrap();
        assert_eq!(
            back.cookie("sg-b", Direction::Inbound, 0),
            c,
            "after a restart"
        );
        assert_eq!(
            back.cookie("sg-c", Direction::Inbound, 1),
            4,
            "new ones after the old"
        );
        assert_eq!(back.rule(2).unwrap().direction, Direction::Outbound);
    }
}
