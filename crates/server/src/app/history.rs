//! Each pool's size over the last hour, sampled by the reconciler, for the dashboard's chart.
//! In memory: a restart starts a new hour (the store holds the instances, not their past counts).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use warmpool_types::api::{PoolHistory, PoolSample};
use warmpool_types::time::fmt_ms;

use super::{App, Caller};
use crate::error::AppResult;

/// At most one sample per pool this often.
const EVERY_MS: i64 = 15_000;
const KEEP_MS: i64 = 3_600_000;

/// `[ready, provisioning, claimed, failed]` at a time.
type Sample = (i64, [u64; 4]);

#[derive(Default)]
pub struct History {
    pools: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Keeps the counts if the pool's last sample is old enough or they changed.
    pub fn record(&self, project_id: &str, now: i64, counts: [u64; 4]) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let q = match pools.get_mut(project_id) {
            Some(q) => q,
            None => pools.entry(project_id.to_string()).or_default(),
        };
        if q.back()
            .is_some_and(|(at, c)| now - at < EVERY_MS && *c == counts)
        {
            return;
        }
        // A change within the interval replaces the last sample rather than adding one, so a
        // busy pool still keeps at most one sample per interval.
        if q.back().is_some_and(|(at, _)| now - at < EVERY_MS) && q.len() > 1 {
            q.pop_back();
        }
        q.push_back((now, counts));
        while q.front().is_some_and(|(at, _)| now - at > KEEP_MS) {
            q.pop_front();
        }
    }

    fn of(&self, project_id: &str) -> Vec<Sample> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .get(project_id)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl App {
    pub async fn pool_history(&self, caller: &Caller, project_id: &str) -> AppResult<PoolHistory> {
        self.project_for(caller, project_id).await?;
        let now = self.now();
        Ok(PoolHistory {
            samples: self
                .history
                .of(project_id)
                .into_iter()
                .filter(|(at, _)| now - at <= KEEP_MS)
                .map(|(at, [ready, provisioning, claimed, failed])| PoolSample {
                    at: fmt_ms(at),
                    ready,
                    provisioning,
                    claimed,
                    failed,
                })
                .collect(),
        })
    }
}
