//! The command line as a user runs it: the README's walkthrough, verbatim, and a failing test boot.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

/// The shell block after `<!-- walkthrough -->` in the README.
fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find("<!-- walkthrough -->")
        .expect("a walkthrough marker in the README");
    let rest = &readme[start..];
    let body = &rest[rest.find("```sh\n").unwrap() + 6..];
    body[..body.find("```").unwrap()].to_string()
}

/// Runs one shell command line with the CLI on PATH: whether it succeeded, its stdout, stderr.
fn run_cli(s: &TestServer, home: &Path, cmd: &str) -> (bool, String, String) {
    let out = output_within(cli(s, home).arg("-c").arg(cmd), cmd, REQUEST * 2);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn cli(s: &TestServer, home: &Path) -> Command {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let mut c = Command::new("bash");
    c.current_dir(home)
        .env("HOME", home)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("WARMPOOL_URL", &s.url)
        .env("WARMPOOL_TOKEN", &s.token);
    c
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn the_readme_walkthrough_works_verbatim() {
    let s = TestServer::start(&[]);
    let home = tempfile::tempdir().unwrap();
    let script = walkthrough();
    // A test boot, then a claim that may wait for the pool's first VM: two boots' time.
    let out = output_within(
        cli(&s, home.path())
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(&script),
        "the walkthrough",
        2 * s.boot(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok  warm_pool_setup"), "{stdout}");
    assert!(stdout.contains("ready: vm-"), "{stdout}");
    assert!(
        stdout.contains("built with [REDACTED:GREETING]"),
        "{stdout}"
    );
    assert!(stdout.contains("first commit"), "{stdout}");
    assert!(
        !stdout.contains("hello from warmpool"),
        "a secret was printed: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_failing_test_boot_exits_non_zero_and_says_why() {
    let s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("build.sh", "echo ok\n")]);
    s.create_project("cli-fail", vec![repo_input("acme/app", repo.url())])
        .await;
    let home = tempfile::tempdir().unwrap();
    let out = output_within(
        cli(&s, home.path())
            .arg("-c")
            .arg("warmpool pool test cli-fail --wait --cmd 'build=bash /home/app/missing.sh'"),
        "pool test --wait",
        s.boot(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok  clone_repo [acme/app]"), "{stdout}");
    assert!(
        stdout.contains("failed at warm_pool_setup: command `build` exited with status 127"),
        "{stdout}"
    );
    assert!(
        stdout.contains("--- the end of warm_pool_setup's output ---"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/home/app/missing.sh: No such file or directory"),
        "{stdout}"
    );
    // Errors of the API reach the user as one clear line and a non-zero exit.
    let out = output_within(
        cli(&s, home.path())
            .arg("-c")
            .arg("warmpool pool set cli-fail --size 99"),
        "pool set",
        REQUEST,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("targetSize: must be between 1 and 20"),
        "{stderr}"
    );
    let out = output_within(
        cli(&s, home.path())
            .arg("-c")
            .arg("warmpool pool status no-such-project"),
        "pool status",
        REQUEST,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no project is named `no-such-project`"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn pool_watch_follows_every_boot_live() {
    use std::io::{BufRead, BufReader};
    let s = TestServer::start(&[]);
    let pid = s.create_project("watched", vec![]).await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let mut watch = cli(&s, home.path())
        .arg("-c")
        .arg("exec warmpool pool watch watched")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watcher is connected once it has printed its first line (a CLI start and a request).
    let first = rx
        .recv_timeout(REQUEST)
        .expect("pool watch printed nothing within its first request's time");
    assert!(first.starts_with(&format!("watching {pid}")), "{first}");
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/test"),
            Some(json!({"setupCommands": [{"name": "hello", "command": "echo hello from the boot"}]})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    // The boot's lines come as it runs: all of them within a boot's time.
    let mut lines = Vec::new();
    let ready = format!("[{id}] ready");
    wait_for("pool watch to show the boot ready", s.boot(), async || {
        lines.extend(rx.try_iter());
        seen(
            lines.iter().any(|l| l.starts_with(&ready)),
            format!("{lines:#?}"),
        )
        .map(|_| ())
    })
    .await;
    let _ = watch.kill();
    let _ = watch.wait();
    let text = lines.join("\n");
    assert!(text.contains(&format!("[{id}]   ok  create_vm")), "{text}");
    assert!(
        text.contains(&format!("[{id}]       hello from the boot")),
        "{text}"
    );
    assert!(
        text.contains(&format!("[{id}]   ok  warm_pool_setup")),
        "{text}"
    );
}

/// Runs `warmpool ARGS` and answers (success, stdout, stderr). These commands work on a data
/// dir's files (destroying a VM is a few process kills and unmounts), or refuse at once.
fn warmpool(args: &[&str]) -> (bool, String, String) {
    let out = output_within(
        Command::new(BIN)
            .args(args)
            .env("WARMPOOL_CACHE_DIR", cache_dir()),
        &format!("warmpool {}", args.join(" ")),
        REQUEST,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// VMs outlive their server; with none running, an operator lists them and destroys them all,
/// leaving no process, mount or directory, and the next server fills its pool again.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn vms_of_a_stopped_server_are_listed_and_destroyed_without_it() {
    let mut s = TestServer::start(&[]);
    let pid = s.create_project("offline", vec![]).await;
    s.configure_pool(&pid, target(2)).await;
    let ready = async |s: &TestServer| wait_ready_ids(s, &pid, 2, s.boot()).await;
    let first = ready(&s).await;
    s.wait_spare_ready().await;
    let data = s.data_dir().display().to_string();

    // While the server runs, it alone manages them.
    let (ok, _, err) = warmpool(&["vms", "rm", "--all", "--data-dir", &data]);
    assert!(!ok);
    assert!(err.contains("a warmpool server (pid "), "{err}");
    let (ok, out, _) = warmpool(&["--json", "vms", "list", "--data-dir", &data]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let spares: Vec<&str> = listed
        .iter()
        .filter(|v| v["spare"] == true)
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(spares.len(), 1, "{listed:?}");
    assert!(spares[0].starts_with("sp-"), "{listed:?}");

    s.kill9();
    let vms = s.vm_dirs();
    assert_eq!(vms.len(), 2);
    assert_eq!(s.spare_dirs(), spares);
    let containers: Vec<String> = vms
        .iter()
        .map(|v| s.vm_container(v))
        .chain([spares[0].to_string()])
        .collect();
    let spare_init: i32 = std::fs::read_to_string(
        s.data_dir()
            .join("vm-spares")
            .join(spares[0])
            .join("init.pid"),
    )
    .unwrap()
    .split_whitespace()
    .next()
    .unwrap()
    .parse()
    .unwrap();
    let inits: Vec<i32> = vms
        .iter()
        .map(|v| s.vm_init_pid(v).unwrap())
        .chain([spare_init])
        .collect();
    let procs: Vec<(i32, u64)> = inits.iter().flat_map(|p| vm_processes(*p)).collect();
    assert!(any_alive(&procs), "VMs keep running without their server");
    let (ok, out, err) = warmpool(&["vms", "list", "--data-dir", &data]);
    assert!(ok, "{err}");
    for v in &vms {
        assert!(
            out.lines()
                .any(|l| l.starts_with(v.as_str()) && l.contains("sandbox  running (pid ")),
            "{out:?}"
        );
    }
    assert!(
        out.lines().any(|l| l.starts_with(spares[0])
            && l.contains("sandbox (started ahead, no project's)  running (pid ")),
        "{out:?}"
    );
    let (ok, _, err) = warmpool(&["vms", "rm", "vm-doesnotexist0000", "--data-dir", &data]);
    assert!(!ok);
    assert!(err.contains("no VM `vm-doesnotexist0000`"), "{err}");
    let (ok, out, err) = warmpool(&["vms", "rm", "--all", "--data-dir", &data]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("destroyed vm-"))
            .count(),
        2,
        "{out:?}"
    );
    assert!(out.contains(&format!("destroyed {}", spares[0])), "{out:?}");
    assert!(!any_alive(&procs), "processes of destroyed VMs still run");
    assert!(s.vm_dirs().is_empty());
    assert!(s.spare_dirs().is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for c in &containers {
        assert!(!mounts.contains(c.as_str()), "a mount of {c} is left");
    }
    let (ok, out, _) = warmpool(&["vms", "list", "--data-dir", &data]);
    assert!(ok);
    assert!(out.starts_with("no VMs in "), "{out:?}");
    assert!(
        !warmpool::serve::roots_dir(&s.data_dir()).exists(),
        "the directory VM roots were mounted in is left in /run"
    );

    // The next server sees its VMs gone and fills the pool again: with VMs of its own, not the
    // old instances (whose VMs are gone) still listed as ready.
    s.restart();
    let line = s
        .wait_log_line("re-adopted the ready VMs that survived", SETTLE)
        .await;
    assert!(line.contains("adopted=0 replaced=2"), "{line}");
    let again = ready(&s).await;
    assert!(
        again.iter().all(|id| !first.contains(id)),
        "{first:?} then {again:?}"
    );
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/claim"),
            Some(json!({})),
        )
        .await;
    assert_eq!(v["warm"], true, "{v}");
    let out = s
        .exec(&pid, v["instance"]["id"].as_str().unwrap(), "echo alive")
        .await;
    assert_eq!(out.output, "alive\n");
}

/// A count of VMs to keep started ahead that the host could not hold is refused before anything
/// starts, naming the flag.
#[test]
fn serve_refuses_an_unreasonable_number_of_spares() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for bad in ["17", "-1", "many", "1e9"] {
        let flag = format!("--sandbox-spares={bad}");
        let (ok, _, err) = warmpool(&["serve", "--data-dir", data.to_str().unwrap(), &flag]);
        assert!(!ok, "{bad}");
        assert!(err.contains("--sandbox-spares"), "{bad}: {err}");
    }
    // The fast clock: a number in range, and for the sim backend only.
    for args in [
        &["--sim-clock-speed", "0"][..],
        &["--sim-clock-speed", "NaN"],
        &["--sim-clock-speed", "1e9"],
        &["--sim-clock-speed", "fast"],
        &["--sim-clock-speed", "60", "--backend", "sandbox"],
    ] {
        let mut all = vec!["serve", "--data-dir", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let (ok, _, err) = warmpool(&all);
        assert!(!ok, "{args:?}");
        assert!(err.contains("--sim-clock-speed"), "{args:?}: {err}");
    }
    assert!(!data.exists(), "nothing was made");
}

/// `instance show` says, beyond the boot, who claimed an instance and when and why it was
/// ended: a cleared failure still reads as failed, with its step and error.
#[tokio::test(flavor = "multi_thread")]
async fn instances_show_tells_who_claimed_and_why_it_ended() {
    let s = TestServer::start(&["--backend", "sim"]);
    let (pid, pool, failed) = failed_pool_boot(&s, "shown").await;
    s.ok("POST", &format!("{pool}/clear"), Some(json!({})))
        .await;
    let home = tempfile::tempdir().unwrap();
    let out = output_within(
        cli(&s, home.path())
            .arg("-c")
            .arg(format!("warmpool instance show {pid} {failed}")),
        "instance show",
        REQUEST,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" failed "), "{stdout}");
    assert!(
        stdout.contains("failed at warm_pool_setup: command `build` exited with status 3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ended at ") && stdout.contains(": cleared"),
        "{stdout}"
    );
}

/// `warmpool claim --ttl` says when the lease runs out and how to extend it; `warmpool renew`
/// extends it; a lease longer than the project allows is refused naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn claim_with_a_lease_and_renew_it() {
    let s = TestServer::start(&["--backend", "sim"]);
    let pid = s.create_project("leased", vec![]).await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(json!({"targetSize": 1})),
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let run = |cmd: String| run_cli(&s, home.path(), &cmd);
    let (ok, out, err) = run(format!("warmpool claim {pid} --ttl 600 --task-id 'a b'"));
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("lease:   until ") && out.contains("warmpool renew"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, out, err) = run(format!("warmpool renew {pid} {id} --ttl 900"));
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("renewed {id}: its lease runs until ")),
        "{out}"
    );
    let (ok, out, err) = run(format!("warmpool claim {pid} --ttl 99999999"));
    assert!(!ok, "{out}");
    assert!(err.contains("ttlSeconds"), "{err}");
}

/// `warmpool pool autoscale` shows the bounds and the effective target, turns autoscale on with
/// bounds, refuses a minimum over the maximum naming the field, and `pool stats` says why the
/// target is what it is.
#[tokio::test(flavor = "multi_thread")]
async fn pool_autoscale_shows_and_changes_the_bounds() {
    let s = TestServer::start(&["--backend", "sim", "--reconcile-interval-ms", "100"]);
    let pid = s.create_project("scaled", vec![]).await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(json!({"targetSize": 2})),
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let run = |cmd: String| run_cli(&s, home.path(), &cmd);
    let (ok, out, err) = run(format!("warmpool pool autoscale {pid}"));
    assert!(ok, "{out}{err}");
    assert!(out.contains("autoscale off, 1 to 20 VMs"), "{out}");
    assert!(out.contains("effective target: 2"), "{out}");
    let (ok, out, err) = run(format!(
        "warmpool pool autoscale {pid} --enabled true --min 3 --max 5"
    ));
    assert!(ok, "{out}{err}");
    assert!(out.contains("autoscale on, 3 to 5 VMs"), "{out}");
    let (ok, out, err) = run(format!("warmpool pool autoscale {pid} --min 6"));
    assert!(!ok, "{out}");
    assert!(err.contains("min"), "{err}");
    // No claims yet: held at the minimum, once the reconciler has decided.
    let out = wait_for("the first decision", REQUEST * 4, async || {
        let (ok, out, err) = run(format!("warmpool pool stats {pid}"));
        assert!(ok, "{out}{err}");
        seen(
            out.contains("autoscale 3..5: effective target 3 (min)"),
            out,
        )
    })
    .await;
    assert!(out.contains("held at the minimum, 3"), "{out}");
    let (ok, out, err) = run(format!("warmpool --json pool autoscale {pid}"));
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({"enabled": true, "min": 3, "max": 5}));
}
