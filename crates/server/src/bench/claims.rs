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
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (next, samples, projects) = (next.clone(), samples.clone(), projects.clone());
            let api = s.api.clone();
            workers.push(tokio::spawn(async move {
                let body = ClaimBody {
                    task_id: None,
                    wait_seconds: Some(0.0),
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
        let all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let warm: Vec<Duration> = all.iter().filter(|(_, w)| *w).map(|(d, _)| *d).collect();
        let (p50, p99) = (percentile(&warm, 0.5), percentile(&warm, 0.99));
        levels.insert(
            format!("c{concurrency}"),
            json!({"p50Ms": p50, "p99Ms": p99, "warm": warm.len(), "cold": all.len() - warm.len()}),
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
            baseline: None,
            target: if concurrency == 16 {
                "≤ 3 ms".into()
            } else {
                String::new()
            },
            met: (concurrency == 16).then(|| p99.is_some_and(|v| v <= 3.0)),
        });
        if concurrency == 16 {
            report.figure("claim_p50_ms", p50);
            report.figure("claim_p99_ms", p99);
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

/// Time from a claim request to a command's first output, warm (from the pool) vs cold (the full
/// pipeline, for the same project, whose setup takes 10 s).
pub async fn first_output(report: &mut Report, quick: bool, cache: &Path) -> anyhow::Result<()> {
    let s = Server::start(&["--cache-dir", cache.to_str().context("cache dir")?]).await?;
    let repo = s.dir.path().join("repo");
    make_repo(&repo)?;
    let setup = 10;
    let pid = s
        .api
        .create_project(&CreateProjectBody {
            name: "first output".into(),
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
                target_size: Some(1.0),
                setup_commands: Some(Some(vec![SetupCommand {
                    name: "setup".into(),
                    command: format!("sleep {setup}"),
                    background: None,
                }])),
                ..Default::default()
            },
        )
        .await?;
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 2 } else { 5 } {
        // The pool's VM is ready: the first claim takes it, the next one finds none and boots.
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let w = s.api.get_warm_pool(&pid).await?;
            if w.status.ready == 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the pool did not fill: {:?}", w.status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for expect_warm in [true, false] {
            let (took, was_warm, id) = claim_to_first_output(&s, &pid).await?;
            if was_warm != expect_warm {
                bail!(
                    "expected a {} claim",
                    if expect_warm { "warm" } else { "cold" }
                );
            }
            if was_warm { &mut warm } else { &mut cold }.push(took);
            answered(s.api.delete_instance(&pid, &id).await)?;
        }
    }
    let (w, c) = (percentile(&warm, 0.5), percentile(&cold, 0.5));
    report.figure("warm_first_output_ms", w);
    report.figure("cold_first_output_ms", c);
    report.rows.push(Row {
        what: format!("claim → first output, cold (setup {setup} s, median)"),
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
    report.details.insert(
        "firstOutput".into(),
        json!({"setupSeconds": setup, "warmMs": warm.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
               "coldMs": cold.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>()}),
    );
    Ok(())
}
