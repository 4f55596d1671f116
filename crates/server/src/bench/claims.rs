//! Claim latency against the floor of one durable SQLite commit, and the time from a claim to a
//! command's first output in the VM, warm vs cold.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use super::{percentile, Report, Row, Server};

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
        let p = s
            .ok(
                Method::POST,
                "/v1/projects",
                Some(&json!({"name": format!("claims {i}")})),
            )
            .await?;
        let id = p["id"].as_str().context("project id")?.to_string();
        s.ok(
            Method::PATCH,
            &format!("/v1/projects/{id}/warm-pool"),
            Some(&json!({"targetSize": PER_POOL})),
        )
        .await?;
        projects.push(id);
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
            let (http, url, token) = (s.http.clone(), s.url.clone(), s.token.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return anyhow::Ok(());
                    }
                    let pid = &projects[n % projects.len()];
                    let t = Instant::now();
                    let resp = http
                        .post(format!("{url}/v1/projects/{pid}/warm-pool/claim"))
                        .bearer_auth(&token)
                        .json(&json!({"waitSeconds": 0}))
                        .send()
                        .await?;
                    let body: Value = resp.json().await?;
                    let took = t.elapsed();
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((took, body["warm"] == true));
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
    let t = Instant::now();
    let (status, c) = s
        .call(
            Method::POST,
            &format!("/v1/projects/{pid}/warm-pool/claim"),
            Some(&json!({"waitSeconds": 600})),
        )
        .await?;
    if status != 200 {
        bail!("the claim answered {status}: {c}");
    }
    let url = c["vm"]["agentUrl"].as_str().context("agentUrl")?;
    let token = c["vm"]["agentToken"].as_str().context("agentToken")?;
    let resp = s
        .http
        .post(format!("{url}/v1/exec"))
        .bearer_auth(token)
        .json(&json!({"command": "echo first", "stream": true}))
        .send()
        .await?;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        if String::from_utf8_lossy(&chunk?).contains("\"output\"") {
            break;
        }
    }
    Ok((
        t.elapsed(),
        c["warm"] == true,
        c["instance"]["id"].as_str().unwrap_or("").to_string(),
    ))
}

/// Time from a claim request to a command's first output, warm (from the pool) vs cold (the full
/// pipeline, for the same project, whose setup takes 10 s).
pub async fn first_output(report: &mut Report, quick: bool, cache: &Path) -> anyhow::Result<()> {
    let s = Server::start(&["--cache-dir", cache.to_str().context("cache dir")?]).await?;
    let repo = s.dir.path().join("repo");
    make_repo(&repo)?;
    let setup = 10;
    let p = s
        .ok(
            Method::POST,
            "/v1/projects",
            Some(&json!({"name": "first output", "repos": [{"repoFullName": "bench/app", "url": repo.display().to_string()}]})),
        )
        .await?;
    let pid = p["id"].as_str().context("project id")?.to_string();
    s.ok(
        Method::PATCH,
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(&json!({"targetSize": 1, "setupCommands": [{"name": "setup", "command": format!("sleep {setup}")}]})),
    )
    .await?;
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 2 } else { 5 } {
        // The pool's VM is ready: the first claim takes it, the next one finds none and boots.
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let w = s
                .ok(Method::GET, &format!("/v1/projects/{pid}/warm-pool"), None)
                .await?;
            if w["status"]["ready"] == 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the pool did not fill: {w}");
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
            s.call(
                Method::DELETE,
                &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
                None,
            )
            .await?;
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
