//! Time as the app sees it. Production uses the system clock; reconciler tests move a clock of
//! their own forward instead of sleeping through `maxAgeMinutes`; the benchmark's replay of a
//! day of claims runs a `sim` server on a clock that runs faster.

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

/// A clock that starts at the system's time and runs `speed` times faster (the `sim` backend's
/// `--sim-clock-speed`: a day of claims replayed in minutes, every rule of the pool that counts
/// time — boot times, the autoscale window, `maxAgeMinutes` — seeing the day's time).
pub struct FastClock {
    start_ms: i64,
    start: std::time::Instant,
    speed: f64,
}

impl FastClock {
    pub fn new(speed: f64) -> Self {
        Self {
            start_ms: warmpool_types::time::now_ms(),
            start: std::time::Instant::now(),
            speed,
        }
    }
}

impl Clock for FastClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + (self.start.elapsed().as_secs_f64() * 1000.0 * self.speed) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_runs_faster() {
        let c = FastClock::new(1000.0);
        let (t0, real) = (c.now_ms(), std::time::Instant::now());
        while real.elapsed() < std::time::Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        assert!(c.now_ms() - t0 >= 5000, "5 ms are 5 s at 1000x");
    }
}
