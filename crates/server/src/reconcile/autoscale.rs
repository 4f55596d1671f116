//! Pools that size themselves: the effective target of a pool with autoscale on, from the claims
//! it has seen and how long its boots take — pure, no I/O, no clock of its own.
//!
//! The rule: a claim finds a VM ready if the pool holds, when it comes, more ready VMs than the
//! claims that arrive while a replacement boots. So the pool wants as many VMs as the most claims
//! it has seen arrive within one boot time, lately (any window of that width in the last
//! [`MEMORY`]), times [`HEADROOM`], within the pool's `min..=max`. It rises at once, since a burst
//! does not wait, and falls slowly: a peak is remembered for [`MEMORY`], and then the target
//! steps down one VM per [`STEP_DOWN`]. A rate that flaps keeps its peak in memory, so the
//! target does not flap with it.

use std::time::Duration;

use rand::{Rng, SeedableRng};
pub use warmpool_types::state::ScaleReason;

/// How long a peak of claims is remembered.
pub const MEMORY: Duration = Duration::from_secs(30 * 60);
/// The least time between two steps down of the target (and after any rise).
pub const STEP_DOWN: Duration = Duration::from_secs(60);
/// Ready VMs kept per claim expected within one boot time.
pub const HEADROOM: f64 = 1.25;

/// The pool's bounds, as its owner set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: usize,
    pub max: usize,
}

/// What a pool keeps between passes: its effective target and when that last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scale {
    pub target: usize,
    pub changed_at: i64,
}

/// One pass's decision, with what it was made from (for `GET .../warm-pool/stats`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub scale: Scale,
    /// What the demand alone asks for, before the bounds and the slow fall.
    pub wanted: usize,
    /// The most claims seen within one boot time in the last [`MEMORY`].
    pub peak: usize,
    pub why: ScaleReason,
}

/// The most of `times` (sorted, milliseconds) that fall within any window `width` ms wide.
pub fn peak_in_window(times: &[i64], width: i64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, &t) in times.iter().enumerate() {
        while times[start] <= t - width {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

/// The pool's target at `now`, from the last decision's `prev`, the times of its claims
/// (sorted; older than [`MEMORY`] are ignored) and its boot time `boot_ms`.
pub fn decide(bounds: Bounds, prev: Scale, claims: &[i64], boot_ms: i64, now: i64) -> Decision {
    let (min, max) = (bounds.min, bounds.max.max(bounds.min));
    let since = now - MEMORY.as_millis() as i64;
    let recent = &claims[claims.partition_point(|&t| t <= since)..];
    let recent = &recent[..recent.partition_point(|&t| t <= now)];
    let peak = peak_in_window(recent, boot_ms.max(1));
    let wanted = (peak as f64 * HEADROOM).ceil() as usize;
    let bounded = wanted.clamp(min, max);
    let current = prev.target.clamp(min, max);
    let why_bound = |t: usize, why: ScaleReason| {
        if t == min && wanted < min {
            ScaleReason::Min
        } else if t == max && wanted > max {
            ScaleReason::Max
        } else {
            why
        }
    };
    let (target, changed_at, why) = if bounded > current {
        (bounded, now, why_bound(bounded, ScaleReason::Demand))
    } else if bounded == current {
        let changed = if current == prev.target {
            prev.changed_at
        } else {
            now
        };
        (current, changed, why_bound(current, ScaleReason::Demand))
    } else if now - prev.changed_at >= STEP_DOWN.as_millis() as i64 {
        (
            current - 1,
            now,
            why_bound(current - 1, ScaleReason::SteppedDown),
        )
    } else if current != prev.target {
        // The bounds moved under it: follow them now.
        (current, now, why_bound(current, ScaleReason::Holding))
    } else {
        (current, prev.changed_at, ScaleReason::Holding)
    };
    Decision {
        scale: Scale { target, changed_at },
        wanted,
        peak,
        why,
    }
}

/// One day of claims (epoch-free: milliseconds from midnight), drawn from `seed`: a quiet
/// night, a morning burst of `burst_per_min` claims a minute for 45 minutes, a steady
/// afternoon. What the autoscale tests and the benchmark replay.
pub fn bursty_day(seed: u64, burst_per_min: f64) -> Vec<i64> {
    let per_minute = |second: i64| -> f64 {
        let hour = second as f64 / 3600.0;
        match hour {
            h if h < 7.0 => 0.1,
            h if h < 9.0 => 1.0,
            h if h < 9.75 => burst_per_min,
            h if h < 12.0 => 3.0,
            h if h < 13.0 => 1.0,
            h if h < 18.0 => 4.0,
            _ => 0.3,
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut day = Vec::new();
    for second in 0..24 * 3600 {
        if rng.gen::<f64>() < per_minute(second) / 60.0 {
            day.push(second * 1000 + rng.gen_range(0..1000));
        }
    }
    day
}

#[cfg(test)]
mod tests;
