//! Limits that keep one caller from crowding out the others: a request rate per token, and a cap
//! on VMs being booted for claims per project.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{AppError, AppResult};

pub struct Limits {
    rate: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    /// Serialises the check-then-boot of cold claims per project.
    cold_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
            cold_locks: Mutex::new(HashMap::new()),
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

    pub fn cold_lock(&self, project_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.cold_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(project_id.to_string())
            .or_default()
            .clone()
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
