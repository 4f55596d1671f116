//! `warmpool bench`: how fast warmpool is, measured the way a skeptical engineer would — every figure
//! next to a baseline measured in the same run on the same machine, so the ratios hold on a noisy
//! 2-core box. Prints a table and writes the figures as JSON.
//!
//! Rows: warm claims over HTTP (concurrency 1, 16, 64) vs a durable SQLite commit; a command's
//! first output after a warm claim, and after a claim on an empty pool with its golden vs without;
//! a burst of 20 claims against a pool of 2 (1 and 8 VMs started ahead); sandbox start vs a bare
//! `runc run`; QEMU cold boot vs clone, and idle memory per clone; the control plane at 1,000 and
//! 10,000 VMs (`sim`); claims per second on 1, 2 and 3 nodes sharing one PostgreSQL; a bursty day
//! of claims against an autoscaled pool vs a fixed one sized for the peak (`sim`).

mod claims;
mod day;
mod nodes;
mod scale;
mod server;
mod vms;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use warmpool_client::ClientError;

pub use server::Server;

/// An answer of the server for the load rows: the server saying no (an error status) is a sample
/// like any other, as a busy server's refusals are part of what is measured; only a request that
/// got no answer at all stops the row.
fn answered<T>(r: Result<T, ClientError>) -> anyhow::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status().is_some() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A shorter run (under 5 minutes): fewer samples and rounds.
    #[arg(long)]
    pub quick: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only these rows (comma-separated: claims, first-output, burst, sandbox, qemu, scale,
    /// nodes, day); the others are reported as skipped.
    #[arg(long, value_delimiter = ',', value_parser = ["claims", "first-output", "burst", "sandbox", "qemu", "scale", "nodes", "day"])]
    pub only: Vec<String>,
    /// Guest images and kernels (as `serve --cache-dir`).
    #[arg(long, env = "WARMPOOL_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Nearest-rank percentile of unsorted samples.
/// A ratio as the table shows it: a fraction of the baseline keeps two significant digits.
fn ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}x")
    } else {
        format!("{r:.1}x")
    }
}

pub fn percentile(samples: &[Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// One line of the table.
pub struct Row {
    pub what: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub baseline: Option<(String, f64)>,
    pub target: String,
    pub met: Option<bool>,
}

/// Everything measured so far.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub figures: Map<String, Value>,
    pub skipped: BTreeMap<String, String>,
    pub details: Map<String, Value>,
    /// Rows that failed to measure.
    pub failures: usize,
}

impl Report {
    pub fn figure(&mut self, key: &str, v: Option<f64>) {
        self.figures.insert(
            key.into(),
            v.map(|x| json!((x * 100.0).round() / 100.0))
                .unwrap_or(Value::Null),
        );
    }

    pub fn skip(&mut self, keys: &[&str], why: &str) {
        for k in keys {
            self.figures.insert((*k).into(), Value::Null);
            self.skipped.insert((*k).into(), why.into());
        }
        self.rows.push(Row {
            what: format!("{} (skipped: {why})", keys.join(", ")),
            value: None,
            unit: "",
            baseline: None,
            target: String::new(),
            met: None,
        });
    }

    fn print(&self) {
        println!();
        println!(
            "{:<58} {:>12} {:>28} {:>9}  target",
            "measure", "value", "baseline", "ratio"
        );
        for r in &self.rows {
            let value = r
                .value
                .map(|v| format!("{v:.2} {}", r.unit))
                .unwrap_or_else(|| "-".into());
            let (baseline, ratio) = match (&r.baseline, r.value) {
                (Some((label, b)), Some(v)) if *b > 0.0 => {
                    (format!("{label} {b:.2}"), ratio(v / b))
                }
                (Some((label, b)), _) => (format!("{label} {b:.2}"), "-".into()),
                _ => (String::new(), String::new()),
            };
            let mark = match r.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "{:<58} {:>12} {:>28} {:>9}  {} {}",
                r.what, value, baseline, ratio, r.target, mark
            );
        }
        if !self.skipped.is_empty() {
            println!();
            for (k, why) in &self.skipped {
                println!("skipped {k}: {why}");
            }
        }
    }

    fn json(&self, quick: bool) -> Value {
        let mut out = self.figures.clone();
        out.insert("skipped".into(), json!(self.skipped));
        out.insert("details".into(), Value::Object(self.details.clone()));
        out.insert(
            "machine".into(),
            json!({
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "memoryMb": mem_total_mb(),
            }),
        );
        out.insert("quick".into(), json!(quick));
        out.insert(
            "date".into(),
            json!(warmpool_types::time::fmt_ms(warmpool_types::time::now_ms())),
        );
        Value::Object(out)
    }
}

/// Why the nodes row cannot run here, if it cannot.
fn nodes_missing(root: bool) -> Option<String> {
    if !root {
        return Some("needs root (it starts its own PostgreSQL as user postgres)".into());
    }
    match warmpool_pg_cluster::PgCluster::bin_dir() {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn mem_total_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cache = crate::serve::absolute(
        &args
            .cache_dir
            .clone()
            .unwrap_or_else(crate::serve::default_cache_dir),
    )?;
    let mut report = Report::default();
    let root = nix::unistd::geteuid().is_root();
    eprintln!(
        "warmpool bench{}: this takes a few minutes",
        if args.quick { " --quick" } else { "" }
    );

    let wanted = |row: &str| args.only.is_empty() || args.only.iter().any(|o| o == row);
    let not_selected = "not selected (--only)";

    eprintln!("[1/8] warm claims vs a durable SQLite commit");
    if wanted("claims") {
        let r = claims::claim_latency(&mut report, args.quick).await;
        failed(
            &mut report,
            r,
            &["claim_p50_ms", "claim_p99_ms", "commit_floor_p50_ms"],
        );
    } else {
        report.skip(
            &["claim_p50_ms", "claim_p99_ms", "commit_floor_p50_ms"],
            not_selected,
        );
    }

    eprintln!(
        "[2/8] first output after a warm claim, and a cold one with and without a golden (sandbox)"
    );
    let first_output = [
        "warm_first_output_ms",
        "cold_first_output_ms",
        "golden_cold_first_output_ms",
        "nogolden_cold_first_output_ms",
    ];
    if !wanted("first-output") {
        report.skip(&first_output, not_selected);
    } else if !root {
        report.skip(&first_output, "needs root (the sandbox backend)");
    } else {
        let r = claims::first_output(&mut report, args.quick, &cache).await;
        failed(&mut report, r, &first_output);
    }

    eprintln!("[3/8] a burst of 20 claims against a pool of 2 with its golden, 1 and 8 VMs started ahead (sandbox)");
    let burst = [
        "burst_first_output_p50_ms",
        "burst_first_output_p95_ms",
        "burst8_first_output_p50_ms",
        "burst8_first_output_p95_ms",
    ];
    if !wanted("burst") {
        report.skip(&burst, not_selected);
    } else if !root {
        report.skip(&burst, "needs root (the sandbox backend)");
    } else {
        let r = claims::burst(&mut report, args.quick, &cache).await;
        failed(&mut report, r, &burst);
    }

    eprintln!("[4/8] sandbox start vs a bare runc run");
    let sandbox = ["sandbox_start_ms", "sandbox_cold_start_ms", "runc_floor_ms"];
    if !wanted("sandbox") {
        report.skip(&sandbox, not_selected);
    } else if !root {
        report.skip(&sandbox, "needs root (the sandbox backend)");
    } else {
        let r = vms::sandbox_start(&mut report, args.quick, &cache).await;
        failed(&mut report, r, &sandbox);
    }

    eprintln!("[5/8] QEMU cold boot vs clone, idle memory");
    let qemu = [
        "qemu_boot_ms",
        "qemu_clone_ms",
        "qemu_restore_ms",
        "qemu_idle_rss_mb",
    ];
    if !wanted("qemu") {
        report.skip(&qemu, not_selected);
    } else if let Some(why) = vms::qemu_missing(root) {
        report.skip(&qemu, &why);
    } else {
        let r = vms::qemu(&mut report, args.quick, &cache).await;
        failed(&mut report, r, &qemu);
    }

    eprintln!("[6/8] the control plane at 1,000 and 10,000 VMs (sim)");
    if wanted("scale") {
        let r = scale::scale(&mut report, args.quick).await;
        failed(
            &mut report,
            r,
            &["scale_rss_mb_10k", "reconcile_ms_1k", "reconcile_ms_10k"],
        );
    } else {
        report.skip(
            &["scale_rss_mb_10k", "reconcile_ms_1k", "reconcile_ms_10k"],
            not_selected,
        );
    }

    eprintln!("[7/8] claims per second on 1, 2 and 3 nodes (PostgreSQL)");
    if !wanted("nodes") {
        report.skip(&["nodes_claims_per_s"], not_selected);
    } else if let Some(why) = nodes_missing(root) {
        report.skip(&["nodes_claims_per_s"], &why);
    } else {
        let r = nodes::nodes(&mut report, args.quick).await;
        failed(&mut report, r, &["nodes_claims_per_s"]);
    }

    eprintln!("[8/8] a bursty day of claims: autoscale vs a fixed pool sized for the peak (sim)");
    let day_keys = [
        "autoscale_warm_share",
        "autoscale_idle_vm_s",
        "fixed_peak_warm_share",
        "fixed_peak_idle_vm_s",
    ];
    if wanted("day") {
        let r = day::day(&mut report, args.quick).await;
        failed(&mut report, r, &day_keys);
    } else {
        report.skip(&day_keys, not_selected);
    }

    report.print();
    if let Some(out) = &args.out {
        std::fs::write(
            out,
            serde_json::to_string_pretty(&report.json(args.quick))? + "\n",
        )?;
        println!("\nwrote {}", out.display());
    }
    if report.failures > 0 {
        anyhow::bail!("{} row(s) failed (see above)", report.failures);
    }
    Ok(())
}

/// A row that failed is reported (null, with the error as its reason) and the others still run.
fn failed(report: &mut Report, r: anyhow::Result<()>, keys: &[&str]) {
    if let Err(e) = r {
        eprintln!("      failed: {e:#}");
        report.failures += 1;
        report.skip(keys, &format!("failed: {e:#}"));
    }
}
