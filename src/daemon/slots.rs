//! Who gets a slot: the global step limit, named pools, and a fair order.
//!
//! Ready steps are ranked by priority (higher first), then by their interval's due time (older
//! first), then by run and step (stable). Every candidate is considered, not only the first few:
//! a step whose pool is full is passed over and the next candidate looked at, so one pool's
//! backlog never holds back work that another pool (or no pool) could start now.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// A step that may start, as the slot allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub run_id: i64,
    pub step_index: usize,
    pub priority: i32,
    pub due: DateTime<Utc>,
    pub pool: Option<String>,
}

/// Slots in use and their limits.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    pub max_running: usize,
    pub running: usize,
    /// Pool name -> (slots, in use).
    pub pools: HashMap<String, (usize, usize)>,
}

impl Slots {
    pub fn new(max_running: usize, pools: impl IntoIterator<Item = (String, usize)>) -> Slots {
        Slots {
            max_running,
            running: 0,
            pools: pools.into_iter().map(|(n, s)| (n, (s, 0))).collect(),
        }
    }

    /// Whether a step of `pool` could take a slot now.
    pub fn has_room(&self, pool: Option<&str>) -> bool {
        if self.running >= self.max_running {
            return false;
        }
        match pool.and_then(|p| self.pools.get(p)) {
            Some((slots, used)) => used < slots,
            None => true,
        }
    }

    pub fn take(&mut self, pool: Option<&str>) {
        self.running += 1;
        if let Some((_, used)) = pool.and_then(|p| self.pools.get_mut(p)) {
            *used += 1;
        }
    }

    pub fn give_back(&mut self, pool: Option<&str>) {
        self.running = self.running.saturating_sub(1);
        if let Some((_, used)) = pool.and_then(|p| self.pools.get_mut(p)) {
            *used = used.saturating_sub(1);
        }
    }

    /// Pools with their (slots, in use), by name.
    pub fn pool_usage(&self) -> Vec<(String, usize, usize)> {
        let mut v: Vec<_> = self
            .pools
            .iter()
            .map(|(n, (s, u))| (n.clone(), *s, *u))
            .collect();
        v.sort();
        v
    }

    /// New limits (a reload); slots in use are kept, so a shrunk pool drains before it admits.
    pub fn resize(&mut self, max_running: usize, pools: impl IntoIterator<Item = (String, usize)>) {
        self.max_running = max_running;
        let mut next: HashMap<String, (usize, usize)> = HashMap::new();
        for (n, s) in pools {
            let used = self.pools.get(&n).map_or(0, |p| p.1);
            next.insert(n, (s, used));
        }
        // A pool that disappeared keeps counting its running steps until they end.
        for (n, (_, used)) in &self.pools {
            if *used > 0 && !next.contains_key(n) {
                next.insert(n.clone(), (0, *used));
            }
        }
        self.pools = next;
    }
}

/// Ranks the candidates and returns, in order, those that get a slot now (taking them in
/// `slots`).
pub fn choose(mut candidates: Vec<Candidate>, slots: &mut Slots) -> Vec<Candidate> {
    candidates.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.due.cmp(&b.due))
            .then(a.run_id.cmp(&b.run_id))
            .then(a.step_index.cmp(&b.step_index))
    });
    let mut chosen = Vec::new();
    for c in candidates {
        if slots.running >= slots.max_running {
            break;
        }
        if slots.has_room(c.pool.as_deref()) {
            slots.take(c.pool.as_deref());
            chosen.push(c);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cand(run_id: i64, priority: i32, due_hour: u32, pool: Option<&str>) -> Candidate {
        Candidate {
            run_id,
            step_index: 0,
            priority,
            due: Utc
                .with_ymd_and_hms(2026, 3, 1, due_hour, 0, 0)
                .single()
                .expect("time"),
            pool: pool.map(str::to_string),
        }
    }

    #[test]
    fn a_backlog_in_one_pool_does_not_hold_back_another() {
        let mut slots = Slots::new(10, [("warehouse".to_string(), 4), ("kafka".to_string(), 2)]);
        // 1,000 warehouse steps, all older than the two kafka steps.
        let mut cands: Vec<Candidate> = (0..1000)
            .map(|i| cand(i, 0, (i % 10) as u32, Some("warehouse")))
            .collect();
        cands.push(cand(5000, 0, 20, Some("kafka")));
        cands.push(cand(5001, 0, 21, Some("kafka")));
        let chosen = choose(cands, &mut slots);
        let kafka: Vec<i64> = chosen
            .iter()
            .filter(|c| c.pool.as_deref() == Some("kafka"))
            .map(|c| c.run_id)
            .collect();
        assert_eq!(kafka, vec![5000, 5001]);
        assert_eq!(chosen.len(), 6);
        assert_eq!(slots.running, 6);
        assert_eq!(slots.pools["warehouse"], (4, 4));
        // The warehouse steps that got slots are the oldest.
        assert!(chosen
            .iter()
            .filter(|c| c.pool.as_deref() == Some("warehouse"))
            .all(|c| c.due.format("%H").to_string() == "00"));
    }

    #[test]
    fn priority_then_due_time() {
        let mut slots = Slots::new(2, []);
        let chosen = choose(
            vec![
                cand(1, 0, 1, None),
                cand(2, 5, 9, None),
                cand(3, 0, 0, None),
            ],
            &mut slots,
        );
        assert_eq!(
            chosen.iter().map(|c| c.run_id).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn the_global_limit_counts_every_pool_and_slots_come_back() {
        let mut slots = Slots::new(3, [("a".to_string(), 5)]);
        slots.take(Some("a"));
        slots.take(None);
        let chosen = choose(
            vec![cand(1, 0, 0, Some("a")), cand(2, 0, 0, None)],
            &mut slots,
        );
        assert_eq!(chosen.len(), 1);
        assert!(!slots.has_room(None));
        slots.give_back(Some("a"));
        slots.give_back(None);
        assert_eq!(slots.running, 1);
        assert_eq!(slots.pools["a"], (5, 1));
        slots.resize(3, [("b".to_string(), 1)]);
        assert_eq!(slots.pools["a"], (0, 1));
        assert!(!slots.has_room(Some("a")));
    }
}
