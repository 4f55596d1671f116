//! Claims per second with 1, 2 and 3 nodes on one PostgreSQL (a throwaway cluster), side by side
//! with their p99, the claims spread over the nodes; and the same machine's one-node SQLite rate
//! as the baseline. All nodes run here, on the same 2 cores, so more nodes add coordination, not
//! hardware: the figure shows what sharing one database costs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use warmpool_client::Claim;
use warmpool_pg_cluster::PgCluster;
use warmpool_types::api::ClaimBody;

use super::{answered, percentile, Report, Row, Server};

const PROJECTS: usize = 10;
const PER_POOL: usize = 20;
const ADMIN: &str = "warmpool-bench-nodes-admin-token";

/// Claims per second and claim p99 (ms) of `servers` together, claims spread round-robin.
async fn claim_rate(
    servers: &[Server],
    projects: &[String],
    secs: f64,
) -> anyhow::Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..16usize {
        let s = &servers[w % servers.len()];
        let api = s.api.clone();
        let (stop, samples, projects) = (stop.clone(), samples.clone(), projects.to_vec());
        workers.push(tokio::spawn(async move {
            let body = ClaimBody {
                task_id: None,
                wait_seconds: Some(0.0),
                ttl_seconds: None,
            };
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 16;
                let pid = &projects[i % projects.len()];
                let t = Instant::now();
                if let Some(Claim::Ready(c)) = answered(api.claim(pid, &body).await)? {
                    if c.warm {
                        samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(t.elapsed());
                        // Give the VM back so the pool stays full: the rate is of claims, not
                        // boots.
                        answered(api.delete_instance(pid, &c.instance.id).await)?;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((
        all.len() as f64 / elapsed,
        percentile(&all, 0.99).unwrap_or(0.0),
    ))
}

async fn fill(s: &Server) -> anyhow::Result<Vec<String>> {
    let mut projects = Vec::new();
    for i in 0..PROJECTS {
        projects.push(s.pool_project(format!("nodes {i}"), PER_POOL).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut ready = 0;
        for p in &projects {
            ready += s.api.get_warm_pool(p).await?.status.ready as usize;
        }
        if ready == PROJECTS * PER_POOL {
            return Ok(projects);
        }
        anyhow::ensure!(Instant::now() < deadline, "the pools did not fill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn nodes(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let secs = if quick { 4.0 } else { 15.0 };
    let cluster = PgCluster::new().context("cannot start PostgreSQL for the nodes row")?;
    let key_dir = tempfile::tempdir().context("a directory for the secrets key")?;
    let key = key_dir.path().join("secret.key");
    std::fs::write(&key, rand::random::<[u8; 32]>()).context("writing the secrets key")?;
    let key = key.to_str().context("key path")?.to_string();
    let mut rates = Vec::new();
    let mut p99s = Vec::new();
    for n in 1..=3usize {
        let url = cluster
            .create_database(&format!("bench_nodes_{n}"))
            .context("creating a database")?;
        let mut servers = Vec::new();
        for k in 0..n {
            let name = format!("bench{k}");
            servers.push(
                Server::start(&[
                    "--backend",
                    "sim",
                    "--store",
                    &url,
                    "--node-name",
                    &name,
                    "--admin-token",
                    ADMIN,
                    "--secret-key-file",
                    &key,
                    "--max-parallel-boots",
                    "64",
                    "--reconcile-interval-ms",
                    "100",
                ])
                .await
                .with_context(|| format!("starting node {name}"))?,
            );
        }
        let projects = fill(&servers[0]).await?;
        let (rate, p99) = claim_rate(&servers, &projects, secs).await?;
        eprintln!("      {n} node(s): {rate:.0} claims/s, p99 {p99:.1} ms");
        rates.push((rate * 10.0).round() / 10.0);
        p99s.push((p99 * 100.0).round() / 100.0);
    }
    // The baseline: one node on SQLite, same load.
    let single = Server::start(&[
        "--backend",
        "sim",
        "--max-parallel-boots",
        "64",
        "--reconcile-interval-ms",
        "100",
    ])
    .await?;
    let projects = fill(&single).await?;
    let (sqlite_rate, sqlite_p99) =
        claim_rate(std::slice::from_ref(&single), &projects, secs).await?;
    drop(single);
    for (i, (rate, p99)) in rates.iter().zip(&p99s).enumerate() {
        report.rows.push(Row {
            what: format!(
                "warm claims/s, {} node(s) on PostgreSQL (p99 {p99:.1} ms)",
                i + 1
            ),
            value: Some(*rate),
            unit: "/s",
            baseline: Some(("1 node on SQLite".into(), sqlite_rate)),
            target: String::new(),
            met: None,
        });
    }
    report
        .figures
        .insert("nodes_claims_per_s".into(), json!(rates));
    report.details.insert(
        "nodes".into(),
        json!({"claimsPerSecond": rates, "claimP99Ms": p99s, "sqliteClaimsPerSecond": sqlite_rate,
               "sqliteClaimP99Ms": sqlite_p99, "seconds": secs, "concurrency": 16}),
    );
    Ok(())
}
