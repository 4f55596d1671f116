//! A `warmpool serve` process of the benchmark's own, on port 0 with a data dir of its own,
//! talked to through the typed client like any client, and stopped (with its VMs) when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};
use warmpool_client::Client;
use warmpool_types::api::{CreateProjectBody, UpdateWarmPoolBody};

pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The server's API as its admin. Clones share its connections: the load rows give one to
    /// each worker.
    pub api: Client,
}

impl Server {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn start(args: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-bench-")
            .tempdir()?;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--rate-limit-per-sec", "0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("WARMPOOL_LOG", "warn,warmpool::serve=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start warmpool serve")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await?
            .map_err(|_| anyhow!("the benchmark's server did not start"))?;
        let token = match args.iter().position(|a| *a == "--admin-token") {
            Some(i) => args[i + 1].to_string(),
            None => std::fs::read_to_string(dir.path().join("data/admin-token"))?
                .trim()
                .to_string(),
        };
        // Up to 64 workers claim at once: each keeps its connection between claims.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()?;
        Ok(Server {
            child,
            dir,
            api: Client::with_http(http, &url, &token)?,
        })
    }

    /// A project with no repository whose pool keeps `size` VMs ready; answers its id.
    pub async fn pool_project(&self, name: String, size: usize) -> anyhow::Result<String> {
        let project = self
            .api
            .create_project(&CreateProjectBody {
                name,
                description: None,
                repos: Vec::new(),
            })
            .await?;
        self.api
            .update_warm_pool(
                &project.id,
                &UpdateWarmPoolBody {
                    target_size: Some(size as f64),
                    ..Default::default()
                },
            )
            .await?;
        Ok(project.id)
    }

    /// The server process's resident memory, in MiB.
    pub fn rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ready pool instances over all projects, from `/metrics`.
    pub async fn ready_total(&self) -> anyhow::Result<f64> {
        let text = self.api.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("warmpool_pool_instances{") && l.contains("state=\"ready\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// A metric's value summed over its label sets, from `/metrics`.
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.api.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // VMs outlive a killed server by design; the benchmark's must not outlive it: `vms rm
        // --all` destroys them all completely (VMs, those started ahead of need, their mounts,
        // networks and cgroups), as an operator would.
        let removed = std::env::current_exe().and_then(|exe| {
            Command::new(exe)
                .args(["vms", "rm", "--all", "--data-dir"])
                .arg(self.data_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
        });
        match removed {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "      could not destroy the benchmark server's VMs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("      could not destroy the benchmark server's VMs: {e}"),
        }
    }
}

/// CPU time the threads of process `pid` have run, in all and in threads named `name`: each
/// thread's own count in nanoseconds (`/proc/<pid>/stat` counts whole process time in 10 ms
/// ticks, too coarse for a phase of 100 ms). A thread that ends in between is not counted:
/// measure over a phase in which the process keeps its threads.
pub fn cpu_of(pid: u32, name: &str) -> (Duration, Duration) {
    let (mut all, mut named) = (Duration::ZERO, Duration::ZERO);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (all, named);
    };
    for t in tasks.flatten() {
        let ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let Some(ns) = ns else { continue };
        let d = Duration::from_nanos(ns);
        all += d;
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            named += d;
        }
    }
    (all, named)
}
