//! The autoscale rule, table-tested, and a bursty day replayed through it.

use super::*;

const S: i64 = 1000;
const MIN: i64 = 60 * S;

fn bounds(min: usize, max: usize) -> Bounds {
    Bounds { min, max }
}

#[test]
fn the_peak_is_the_most_claims_within_any_window() {
    assert_eq!(peak_in_window(&[], 10), 0);
    assert_eq!(peak_in_window(&[5], 10), 1);
    // 0, 5, 9 fit in one 10 ms window; 10 starts the next (a window is half-open).
    assert_eq!(peak_in_window(&[0, 5, 9, 10, 30], 10), 3);
    assert_eq!(peak_in_window(&[0, 10, 20, 30], 10), 1);
    assert_eq!(peak_in_window(&[0, 1, 2, 50, 51, 52, 53], 10), 4);
}

/// `n` claims spread evenly over `over` ms, ending at `end`.
fn claims(n: usize, over: i64, end: i64) -> Vec<i64> {
    (0..n as i64)
        .map(|i| end - over + over * (i + 1) / n as i64)
        .collect()
}

#[test]
fn decisions() {
    let boot = 90 * S;
    let now = 10 * 3600 * S;
    let at = |target, changed_at| Scale { target, changed_at };
    struct Case {
        what: &'static str,
        bounds: Bounds,
        prev: Scale,
        claims: Vec<i64>,
        want: (usize, i64, ScaleReason),
    }
    let cases = [
        Case {
            what: "a quiet pool stays at its minimum",
            bounds: bounds(2, 10),
            prev: at(2, 0),
            claims: vec![],
            want: (2, 0, ScaleReason::Min),
        },
        Case {
            what: "a burst raises the target at once, with headroom",
            bounds: bounds(1, 20),
            prev: at(1, 0),
            claims: claims(10, 60 * S, now),
            want: (13, now, ScaleReason::Demand),
        },
        Case {
            what: "the maximum holds it down",
            bounds: bounds(1, 20),
            prev: at(5, 0),
            claims: claims(100, 60 * S, now),
            want: (20, now, ScaleReason::Max),
        },
        Case {
            what: "a peak still remembered keeps the target",
            bounds: bounds(1, 20),
            prev: at(13, now - 20 * MIN),
            claims: claims(10, 60 * S, now - 20 * MIN),
            want: (13, now - 20 * MIN, ScaleReason::Demand),
        },
        Case {
            what: "a forgotten peak lets it step down, one VM",
            bounds: bounds(1, 20),
            prev: at(13, now - 40 * MIN),
            claims: claims(10, 60 * S, now - 40 * MIN),
            want: (12, now, ScaleReason::SteppedDown),
        },
        Case {
            what: "but not twice within a minute",
            bounds: bounds(1, 20),
            prev: at(12, now - 30 * S),
            claims: claims(10, 60 * S, now - 40 * MIN),
            want: (12, now - 30 * S, ScaleReason::Holding),
        },
        Case {
            what: "it steps down to the minimum and says so",
            bounds: bounds(3, 20),
            prev: at(4, now - 2 * MIN),
            claims: vec![],
            want: (3, now, ScaleReason::Min),
        },
        Case {
            what: "a minimum raised above the target is followed at once",
            bounds: bounds(6, 20),
            prev: at(2, now - 5 * S),
            claims: vec![],
            want: (6, now, ScaleReason::Min),
        },
        Case {
            what: "a maximum lowered below the target is followed at once",
            bounds: bounds(1, 4),
            prev: at(9, now - 5 * S),
            claims: claims(10, 60 * S, now),
            want: (4, now, ScaleReason::Max),
        },
        Case {
            what: "claims after now (a clock behind another node's) are not counted",
            bounds: bounds(1, 20),
            prev: at(1, 0),
            claims: claims(10, 60 * S, now + 5 * MIN),
            want: (1, 0, ScaleReason::Min),
        },
    ];
    for c in cases {
        let d = decide(c.bounds, c.prev, &c.claims, boot, now);
        assert_eq!(
            (d.scale.target, d.scale.changed_at, d.why),
            c.want,
            "{}: {d:?}",
            c.what
        );
    }
}

/// A rate that flaps (a minute of claims, a minute of none) does not make the target flap: it
/// rises with the first minute and stays while the flapping goes on.
#[test]
fn a_flapping_rate_keeps_the_target_steady() {
    let boot = 90 * S;
    let mut all = Vec::new();
    let mut scale = Scale::default();
    let mut targets = Vec::new();
    for minute in 0..60 {
        if minute % 2 == 0 {
            all.extend(claims(8, 60 * S, (minute + 1) * MIN));
        }
        for tick in 0..12 {
            let now = minute * MIN + (tick + 1) * 5 * S;
            scale = decide(bounds(1, 20), scale, &all, boot, now).scale;
        }
        targets.push(scale.target);
    }
    let steady = targets[1];
    assert!(
        targets[1..].iter().all(|&t| t == steady),
        "the target moved: {targets:?}"
    );
    assert!(steady >= 10, "{targets:?}");
}

/// What a day of claims found: how many were served warm, and the ready VMs' idle seconds.
struct Outcome {
    warm: usize,
    claims: usize,
    idle_vm_s: f64,
}

/// Replays `day` against a pool whose target `target_at(claims so far, now)` gives, boots
/// taking `boot` ms, the planner running every 5 s and after each claim (as the reconciler does).
fn replay(day: &[i64], boot: i64, mut target_at: impl FnMut(&[i64], i64) -> usize) -> Outcome {
    let (mut ready, mut booting): (usize, Vec<i64>) = (0, Vec::new());
    let (mut warm, mut idle_ms, mut next, mut seen) = (0, 0i64, 0, 0);
    let mut plan = |ready: &mut usize, booting: &mut Vec<i64>, seen: usize, now: i64| {
        let target = target_at(&day[..seen], now);
        if *ready > target {
            *ready = target;
        }
        while *ready + booting.len() < target {
            booting.push(now + boot);
        }
    };
    let mut now = 0;
    while now < 24 * 3600 * S {
        let step = 100;
        booting.retain(|&done| {
            if done <= now {
                ready += 1;
                false
            } else {
                true
            }
        });
        while next < day.len() && day[next] <= now {
            if ready > 0 {
                ready -= 1;
                warm += 1;
            }
            next += 1;
            seen = next;
            plan(&mut ready, &mut booting, seen, now);
        }
        if now % (5 * S) == 0 {
            plan(&mut ready, &mut booting, seen, now);
        }
        idle_ms += ready as i64 * step;
        now += step;
    }
    Outcome {
        warm,
        claims: day.len(),
        idle_vm_s: idle_ms as f64 / 1000.0,
    }
}

/// The measure, in the planner alone: autoscale serves at least 98% of a bursty day's
/// claims warm with at most half the idle VM-seconds of a fixed pool sized for the peak.
#[test]
fn a_bursty_day_is_served_warm_with_half_the_idle_vms() {
    let boot = 90 * S;
    for seed in [1, 7, 42] {
        let day = bursty_day(seed, 15.0);
        let fixed = ((peak_in_window(&day, boot) as f64) * HEADROOM).ceil() as usize;
        let peak_sized = replay(&day, boot, |_, _| fixed);
        let mut scale = Scale::default();
        let auto = replay(&day, boot, |seen, now| {
            scale = decide(bounds(1, 50), scale, seen, boot, now).scale;
            scale.target
        });
        let share = |o: &Outcome| o.warm as f64 / o.claims as f64;
        eprintln!(
            "seed {seed}: {} claims; autoscale {:.4} warm, {:.0} idle VM-s; fixed pool of {fixed} \
             {:.4} warm, {:.0} idle VM-s",
            day.len(),
            share(&auto),
            auto.idle_vm_s,
            share(&peak_sized),
            peak_sized.idle_vm_s
        );
        assert!(
            share(&auto) >= 0.98,
            "seed {seed}: autoscale served {:.4} warm ({} of {}); a fixed pool of {fixed}: {:.4}",
            share(&auto),
            auto.warm,
            auto.claims,
            share(&peak_sized)
        );
        assert!(
            auto.idle_vm_s <= 0.5 * peak_sized.idle_vm_s,
            "seed {seed}: idle VM-s autoscale {:.0}, fixed pool of {fixed} {:.0}",
            auto.idle_vm_s,
            peak_sized.idle_vm_s
        );
    }
}
