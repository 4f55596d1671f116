//! Limits that keep one caller from crowding out the others: a request rate per token, and a cap
//! on VMs being booted for claims per project on this server.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{AppError, AppResult};

pub struct Limits {
    rate: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    /// Boots for claims running on this server, per project: each is held by a [`ColdSlot`].
    /// Counted in memory, not read from the store under a lock: a burst of claims on an empty
    /// pool then starts its boots side by side instead of one after another behind a read and a
    /// write each.
    cold: Arc<Mutex<HashMap<String, usize>>>,
}

/// One boot for a claim counted against its project's cap, until dropped (when its steps are
/// over).
pub struct ColdSlot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    project_id: String,
}

impl Drop for ColdSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.project_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.project_id);
            }
        }
    }
}

impl Limits {
    /// `per_sec` requests per second per token with bursts of `burst`; 0 turns the limit off.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_sec).map(|r| {
            let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(r);
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        Self {
            rate,
            cold: Arc::default(),
        }
    }

    /// Counts one request of the token whose hash is `key`.
    pub fn check_rate(&self, key: &[u8; 32]) -> AppResult<()> {
        let Some(limiter) = &self.rate else {
            return Ok(());
        };
        match limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(AppError::RateLimited {
                    message: "too many requests with this token; slow down".into(),
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })
            }
        }
    }

    /// A slot for one more boot for a claim of `project_id`, unless `max` are running already.
    pub fn cold_slot(&self, project_id: &str, max: usize) -> AppResult<ColdSlot> {
        let mut counts = self.cold.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(project_id.to_string()).or_default();
        if *n >= max {
            return Err(AppError::RateLimited {
                message: format!(
                    "{n} VMs are already booting for claims of this project (the most at once); retry shortly"
                ),
                retry_after_secs: COLD_CAP_RETRY.as_secs(),
            });
        }
        *n += 1;
        Ok(ColdSlot {
            counts: self.cold.clone(),
            project_id: project_id.to_string(),
        })
    }

    /// Forgets idle rate-limit state now and then.
    pub fn tidy(&self) {
        if let Some(l) = &self.rate {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// How long a client should wait after hitting the cold-claim cap.
pub const COLD_CAP_RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_slots_cap_each_project_until_dropped() {
        let l = Limits::new(0, 0);
        let a = l.cold_slot("p1", 2).unwrap();
        let b = l.cold_slot("p1", 2).unwrap();
        // Another project has a cap of its own.
        let other = l.cold_slot("p2", 2).unwrap();
        let e = l
            .cold_slot("p1", 2)
            .err()
            .expect("a third slot over a cap of 2");
        assert!(matches!(e, AppError::RateLimited { .. }), "{e:?}");
        drop(a);
        let c = l.cold_slot("p1", 2).unwrap();
        drop((b, c, other));
        assert!(
            l.cold.lock().unwrap().is_empty(),
            "projects without boots are forgotten"
        );
    }
}
