//! Bad input and rough edges, end to end on the real binary: duplicate JSON keys, charsets,
//! reserved environment names, odd repo names, duplicate command names, private files, slow and
//! idle connections, a boot cut short by a crash, and test boots that must not enable a pool.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn first_field(v: &Value) -> String {
    v["error"]["details"][0]["field"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_names_and_commands_that_would_mislead_are_refused() {
    let s = TestServer::start(&["--backend", "sim"]);
    let p = s.create_project("gaps", vec![]).await;
    let pool = format!("/v1/projects/{p}/warm-pool");
    s.ok(
        "PATCH",
        &pool,
        Some(json!({"enabled": false, "targetSize": 2})),
    )
    .await;
    let config = s.ok("GET", &pool, None).await["config"].clone();

    // One key given twice: refused, naming it, wherever it is.
    for (body, field) in [
        (r#"{"enabled": true, "enabled": false}"#, "enabled"),
        (
            r#"{"setupCommands": [{"name": "a", "command": "x", "command": "y"}]}"#,
            "setupCommands[0].command",
        ),
    ] {
        let (st, v) = s
            .raw("PATCH", &pool, Some("application/json"), body.into())
            .await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(first_field(&v), field, "{v}");
        assert!(v["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("twice"));
    }
    // JSON in another charset is refused; UTF-8 said out loud is fine.
    let (st, v) = s
        .raw(
            "PATCH",
            &pool,
            Some("application/json; charset=utf-16"),
            br#"{"targetSize": 3}"#.to_vec(),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("UTF-8"));
    assert_eq!(s.ok("GET", &pool, None).await["config"], config);
    let (st, v) = s
        .raw(
            "PATCH",
            &pool,
            Some("application/json; charset=\"UTF-8\""),
            br#"{"targetSize": 2}"#.to_vec(),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // Environment names that would break (or take over) every command.
    let env = format!("/v1/projects/{p}/environment-variables");
    for name in [
        "SHELLOPTS",
        "BASHOPTS",
        "BASH_ENV",
        "IFS",
        "LD_PRELOAD",
        "ENV",
        "EUID",
    ] {
        let (st, v) = s
            .call(
                "PUT",
                &env,
                Some(json!({"variables": [{"name": name, "value": "x"}]})),
            )
            .await;
        assert_eq!(st, 422, "{name}: {v}");
        assert_eq!(first_field(&v), "variables[0].name");
        assert!(
            v["error"]["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains(name),
            "{v}"
        );
    }
    s.ok(
        "PUT",
        &env,
        Some(json!({"variables": [{"name": "PATH_EXTRA", "value": "ok"}]})),
    )
    .await;

    // Repository names that are not a directory of their own under /home.
    let repo = TestRepo::new(&[("a", "b")]);
    for name in [
        "acme/.git",
        "acme/.GIT",
        ".../app",
        "acme/...",
        "acme/..",
        "./app",
    ] {
        let (st, v) = s
            .call(
                "PATCH",
                &format!("/v1/projects/{p}"),
                Some(json!({"repos": [{"repoFullName": name, "url": repo.url()}]})),
            )
            .await;
        assert_eq!(st, 422, "{name}: {v}");
        assert_eq!(first_field(&v), "repos[0].repoFullName", "{v}");
    }
    let (st, v) = s
        .call(
            "PATCH",
            &format!("/v1/projects/{p}"),
            Some(json!({"repos": [{"repoFullName": "acme/.github", "url": repo.url()}]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // Two commands of one list with one name.
    let twice = json!([
        {"name": "build", "command": "true"},
        {"name": "build", "command": "false"}
    ]);
    for (method, path, body) in [
        ("PATCH", pool.clone(), json!({"setupCommands": twice})),
        (
            "POST",
            format!("{pool}/test"),
            json!({"setupCommands": twice}),
        ),
        (
            "PATCH",
            format!("/v1/projects/{p}/devbox"),
            json!({"setupCommands": twice}),
        ),
    ] {
        let (st, v) = s.call(method, &path, Some(body)).await;
        assert_eq!(st, 422, "{method} {path}: {v}");
        assert_eq!(first_field(&v), "setupCommands[1].name", "{v}");
    }
    assert_eq!(
        s.ok("GET", &pool, None).await["config"]["setupCommands"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_and_its_secrets_are_the_owners_alone() {
    let mut s = TestServer::start(&["--backend", "sim"]);
    s.create_project("modes", vec![]).await;
    let data = s.data_dir();
    assert_eq!(mode(&data), 0o700);
    for f in [
        "warmpool.db",
        "warmpool.db-wal",
        "admin-token",
        "secret.key",
        "node-id",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // Files an older version left readable are made private at the next start.
    use std::os::unix::fs::PermissionsExt;
    s.kill9();
    for f in ["warmpool.db", "warmpool.db-wal", "admin-token"] {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.restart();
    s.ok("GET", "/v1/projects", None).await;
    assert_eq!(mode(&data), 0o700);
    for f in ["warmpool.db", "warmpool.db-wal", "admin-token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}

/// Reads from `stream` until the server closes it; fails the test if it stays open for
/// `limit`.
fn read_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the connection was still open after {limit:?} ({e}); read so far: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_are_closed() {
    let s = TestServer::start(&["--backend", "sim", "--header-read-timeout-secs", "1"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    // The server closes each within its 1 s header timeout; a loaded machine adds a few.
    let closed_within = Duration::from_secs(10);
    // Headers that never end.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let got = read_until_closed(&mut slow, closed_within);
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
    // A kept-alive connection left idle after its answer.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut idle, closed_within);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // A connection that sends nothing at all.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    read_until_closed(&mut silent, closed_within);
    // Ordinary requests are unaffected.
    s.ok("GET", "/v1/projects", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_boot_saving_commands_creates_a_disabled_pool() {
    let s = TestServer::start(&["--backend", "sim"]);
    let p = s.create_project("quiet", vec![]).await;
    let pool = format!("/v1/projects/{p}/warm-pool");
    assert_eq!(s.ok("GET", &pool, None).await["config"], Value::Null);
    let d = s.test_boot(&p, boot_with(&[("hi", "echo hi")])).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let v = s.ok("GET", &pool, None).await;
    assert_valid("GetWarmPoolResponse", &v);
    assert_eq!(v["config"]["enabled"], false, "{v}");
    assert_eq!(v["config"]["setupCommands"][0]["name"], "hi");
    // A disabled pool boots nothing: a reconciler pass that saw it has run, and launched
    // nothing.
    s.wait_reconciler_pass().await;
    let items = s.ok("GET", &format!("{pool}/instances"), None).await;
    assert!(
        items["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["isTest"] == true),
        "no pool VM boots: {items}"
    );
    // An existing pool keeps its `enabled`.
    s.ok("PATCH", &pool, Some(json!({"enabled": true}))).await;
    s.test_boot(&p, boot_with(&[("hi", "echo again")])).await;
    assert_eq!(s.ok("GET", &pool, None).await["config"]["enabled"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_boot_stopped_by_a_crash_names_its_step_and_lasts_as_long_as_it_ran() {
    let mut s = TestServer::start(&["--backend", "sim", "--lease-secs", "3"]);
    let p = s.create_project("crash", vec![]).await;
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{p}/warm-pool/test"),
            Some(json!({"setupCommands": [{"name": "long", "command": "sleep 600"}]})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let path = format!("/v1/projects/{p}/warm-pool/instances/{id}");
    // Until warm_pool_setup runs: the four steps before it are recorded.
    let began = wait_for("the boot reaches warm_pool_setup", s.boot(), async || {
        let d = s.ok("GET", &path, None).await;
        let steps = d["steps"].as_array().unwrap();
        match steps.get(3) {
            Some(st) => {
                Ok(warmpool_types::time::parse_ts(st["timestamp"].as_str().unwrap()).unwrap())
            }
            None => Err(d),
        }
    })
    .await;
    // ... and until this node's lease was renewed while the step ran: the last moment the
    // server is known to have been running it.
    let store = warmpool_store::SqliteStore::open(&s.data_dir().join("warmpool.db")).unwrap();
    // Leases of 3 s are renewed every second or so.
    let alive = wait_for(
        "the lease renewed a second into the step",
        SETTLE,
        async || {
            use warmpool_store::Store;
            let alive = store.list_nodes().await.unwrap()[0].renewed_at;
            if alive >= began + 1000 {
                Ok(alive)
            } else {
                Err(format!("renewed at {alive}, the step began at {began}"))
            }
        },
    )
    .await;
    drop(store);
    s.restart();
    let d = s.wait_instance(&p, &id).await;
    assert_eq!(d.status, "failed", "{d:#?}");
    assert_failed_at(
        &d,
        "warm_pool_setup",
        "server restarted during provisioning",
    );
    assert_eq!(d.steps.len(), 5, "{d:#?}");
    let last = &d.steps[4];
    assert_eq!(
        (last.name.as_str(), last.status),
        ("warm_pool_setup", StepResult::Error),
        "{d:#?}"
    );
    let lasted = last.duration_ms.unwrap() as i64;
    assert!(
        lasted >= alive - began,
        "{lasted} ms < {} ms: {d:#?}",
        alive - began
    );
    let created = warmpool_types::time::parse_ts(&d.created_at).unwrap();
    let ended = warmpool_types::time::parse_ts(&last.timestamp).unwrap();
    assert_eq!(d.summary.total_duration_ms as i64, ended - created);
    assert_eq!(d.summary.completed_steps, 4);
}

#[test]
fn a_missing_local_repos_root_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // Refused at start: a server that starts instead is killed, failing the test.
    let out = output_within(
        std::process::Command::new(BIN)
            .args(["serve", "--backend", "sim", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--allow-local-repos", "/nonexistent/warmpool-repos"]),
        "a server with a missing repos root",
        REQUEST,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-local-repos /nonexistent/warmpool-repos: no such directory"),
        "{err}"
    );
}
