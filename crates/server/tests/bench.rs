//! `warmpool bench` as a user runs it: the real binary measures real claims over HTTP and real
//! sandboxes, prints its table and writes every documented key to its JSON file.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// How long `bench --quick` of the claims, sandbox and day rows takes at most: 20 s + 65 s alone
/// (measured; the day is replayed in a minute), more while other tests share the cores.
const QUICK_BENCH: std::time::Duration = std::time::Duration::from_secs(240);

const KEYS: &[&str] = &[
    "claim_p50_ms",
    "claim_p99_ms",
    "commit_floor_p50_ms",
    "warm_first_output_ms",
    "cold_first_output_ms",
    "golden_cold_first_output_ms",
    "nogolden_cold_first_output_ms",
    "burst_first_output_p50_ms",
    "burst_first_output_p95_ms",
    "burst8_first_output_p50_ms",
    "burst8_first_output_p95_ms",
    "sandbox_start_ms",
    "sandbox_cold_start_ms",
    "runc_floor_ms",
    "qemu_boot_ms",
    "qemu_clone_ms",
    "qemu_restore_ms",
    "qemu_idle_rss_mb",
    "scale_rss_mb_10k",
    "reconcile_ms_1k",
    "reconcile_ms_10k",
    "nodes_claims_per_s",
    "autoscale_warm_share",
    "autoscale_idle_vm_s",
    "fixed_peak_warm_share",
    "fixed_peak_idle_vm_s",
];

#[test]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
fn bench_measures_the_selected_rows_and_explains_the_others() {
    ensure_guest_image(false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let in_run = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/run/warmpool")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = in_run();
    // The quick rows: claims against a server of its own on the sim backend, then sandbox starts
    // (one server, a few VMs started one at a time), then a day of claims replayed against two
    // pools of a sim server whose clock runs fast.
    let run = output_within(
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["bench", "--quick", "--only", "claims,sandbox,day", "--out"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(cache_dir()),
        "warmpool bench --quick",
        QUICK_BENCH,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The table names each baseline next to its figure.
    assert!(stdout.contains("SQLite commit p50"), "{stdout}");
    assert!(stdout.contains("bare runc run"), "{stdout}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in KEYS {
        assert!(v.get(*k).is_some(), "{k} is missing from {v}");
    }
    let measured = [
        "claim_p50_ms",
        "claim_p99_ms",
        "commit_floor_p50_ms",
        "sandbox_start_ms",
        "sandbox_cold_start_ms",
        "runc_floor_ms",
        "autoscale_warm_share",
        "autoscale_idle_vm_s",
        "fixed_peak_warm_share",
        "fixed_peak_idle_vm_s",
    ];
    for k in measured {
        let x = v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number: {v}"));
        assert!(x > 0.0, "{k} = {x}");
    }
    assert!(v["claim_p50_ms"].as_f64() <= v["claim_p99_ms"].as_f64());
    // Every other row is null, with the reason it was skipped.
    for k in KEYS.iter().filter(|k| !measured.contains(k)) {
        assert!(v[*k].is_null(), "{k} should be null: {v}");
        let why = v["skipped"][*k].as_str().unwrap_or_default();
        assert!(!why.is_empty(), "no reason for skipping {k}: {v}");
    }
    assert_eq!(v["quick"], true);
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    // The raw samples behind the figures are there to check them against.
    assert!(v["details"]["claims"]["c16"]["warm"].as_u64().unwrap() > 0);
    // The day: both pools saw every claim; the shares are shares; the fixed pool is the size
    // the day's peak asks for; the autoscaled one followed the day hour by hour.
    let day = &v["details"]["day"];
    assert!(day["claims"].as_u64().unwrap() > 1000, "{day}");
    for k in ["autoscale_warm_share", "fixed_peak_warm_share"] {
        assert!(v[k].as_f64().unwrap() <= 1.0, "{k}: {v}");
    }
    assert!(day["fixedPoolSize"].as_u64().unwrap() > 1, "{day}");
    assert!(
        day["autoscale"]["targetByHour"].as_array().unwrap().len() >= 24,
        "{day}"
    );
    assert!(stdout.contains("bursty day"), "{stdout}");
    // Its servers and backends leave nothing in /run.
    let left: Vec<String> = in_run().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left in /run/warmpool: {left:?}");
}

#[test]
fn bench_rejects_an_unknown_row() {
    // Refused before anything runs.
    let run = output_within(
        Command::new(BIN).args(["bench", "--only", "claims,warp-drive"]),
        "warmpool bench with an unknown row",
        REQUEST,
    );
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("warp-drive"), "{err}");
}
