//! A day of claims, replayed: one seeded bursty day (a quiet night, a morning burst, a steady
//! afternoon) against two pools of one `sim` server whose clock runs fast, its VMs taking a
//! realistic minute to boot — one pool fixed at the size the day's peak asks for, one
//! autoscaled — in the same run, at the same instants. For each: the share of claims served
//! warm, and the VM-seconds its ready VMs sat idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use warmpool_client::Claim;
use warmpool_types::api::{ClaimBody, UpdateAutoscaleBody, UpdateWarmPoolBody};

use super::{Report, Row, Server};
use crate::reconcile::autoscale::{bursty_day, peak_in_window, HEADROOM};

/// The day replayed: its seed and its morning burst, in claims a minute.
const SEED: u64 = 7;
const BURST_PER_MIN: f64 = 8.0;
/// How long a VM takes to boot, in the day's time: a repository cloned and set up.
const BOOT: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// How often each pool's ready VMs are counted, in real time.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// What one pool did over the day.
#[derive(Default)]
struct Tally {
    claims: AtomicUsize,
    warm: AtomicUsize,
    /// Ready VMs × real milliseconds, summed over samples.
    idle_vm_ms: std::sync::Mutex<f64>,
    /// The most ready VMs seen at once.
    most_ready: AtomicUsize,
    /// Claims not served warm, by hour of the day.
    missed_by_hour: [AtomicUsize; 24],
}

impl Tally {
    fn warm_share(&self) -> f64 {
        self.warm.load(Ordering::Relaxed) as f64 / self.claims.load(Ordering::Relaxed).max(1) as f64
    }
}

/// One claim, released at once (a task of no length: what is measured is the pool).
async fn claim_and_release(s: &Server, project: &str, tally: &Tally, hour: usize) {
    tally.claims.fetch_add(1, Ordering::Relaxed);
    let missed = || tally.missed_by_hour[hour.min(23)].fetch_add(1, Ordering::Relaxed);
    let body = ClaimBody {
        wait_seconds: Some(0.0),
        ..Default::default()
    };
    // A claim refused (too many booting for claims already) is a claim not served warm.
    let id = match s.api.claim(project, &body).await {
        Ok(Claim::Ready(r)) => {
            if r.warm {
                tally.warm.fetch_add(1, Ordering::Relaxed);
            } else {
                missed();
            }
            r.instance.id
        }
        Ok(Claim::Pending(r)) => {
            missed();
            r.instance.id
        }
        Err(_) => {
            missed();
            return;
        }
    };
    let _ = s.api.delete_instance(project, &id).await;
}

/// A pool's ready VMs, from the `/metrics` text.
fn ready_in(metrics: &str, project: &str) -> usize {
    let label = format!("project=\"{project}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("warmpool_pool_instances{") && l.contains(&label))
        .filter(|l| l.contains("state=\"ready\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

async fn ready_of(s: &Server, project: &str) -> anyhow::Result<usize> {
    Ok(s.api.pool_stats(project).await?.ready as usize)
}

pub async fn day(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    // The day in 2 minutes (1 in --quick): a boot is then 83 (42) ms of real time.
    let speed: f64 = if quick { 1440.0 } else { 720.0 };
    let day = bursty_day(SEED, BURST_PER_MIN);
    let boot_ms = BOOT.as_millis() as i64;
    let peak = peak_in_window(&day, boot_ms);
    let fixed = ((peak as f64 * HEADROOM).ceil() as usize).min(20);
    let create_ms = (BOOT.as_secs_f64() * 1000.0 / speed).round() as u64;
    let s = Server::start(&[
        "--backend",
        "sim",
        "--sim-create-ms",
        &create_ms.to_string(),
        "--sim-clock-speed",
        &speed.to_string(),
        "--reconcile-interval-ms",
        "20",
        "--max-cold-claims",
        "1000",
        // A node with room for what both pools boot at once: the pools are compared, not the
        // node's boot slots.
        "--max-parallel-boots",
        "64",
    ])
    .await?;
    let fixed_pool = s.pool_project("fixed-peak".into(), fixed).await?;
    let auto_pool = s.pool_project("autoscale".into(), 1).await?;
    for p in [&fixed_pool, &auto_pool] {
        let age = UpdateWarmPoolBody {
            max_age_minutes: Some(180.0),
            ..Default::default()
        };
        s.api.update_warm_pool(p, &age).await?;
    }
    let on = UpdateAutoscaleBody {
        enabled: Some(true),
        min: Some(1.0),
        max: Some(20.0),
    };
    s.api.update_autoscale(&auto_pool, &on).await?;
    // The day starts with both pools as they are at rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready_of(&s, &fixed_pool).await? < fixed || ready_of(&s, &auto_pool).await? < 1 {
        if Instant::now() > deadline {
            bail!("the pools did not fill in a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let s = Arc::new(s);
    let tallies = [Arc::new(Tally::default()), Arc::new(Tally::default())];
    let pools = [fixed_pool.clone(), auto_pool.clone()];
    let real = |virtual_ms: i64| Duration::from_secs_f64(virtual_ms as f64 / 1000.0 / speed);
    let length = real(DAY.as_millis() as i64);
    let start = tokio::time::Instant::now();
    // Each pool's ready VMs, counted through the day.
    let sampler = {
        let (s, tallies, pools) = (s.clone(), tallies.clone(), pools.clone());
        let mut targets = Vec::new();
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            let mut next_hour = 0;
            while last < start + length {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let now = tokio::time::Instant::now();
                let dt = (now - last).as_secs_f64() * 1000.0;
                last = now;
                // One read of the gauges the reconciler sets each pass, for both pools.
                let text = s.api.metrics().await?;
                for (p, t) in pools.iter().zip(&tallies) {
                    let ready = ready_in(&text, p);
                    *t.idle_vm_ms.lock().unwrap_or_else(|e| e.into_inner()) += ready as f64 * dt;
                    t.most_ready.fetch_max(ready, Ordering::Relaxed);
                }
                let hour = ((now - start).as_secs_f64() * speed / 3600.0) as usize;
                if hour >= next_hour {
                    let st = s.api.pool_stats(&pools[1]).await?;
                    targets.push(st.effective_target.unwrap_or(0));
                    next_hour = hour + 1;
                }
            }
            anyhow::Ok(targets)
        })
    };
    let mut claims = Vec::with_capacity(day.len() * 2);
    for &at in &day {
        tokio::time::sleep_until(start + real(at)).await;
        let hour = (at / 3_600_000) as usize;
        for (p, t) in pools.iter().zip(&tallies) {
            let (s, p, t) = (s.clone(), p.clone(), t.clone());
            claims.push(tokio::spawn(async move {
                claim_and_release(&s, &p, &t, hour).await
            }));
        }
    }
    for c in claims {
        c.await?;
    }
    let hourly = sampler.await?.context("counting ready VMs")?;
    let behind = start.elapsed().saturating_sub(length);

    // Real milliseconds × speed are the day's milliseconds.
    let idle_vm_s =
        |t: &Tally| *t.idle_vm_ms.lock().unwrap_or_else(|e| e.into_inner()) * speed / 1000.0;
    let (f, a) = (&tallies[0], &tallies[1]);
    report.figure("autoscale_warm_share", Some(a.warm_share()));
    report.figure("autoscale_idle_vm_s", Some(idle_vm_s(a)));
    report.figure("fixed_peak_warm_share", Some(f.warm_share()));
    report.figure("fixed_peak_idle_vm_s", Some(idle_vm_s(f)));
    let pct = |x: f64| (x * 10_000.0).round() / 100.0;
    let missed = |t: &Tally| -> Vec<usize> {
        t.missed_by_hour
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .collect()
    };
    report.details.insert(
        "day".into(),
        json!({
            "seed": SEED,
            "claims": day.len(),
            "burstPerMin": BURST_PER_MIN,
            "bootS": BOOT.as_secs(),
            "peakClaimsPerBoot": peak,
            "fixedPoolSize": fixed,
            "clockSpeed": speed,
            "replayBehindMs": behind.as_millis() as u64,
            "autoscale": {
                "warmPct": pct(a.warm_share()),
                "idleVmHours": idle_vm_s(a) / 3600.0,
                "mostReady": a.most_ready.load(Ordering::Relaxed),
                "targetByHour": hourly,
                "missedByHour": missed(a),
            },
            "fixedPeak": {
                "warmPct": pct(f.warm_share()),
                "idleVmHours": idle_vm_s(f) / 3600.0,
                "mostReady": f.most_ready.load(Ordering::Relaxed),
                "missedByHour": missed(f),
            },
        }),
    );
    report.rows.push(Row {
        what: format!("bursty day ({} claims): served warm, autoscale", day.len()),
        value: Some(pct(a.warm_share())),
        unit: "%",
        baseline: Some((format!("fixed pool of {fixed}"), pct(f.warm_share()))),
        target: "≥ 98%".into(),
        met: Some(a.warm_share() >= 0.98),
    });
    report.rows.push(Row {
        what: "bursty day: idle VM-hours, autoscale".into(),
        value: Some(idle_vm_s(a) / 3600.0),
        unit: "h",
        baseline: Some((format!("fixed pool of {fixed}"), idle_vm_s(f) / 3600.0)),
        target: "≤ 0.5x".into(),
        met: Some(idle_vm_s(a) <= 0.5 * idle_vm_s(f)),
    });
    Ok(())
}
