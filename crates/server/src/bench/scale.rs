//! The control plane at scale: one `sim` server holding 1,000 and then 10,000 ready VMs (50 and
//! 500 projects × 20). At each size: the reconciler's pass time, the server's memory, and
//! `GET /warm-pool` latency while claims run — and how each grows per VM from one size to the next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use warmpool_types::api::ClaimBody;

use super::{answered, percentile, Report, Row, Server};

const PER_POOL: usize = 20;

/// Mean reconciler pass over the next `passes` passes, from the server's own histogram.
async fn reconcile_mean_ms(s: &Server, passes: f64) -> anyhow::Result<f64> {
    let (sum0, n0) = (
        s.metric_sum("warmpool_reconcile_duration_seconds_sum")
            .await?,
        s.metric_sum("warmpool_reconcile_duration_seconds_count")
            .await?,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = s
            .metric_sum("warmpool_reconcile_duration_seconds_count")
            .await?;
        if n - n0 >= passes {
            let sum = s
                .metric_sum("warmpool_reconcile_duration_seconds_sum")
                .await?;
            return Ok((sum - sum0) / (n - n0) * 1000.0);
        }
        if Instant::now() > deadline {
            bail!("the reconciler ran {} passes in 2 minutes", n - n0);
        }
    }
}

struct Size {
    vms: usize,
    reconcile_ms: f64,
    rss_mb: f64,
    get_p50_ms: f64,
    get_p99_ms: f64,
    claims: usize,
}

/// Measures one size: the pools are full; claims (each released at once) run against random
/// pools while `GET /warm-pool` is timed.
async fn measure(s: &Server, projects: &[String], quick: bool) -> anyhow::Result<Size> {
    let vms = projects.len() * PER_POOL;
    // Steady state: the boots that just filled the pools keep their live event streams for
    // clients about to connect for a few seconds; what is measured is VMs being tracked.
    tokio::time::sleep(crate::app::events::LINGER + Duration::from_secs(1)).await;
    let reconcile_ms = reconcile_mean_ms(s, if quick { 6.0 } else { 20.0 }).await?;
    let rss_mb = s.rss_mb().context("cannot read the server's memory")?;
    let stop = Arc::new(AtomicBool::new(false));
    let projects = Arc::new(projects.to_vec());
    let mut claimers = Vec::new();
    for w in 0..4usize {
        let (stop, projects) = (stop.clone(), projects.clone());
        let api = s.api.clone();
        claimers.push(tokio::spawn(async move {
            let body = ClaimBody {
                task_id: None,
                wait_seconds: Some(0.0),
                ttl_seconds: None,
            };
            let mut n = 0usize;
            let mut i = w * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(31).wrapping_add(17);
                let pid = &projects[i % projects.len()];
                // Ready or still booting, the instance is given back at once.
                if let Some(c) = answered(api.claim(pid, &body).await)? {
                    answered(api.delete_instance(pid, &c.response().instance.id).await)?;
                    n += 1;
                }
            }
            anyhow::Ok(n)
        }));
    }
    let gets = if quick { 300 } else { 1500 };
    let mut samples = Vec::with_capacity(gets);
    for i in 0..gets {
        let pid = &projects[(i * 104_729) % projects.len()];
        let t = Instant::now();
        s.api
            .get_warm_pool(pid)
            .await
            .context("GET /warm-pool failed during the scale run")?;
        samples.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut claims = 0;
    for c in claimers {
        claims += c.await??;
    }
    Ok(Size {
        vms,
        reconcile_ms,
        rss_mb,
        get_p50_ms: percentile(&samples, 0.5).unwrap_or(0.0),
        get_p99_ms: percentile(&samples, 0.99).unwrap_or(0.0),
        claims,
    })
}

async fn grow_to(s: &Server, projects: &mut Vec<String>, n: usize) -> anyhow::Result<()> {
    while projects.len() < n {
        let i = projects.len();
        projects.push(s.pool_project(format!("scale {i}"), PER_POOL).await?);
    }
    let want = (n * PER_POOL) as f64;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let started = Instant::now();
    loop {
        let ready = s.ready_total().await?;
        if ready >= want {
            eprintln!(
                "      {} VMs ready ({:.0} s to fill)",
                want,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pools did not fill: {ready} of {want} ready");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn scale(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let s = Server::start(&[
        "--backend",
        "sim",
        "--max-parallel-boots",
        "64",
        "--max-cold-claims",
        "1000",
        "--reconcile-interval-ms",
        "500",
    ])
    .await?;
    // What the server holds with no VM at all: the base that per-VM growth is measured from.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let empty_rss = s.rss_mb().context("cannot read the server's memory")?;
    let mut projects = Vec::new();
    let mut sizes = Vec::new();
    for n in [50, 500] {
        eprintln!("      growing to {} projects × {PER_POOL}", n);
        grow_to(&s, &mut projects, n).await?;
        sizes.push(measure(&s, &projects, quick).await?);
    }
    let (small, big) = (&sizes[0], &sizes[1]);
    let per_vm = |x: &Size| (x.rss_mb - empty_rss) * 1024.0 / x.vms as f64;
    let reconcile_per_1k = |x: &Size| x.reconcile_ms / (x.vms as f64 / 1000.0);
    report.figure("reconcile_ms_1k", Some(small.reconcile_ms));
    report.figure("reconcile_ms_10k", Some(big.reconcile_ms));
    report.figure("scale_rss_mb_10k", Some(big.rss_mb));
    for x in &sizes {
        report.rows.push(Row {
            what: format!("reconcile pass, {} VMs (mean)", x.vms),
            value: Some(x.reconcile_ms),
            unit: "ms",
            baseline: None,
            target: if x.vms == big.vms {
                "≤ 50 ms".into()
            } else {
                String::new()
            },
            met: (x.vms == big.vms).then_some(x.reconcile_ms <= 50.0),
        });
        report.rows.push(Row {
            what: format!("server RSS, {} VMs ({:.1} KiB per VM)", x.vms, per_vm(x)),
            value: Some(x.rss_mb),
            unit: "MiB",
            baseline: Some(("no VMs".into(), empty_rss)),
            target: if x.vms == big.vms {
                "≤ 200 MiB".into()
            } else {
                String::new()
            },
            met: (x.vms == big.vms).then_some(x.rss_mb <= 200.0),
        });
        report.rows.push(Row {
            what: format!(
                "GET /warm-pool p99, {} VMs, {} claims meanwhile",
                x.vms, x.claims
            ),
            value: Some(x.get_p99_ms),
            unit: "ms",
            baseline: Some(("p50".into(), x.get_p50_ms)),
            target: String::new(),
            met: None,
        });
    }
    // Growth per VM: the cost per VM must not grow from 1,000 to 10,000 VMs (a little slack for
    // noise). A `GET /warm-pool` reads one project, so its latency itself must stay flat; its
    // p99 (a few slowest samples on a busy 2-core machine) gets more slack than its median.
    let grows = [
        (
            "reconcile ms per 1,000 VMs",
            reconcile_per_1k(small),
            reconcile_per_1k(big),
            1.5,
        ),
        ("server KiB per VM", per_vm(small), per_vm(big), 1.5),
        (
            "GET /warm-pool p50 ms",
            small.get_p50_ms,
            big.get_p50_ms,
            1.5,
        ),
        (
            "GET /warm-pool p99 ms",
            small.get_p99_ms,
            big.get_p99_ms,
            2.0,
        ),
    ];
    for (what, a, b, slack) in grows {
        report.rows.push(Row {
            what: format!("{what} at 10,000 VMs, vs 1,000"),
            value: Some(b),
            unit: "",
            baseline: Some(("1,000 VMs".into(), a)),
            target: format!("no growth (≤ {slack}x)"),
            met: Some(a <= 0.0 || b <= a * slack),
        });
    }
    report.details.insert(
        "scale".into(),
        json!({
            "emptyRssMb": empty_rss,
            "sizes": sizes.iter().map(|x| json!({
                "vms": x.vms, "reconcileMs": x.reconcile_ms, "rssMb": x.rss_mb,
                "rssKibPerVm": per_vm(x), "getP50Ms": x.get_p50_ms, "getP99Ms": x.get_p99_ms,
                "claims": x.claims,
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}
