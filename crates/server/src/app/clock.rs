//! Time as the app sees it. Production uses the system clock; reconciler tests move a clock of
//! their own forward instead of sleeping through `maxAgeMinutes`.

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        warmpool_types::time::now_ms()
    }
}

/// The system clock plus an offset that tests advance.
#[derive(Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        warmpool_types::time::now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}
