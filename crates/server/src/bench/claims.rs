//! Claim latency against the floor of one durable SQLite commit, and the time from a claim to a
//! command's first output in the VM, warm vs cold.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;
use warmpool_client::Claim;
use warmpool_types::agent::AgentExecRequest;
use warmpool_types::api::{
    ClaimBody, CreateProjectBody, RepoInput, SetupCommand, UpdateWarmPoolBody,
};

use super::server::cpu_of;
use super::{answered, percentile, Report, Row, Server};

const PROJECTS: usize = 30;
const PER_POOL: usize = 20;

async fn wait_ready(s: &Server, n: f64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while s.ready_total().await? < n {
        if Instant::now() > deadline {
            bail!(
                "the pools did not fill ({} of {n} ready)",
                s.ready_total().await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// p50 and p99 of warm claims over HTTP at several concurrencies, next to the p50 of a durable
/// SQLite commit on the same disk.
pub async fn claim_latency(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let s = Server::start(&[
        "--backend",
        "sim",
        "--max-parallel-boots",
        "64",
        "--max-cold-claims",
        "1000",
        "--reconcile-interval-ms",
        "100",
    ])
    .await?;
    let floor_samples = tokio::task::spawn_blocking({
        let path = s.dir.path().join("floor.db");
        move || warmpool_store::durable_commit_times(&path, if quick { 300 } else { 1000 })
    })
    .await??;
    let floor = percentile(&floor_samples, 0.5).unwrap_or(0.0);
    let mut projects = Vec::new();
    for i in 0..PROJECTS {
        projects.push(s.pool_project(format!("claims {i}"), PER_POOL).await?);
    }
    let projects = Arc::new(projects);
    let full = (PROJECTS * PER_POOL) as f64;
    let mut levels = serde_json::Map::new();
    for concurrency in [1usize, 16, 64] {
        wait_ready(&s, full, Duration::from_secs(300)).await?;
        let total = if quick { 200 } else { 600 };
        let next = Arc::new(AtomicUsize::new(0));
        let samples: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
        // What the claims cost in CPU, the server's (and of that its store writer's) and this
        // client's: with `concurrency` claims always in flight, the time a claim takes can be
        // no less than what the CPUs need to serve that many (see the rows below).
        let (server0, writer0) = cpu_of(s.pid(), "sqlite-writer");
        let (client0, _) = cpu_of(std::process::id(), "");
        let began = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (next, samples, projects) = (next.clone(), samples.clone(), projects.clone());
            let api = s.api.clone();
            workers.push(tokio::spawn(async move {
                let body = ClaimBody {
                    task_id: None,
                    wait_seconds: Some(0.0),
                    ttl_seconds: None,
                };
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return anyhow::Ok(());
                    }
                    let pid = &projects[n % projects.len()];
                    let t = Instant::now();
                    let claim = answered(api.claim(pid, &body).await)?;
                    let took = t.elapsed();
                    let warm = claim.is_some_and(|c| c.response().warm);
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((took, warm));
                }
            }));
        }
        for w in workers {
            w.await??;
        }
        let elapsed = began.elapsed();
        let (server1, writer1) = cpu_of(s.pid(), "sqlite-writer");
        let (client1, _) = cpu_of(std::process::id(), "");
        let all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let warm: Vec<Duration> = all.iter().filter(|(_, w)| *w).map(|(d, _)| *d).collect();
        let (p50, p99) = (percentile(&warm, 0.5), percentile(&warm, 0.99));
        let per_claim = |d: Duration| d.as_secs_f64() * 1e6 / total as f64;
        let (server_us, writer_us, client_us) = (
            per_claim(server1.saturating_sub(server0)),
            per_claim(writer1.saturating_sub(writer0)),
            per_claim(client1.saturating_sub(client0)),
        );
        // Little's law: `concurrency` claims in flight, each needing this much CPU of the
        // machine's cores (and the writer's share of them on one thread only).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let floor_ms =
            concurrency as f64 / 1000.0 * ((server_us + client_us) / cores).max(writer_us);
        levels.insert(
            format!("c{concurrency}"),
            json!({"p50Ms": p50, "p99Ms": p99, "warm": warm.len(), "cold": all.len() - warm.len(),
                   "claimsPerS": total as f64 / elapsed.as_secs_f64(),
                   "serverCpuUsPerClaim": server_us, "writerCpuUsPerClaim": writer_us,
                   "clientCpuUsPerClaim": client_us, "cpuBoundMs": floor_ms}),
        );
        report.rows.push(Row {
            what: format!(
                "warm claim p50, concurrency {concurrency} ({} claims)",
                warm.len()
            ),
            value: p50,
            unit: "ms",
            baseline: Some(("SQLite commit p50".into(), floor)),
            target: if concurrency == 16 {
                "≤ 5x the commit".into()
            } else {
                String::new()
            },
            met: (concurrency == 16).then(|| p50.is_some_and(|v| v <= 5.0 * floor)),
        });
        report.rows.push(Row {
            what: format!("warm claim p99, concurrency {concurrency}"),
            value: p99,
            unit: "ms",
            baseline: Some(("SQLite commit p50".into(), floor)),
            target: if concurrency == 16 {
                "≤ 12x the commit".into()
            } else {
                String::new()
            },
            met: (concurrency == 16).then(|| p99.is_some_and(|v| v <= 12.0 * floor)),
        });
        if concurrency == 16 {
            report.figure("claim_p50_ms", p50);
            report.figure("claim_p99_ms", p99);
            report.rows.push(Row {
                what: format!(
                    "  … CPU per claim: server {server_us:.0} µs (store writer {writer_us:.0}), \
                     client {client_us:.0} µs; the least time {concurrency} in flight can take"
                ),
                value: Some(floor_ms),
                unit: "ms",
                baseline: Some(("SQLite commit p50".into(), floor)),
                target: String::new(),
                met: None,
            });
        }
    }
    report.figure("commit_floor_p50_ms", Some(floor));
    report
        .details
        .insert("claims".into(), serde_json::Value::Object(levels));
    Ok(())
}

fn make_repo(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("README"), "benchmark\n")?;
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "README"][..],
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "bench",
        ][..],
    ] {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "git {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Claims a VM and waits for a command's first output through the VM's own server.
async fn claim_to_first_output(s: &Server, pid: &str) -> anyhow::Result<(Duration, bool, String)> {
    let body = ClaimBody {
        task_id: None,
        wait_seconds: Some(600.0),
        ttl_seconds: None,
    };
    let exec = AgentExecRequest {
        command: Some("echo first".into()),
        stream: true,
        ..Default::default()
    };
    let t = Instant::now();
    let c = match s.api.claim(pid, &body).await? {
        Claim::Ready(c) => c,
        Claim::Pending(c) => bail!(
            "the claim answered 202: {} is {}",
            c.instance.id,
            c.instance.status
        ),
    };
    let vm = c.vm.as_ref().context("the claim answered no VM")?;
    // The VM's own server, reached directly as a claimant would.
    let resp = s
        .api
        .http()
        .post(format!("{}/v1/exec", vm.agent_url))
        .bearer_auth(&vm.agent_token)
        .json(&exec)
        .send()
        .await?;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        if String::from_utf8_lossy(&chunk?).contains("\"output\"") {
            break;
        }
    }
    Ok((t.elapsed(), c.warm, c.instance.id))
}

/// A project on one repository whose pool keeps `size` VMs ready, each set up by a `setup`-second
/// command; answers its id.
async fn setup_project(s: &Server, name: &str, setup: u32, size: usize) -> anyhow::Result<String> {
    let repo = s
        .dir
        .path()
        .join(format!("repo-{}", name.replace(' ', "-")));
    make_repo(&repo)?;
    let pid = s
        .api
        .create_project(&CreateProjectBody {
            name: name.into(),
            description: None,
            repos: vec![RepoInput {
                repo_full_name: "bench/app".into(),
                url: repo.display().to_string(),
                branch: None,
            }],
        })
        .await?
        .id;
    s.api
        .update_warm_pool(
            &pid,
            &UpdateWarmPoolBody {
                target_size: Some(size as f64),
                setup_commands: Some(Some(vec![SetupCommand {
                    name: "setup".into(),
                    command: format!("sleep {setup}"),
                    background: None,
                }])),
                ..Default::default()
            },
        )
        .await?;
    Ok(pid)
}

/// Waits until the pool has `n` VMs ready.
async fn pool_ready(s: &Server, pid: &str, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let w = s.api.get_warm_pool(pid).await?;
        if w.status.ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool did not fill: {:?}", w.status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The setup of the first-output rows, in seconds.
const SETUP_SECS: u32 = 10;

/// Time from a claim request to a command's first output: warm (a VM of the pool), and cold (the
/// pool is empty) with the pool's golden in place against the same claim on a server that runs
/// goldens off (the whole 10 s setup). Both servers run side by side, measured in turns.
pub async fn first_output(report: &mut Report, quick: bool, cache: &Path) -> anyhow::Result<()> {
    let cache = cache.to_str().context("cache dir")?;
    let golden = Server::start(&["--cache-dir", cache]).await?;
    let plain = Server::start(&["--cache-dir", cache, "--goldens", "false"]).await?;
    let setup = SETUP_SECS;
    let (gpid, ppid) = (
        setup_project(&golden, "first output", setup, 1).await?,
        setup_project(&plain, "first output", setup, 1).await?,
    );
    let (mut warm, mut cold, mut golden_cold) = (Vec::new(), Vec::new(), Vec::new());
    let expect = |was_warm: bool, warm: bool| {
        if was_warm == warm {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "expected a {} claim",
                if warm { "warm" } else { "cold" }
            ))
        }
    };
    for _ in 0..if quick { 2 } else { 5 } {
        // The plain pool's VM is ready: the first claim takes it, the next one finds none (its
        // refill takes the whole setup).
        pool_ready(&plain, &ppid, 1).await?;
        for want_warm in [true, false] {
            let (took, was_warm, id) = claim_to_first_output(&plain, &ppid).await?;
            expect(was_warm, want_warm)?;
            if was_warm { &mut warm } else { &mut cold }.push(took);
            answered(plain.api.delete_instance(&ppid, &id).await)?;
        }
    }
    // The golden-served pool refills from its golden in a moment: a claim right after the one
    // that took its VM finds it empty unless that refill is already done (then the round is
    // not counted).
    let rounds = if quick { 2 } else { 5 };
    let mut refilled_first = 0;
    while golden_cold.len() < rounds {
        if refilled_first > 3 * rounds {
            bail!("the golden-served pool refilled before every second claim");
        }
        pool_ready(&golden, &gpid, 1).await?;
        let (took, was_warm, first) = claim_to_first_output(&golden, &gpid).await?;
        expect(was_warm, true)?;
        warm.push(took);
        let (took, was_warm, second) = claim_to_first_output(&golden, &gpid).await?;
        if was_warm {
            refilled_first += 1;
        } else {
            golden_cold.push(took);
        }
        for id in [first, second] {
            answered(golden.api.delete_instance(&gpid, &id).await)?;
        }
    }
    let (w, c, g) = (
        percentile(&warm, 0.5),
        percentile(&cold, 0.5),
        percentile(&golden_cold, 0.5),
    );
    report.figure("warm_first_output_ms", w);
    report.figure("cold_first_output_ms", c);
    report.figure("nogolden_cold_first_output_ms", c);
    report.figure("golden_cold_first_output_ms", g);
    report.rows.push(Row {
        what: format!("claim → first output, empty pool, golden (setup {setup} s, median)"),
        value: g,
        unit: "ms",
        baseline: c.map(|c| ("no golden".to_string(), c)),
        target: "≤ 200 ms, ≥ 50x faster".into(),
        met: match (g, c) {
            (Some(g), Some(c)) if g > 0.0 => Some(g <= 200.0 && c / g >= 50.0),
            _ => None,
        },
    });
    report.rows.push(Row {
        what: format!("claim → first output, cold, no golden (setup {setup} s, median)"),
        value: c,
        unit: "ms",
        baseline: w.map(|w| ("warm".to_string(), w)),
        target: "≥ 1000x warm".into(),
        met: match (w, c) {
            (Some(w), Some(c)) if w > 0.0 => Some(c / w >= 1000.0),
            _ => None,
        },
    });
    report.rows.push(Row {
        what: "claim → first output, warm (median)".into(),
        value: w,
        unit: "ms",
        baseline: None,
        target: String::new(),
        met: None,
    });
    let ms = |v: &[Duration]| {
        v.iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>()
    };
    report.details.insert(
        "firstOutput".into(),
        json!({"setupSeconds": setup, "warmMs": ms(&warm), "coldMs": ms(&cold),
               "goldenColdMs": ms(&golden_cold), "goldenRoundsNotCounted": refilled_first}),
    );
    Ok(())
}

/// How many claims the burst row makes at once, against a pool of how many.
const BURST: usize = 20;
const BURST_POOL: u64 = 2;

/// 20 claims at once against a pool of 2 with its golden in place: claim → first output of each,
/// p50 and p95 over the rounds, next to a warm claim's.
/// A burst of 20 claims against a pool of 2 with its golden, at rest: the pool full and the VMs
/// kept started ahead of need ready. Once with the default number kept ahead (the figures), once
/// with `--sandbox-spares 8` (`burst8_…`).
pub async fn burst(report: &mut Report, quick: bool, cache: &Path) -> anyhow::Result<()> {
    for (spares, label, keys) in [
        (
            1,
            "1 VM started ahead, the default",
            ["burst_first_output_p50_ms", "burst_first_output_p95_ms"],
        ),
        (
            8,
            "--sandbox-spares 8",
            ["burst8_first_output_p50_ms", "burst8_first_output_p95_ms"],
        ),
    ] {
        let run = burst_of(quick, cache, spares).await?;
        let (p50, p95) = (percentile(&run.all, 0.5), percentile(&run.all, 0.95));
        let w = percentile(&run.warm, 0.5);
        report.figure(keys[0], p50);
        report.figure(keys[1], p95);
        report.rows.push(Row {
            what: format!(
                "burst of {BURST} claims, pool of {BURST_POOL}, golden ({label}): p50 to first output"
            ),
            value: p50,
            unit: "ms",
            baseline: w.map(|w| ("warm".to_string(), w)),
            target: "≤ 300 ms".into(),
            met: p50.map(|v| v <= 300.0),
        });
        report.rows.push(Row {
            what: format!("  … p95 ({} claims)", run.all.len()),
            value: p95,
            unit: "ms",
            baseline: None,
            target: "≤ 600 ms".into(),
            met: p95.map(|v| v <= 600.0),
        });
        let steps: serde_json::Map<String, serde_json::Value> = run
            .steps
            .iter()
            .map(|(name, v)| (name.clone(), json!(percentile(v, 0.5))))
            .collect();
        report.details.insert(
            if spares == 1 { "burst" } else { "burst8" }.into(),
            json!({"claims": run.all.len(), "warm": run.warm.len(), "setupSeconds": SETUP_SECS,
                   "startedAhead": spares, "maxMs": percentile(&run.all, 1.0),
                   "stepP50Ms": steps}),
        );
    }
    Ok(())
}

/// What the bursts of one server measured.
struct BurstRun {
    /// Claim → first output, every claim.
    all: Vec<Duration>,
    /// … those served from the pool.
    warm: Vec<Duration>,
    /// Each step's durations over the claims' VMs.
    steps: std::collections::BTreeMap<String, Vec<Duration>>,
}

/// Bursts (1, or 3 in a full run) on a server of its own keeping `spares` VMs started ahead.
async fn burst_of(quick: bool, cache: &Path, spares: u16) -> anyhow::Result<BurstRun> {
    let cache = cache.to_str().context("cache dir")?;
    let n = spares.to_string();
    let s = Arc::new(Server::start(&["--cache-dir", cache, "--sandbox-spares", &n]).await?);
    let pid: Arc<str> = setup_project(&s, "burst", SETUP_SECS, BURST_POOL as usize)
        .await?
        .into();
    let mut run = BurstRun {
        all: Vec::new(),
        warm: Vec::new(),
        steps: Default::default(),
    };
    for _ in 0..if quick { 1 } else { 3 } {
        pool_ready(&s, &pid, BURST_POOL).await?;
        at_rest(&s, f64::from(spares)).await?;
        let mut claims = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            let (s, pid) = (s.clone(), pid.clone());
            claims.spawn(async move { claim_to_first_output(&s, &pid).await });
        }
        let mut ids = Vec::new();
        while let Some(r) = claims.join_next().await {
            let (took, was_warm, id) = r??;
            run.all.push(took);
            if was_warm {
                run.warm.push(took);
            }
            ids.push(id);
        }
        for id in ids {
            // Where a claim's VM spent its boot, step by step.
            if let Some(d) = answered(s.api.get_instance(&pid, &id).await)? {
                for st in d.steps {
                    let ms = Duration::from_millis(st.duration_ms.unwrap_or(0));
                    run.steps.entry(st.name).or_default().push(ms);
                }
            }
            answered(s.api.delete_instance(&pid, &id).await)?;
        }
    }
    Ok(run)
}

/// Waits until the server keeps `spares` VMs started ahead of need, ready (a burst comes to a
/// server at rest, not while it is still making them).
async fn at_rest(s: &Server, spares: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let name = warmpool_backend::sandbox::SPARES_READY_METRIC;
    while s.metric_sum(name).await? < spares {
        if Instant::now() > deadline {
            bail!("the server did not get {spares} VMs started ahead of need ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
