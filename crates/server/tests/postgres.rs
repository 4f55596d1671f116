//! The real binary on a real PostgreSQL (a throwaway cluster the test starts): the pool fills,
//! claims hand each VM out once, a `kill -9` loses nothing, a second server on the same database
//! is refused, and a database outage answers 503 `unavailable` and heals by itself.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};
use warmpool_pg_cluster::PgCluster;

async fn ready_count(s: &TestServer, pid: &str) -> u64 {
    let v = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_valid("GetWarmPoolResponse", &v);
    v["status"]["ready"].as_u64().unwrap()
}

async fn instance_ids(s: &TestServer, pid: &str, status: &str) -> Vec<String> {
    let v = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances?status={status}&limit=50"),
            None,
        )
        .await;
    assert_valid("ListWarmPoolInstancesResponse", &v);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn a_pool_on_postgres_fills_claims_once_and_survives_kill_9() {
    let pg = PgCluster::new().unwrap();
    let url = pg.create_database("wp_e2e").unwrap();
    let mut s = TestServer::start(&["--store", &url]);
    assert!(
        s.log_text().contains("store: PostgreSQL"),
        "{}",
        s.log_text()
    );

    let repo = TestRepo::new(&[("README.md", "on postgres\n")]);
    let pid = s
        .create_project("pg ünïcode 'app'", vec![repo_input("acme/app", repo.url())])
        .await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            setup_commands: Some(Some(vec![command(
                "mark",
                "echo \"it's $((6*7))\" > /home/marker",
            )])),
            ..target(2)
        },
    )
    .await;
    wait_for("2 ready VMs", s.boot(), async || {
        let n = ready_count(&s, &pid).await;
        seen(n == 2, format!("{n} ready"))
    })
    .await;

    // Concurrent claims: the two ready VMs go to two different callers, once each.
    let mut claims = Vec::new();
    for _ in 0..6 {
        let (http, url, token, pid) = (s.http.clone(), s.url.clone(), s.token.clone(), pid.clone());
        claims.push(tokio::spawn(async move {
            let v: Value = http
                .post(format!("{url}/v1/projects/{pid}/warm-pool/claim"))
                .bearer_auth(token)
                .json(&json!({"waitSeconds": 0}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }));
    }
    let mut warm = Vec::new();
    for c in claims {
        let v = c.await.unwrap();
        if v["warm"] == true {
            warm.push(v["instance"]["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(warm.len(), 2, "{warm:?}");
    assert_eq!(warm.iter().collect::<HashSet<_>>().len(), 2);
    let out = s.exec(&pid, &warm[0], "cat /home/marker").await;
    assert_eq!(out.output, "it's 42\n", "{out:?}");

    // The pool refills; a crash and a restart keep its ready VMs and add none.
    let before: HashSet<String> = wait_ready_ids(&s, &pid, 2, s.boot())
        .await
        .into_iter()
        .collect();
    s.kill9();
    s.restart();
    // The restarted server checks that each ready VM still answers and keeps it (its report
    // proves the check ran: the same ids listed alone would not, the check runs after start).
    let line = s
        .wait_log_line("re-adopted the ready VMs that survived", SETTLE)
        .await;
    assert!(line.contains("adopted=2 replaced=0"), "{line}");
    let after: HashSet<String> = instance_ids(&s, &pid, "ready").await.into_iter().collect();
    assert_eq!(before, after, "the restarted server kept its ready VMs");
    // And adds none: a reconciler pass after the re-adoption launched nothing.
    s.wait_reconciler_pass().await;
    assert_eq!(ready_count(&s, &pid).await, 2);
    assert!(instance_ids(&s, &pid, "provisioning").await.is_empty());
    // The kept VMs work: one is handed out warm and runs commands. (Only the first claim is sure
    // to get one of them: its replacement may be ready, and handed out first, by the next.)
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/claim"),
            Some(json!({"waitSeconds": 0})),
        )
        .await;
    assert_eq!(v["warm"], true, "{v}");
    let id = v["instance"]["id"].as_str().unwrap();
    assert!(before.contains(id), "{id} was ready before the crash");
    let out = s.exec(&pid, id, "cat /home/marker").await;
    assert_eq!(out.output, "it's 42\n", "{out:?}");
    let other = before.iter().find(|b| *b != id).unwrap();
    let d = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/{other}"),
            None,
        )
        .await;
    assert_eq!(d["status"], "ready", "{d}");

    // A second server on the same database needs the same secrets key and admin token, and a
    // node name of its own: each mismatch is refused at start with what to do.
    let other = tempfile::tempdir().unwrap();
    let second = |extra: &[&str]| {
        // Refused at start: a server that starts instead is killed, failing the test.
        let out = output_within(
            std::process::Command::new(BIN)
                .args(["serve", "--listen", "127.0.0.1:0", "--backend", "sim"])
                .arg("--data-dir")
                .arg(other.path())
                .args(["--store", &url])
                .args(extra),
            "a second server on the database",
            REQUEST,
        );
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = second(&[]);
    assert!(err.contains("--secret-key-file"), "{err}");
    let key = s.data_dir().join("secret.key");
    let key = key.to_str().unwrap();
    let err = second(&["--secret-key-file", key]);
    assert!(err.contains("same --admin-token"), "{err}");
    let err = second(&["--secret-key-file", key, "--admin-token", &s.token]);
    assert!(err.contains("is held by another live node"), "{err}");
}

#[tokio::test]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn a_database_outage_answers_503_and_heals() {
    let pg = PgCluster::new().unwrap();
    let url = pg.create_database("wp_outage").unwrap();
    let s = TestServer::start(&["--store", &url, "--backend", "sim"]);
    let pid = s.create_project("outage", vec![]).await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    s.ok("PATCH", &pool, Some(json!({"targetSize": 3}))).await;
    let ready: HashSet<String> = wait_ready_ids(&s, &pid, 3, s.boot())
        .await
        .into_iter()
        .collect();

    pg.stop_immediately().unwrap();
    for (method, path, body) in [
        ("GET", pool.clone(), None),
        (
            "POST",
            format!("{pool}/claim"),
            Some(json!({"waitSeconds": 0})),
        ),
        ("GET", "/v1/projects".to_string(), None),
    ] {
        let (st, v) = s.call(method, &path, body).await;
        assert_eq!(st, 503, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    }
    let (st, _) = s.call("GET", "/readyz", None).await;
    assert_eq!(st, 503);

    pg.start().unwrap();
    // The server reconnects as soon as the database accepts connections again.
    wait_for("the store is back", SETTLE, async || {
        let (st, v) = s.call("GET", "/readyz", None).await;
        seen(st == 200, format!("{st} {v}"))
    })
    .await;
    // Nothing was lost and nothing claimed twice: the three VMs are still there — the same three,
    // not replacements — and three claims get three different ones.
    let (st, v) = s.call("GET", &pool, None).await;
    assert_eq!((st, &v["status"]["ready"]), (200, &json!(3)), "{v}");
    let again: HashSet<String> = instance_ids(&s, &pid, "ready").await.into_iter().collect();
    assert_eq!(again, ready, "the ready VMs outlived the outage");
    // Three claims get three different VMs. The first is one of those three; later ones may get
    // a replacement of an earlier claim instead (sim boots are instant and the newest ready VM
    // is handed out first).
    let mut got = Vec::new();
    for _ in 0..3 {
        let v = s
            .ok(
                "POST",
                &format!("{pool}/claim"),
                Some(json!({"waitSeconds": 0})),
            )
            .await;
        assert_eq!(v["warm"], true, "{v}");
        let id = v["instance"]["id"].as_str().unwrap().to_string();
        assert!(!got.contains(&id), "{id} was claimed twice");
        got.push(id);
    }
    assert!(
        ready.contains(&got[0]),
        "the first claim got a VM that was ready before the outage"
    );
    assert!(s.log_text().contains("store unavailable"));
    assert!(!s.log_text().contains("panicked"));
}
