//! Several nodes on one PostgreSQL, as real processes with real sandboxes: one pool across them,
//! no VM claimed twice, placement within each node's capacity, requests about a VM forwarded to
//! its node, a `kill -9`ed node's VMs replaced by the others (and cleaned up when it returns), and
//! a database restart in the middle of claims.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use warmpool_pg_cluster::PgCluster;
use warmpool_store::{PgStore, Store};
use warmpool_types::state::{InstanceKind, InstanceStatus};

const LIVE: &[InstanceStatus] = &[
    InstanceStatus::Provisioning,
    InstanceStatus::Ready,
    InstanceStatus::Claimed,
];

/// Nodes of one deployment share the admin token and the secrets key.
const ADMIN: &str = "nodes-test-admin-token-$'\"-0123456789";

fn shared_key() -> &'static str {
    static KEY: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = KEY.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret.key"), [7u8; 32]).unwrap();
        d
    });
    Box::leak(
        dir.path()
            .join("secret.key")
            .to_string_lossy()
            .to_string()
            .into_boxed_str(),
    )
}

fn start_node(url: &str, name: &str, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--store",
        url,
        "--node-name",
        name,
        "--admin-token",
        ADMIN,
        "--secret-key-file",
        shared_key(),
        "--lease-secs",
        "3",
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn node(url: &str, name: &str, capacity: u32) -> TestServer {
    start_node(
        url,
        name,
        &[
            "--capacity",
            &capacity.to_string(),
            "--reconcile-interval-ms",
            "300",
            "--max-cold-claims",
            "2",
        ],
    )
}

async fn ready(s: &TestServer, pid: &str) -> u64 {
    let v = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_valid("GetWarmPoolResponse", &v);
    v["status"]["ready"].as_u64().unwrap()
}

/// Live instances per node, as the store records them.
async fn live_by_node(store: &PgStore) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for i in store.instances_in(LIVE).await.unwrap() {
        // A saved golden runs no VM.
        if i.kind == InstanceKind::Golden && i.status == InstanceStatus::Ready {
            continue;
        }
        *n.entry(i.node.unwrap_or_default()).or_default() += 1;
    }
    n
}

async fn make_pool(s: &TestServer, name: &str, repo: &TestRepo, size: u32) -> String {
    let pid = s
        .create_project(name, vec![repo_input("acme/app", repo.url())])
        .await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(json!({"targetSize": size, "setupCommands": [
            {"name": "host", "command": "hostname > /home/booted-on"}
        ]})),
    )
    .await;
    pid
}

#[tokio::test]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn three_nodes_are_one_pool_service() {
    let pg = PgCluster::new().unwrap();
    let url = pg.create_database("wp_nodes").unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    let nodes = [
        node(&url, "n1", 3),
        node(&url, "n2", 3),
        node(&url, "n3", 3),
    ];
    let repo = TestRepo::new(&[("README.md", "nodes\n")]);
    let a = make_pool(&nodes[0], "alpha", &repo, 4).await;
    let b = make_pool(&nodes[1], "beta 'ü'", &repo, 4).await;

    // Targets are global: 4 + 4 VMs over 3 nodes of 3, never more than 3 on one. Each node boots
    // its share at once, three servers on the same cores: two boots' time.
    wait_for("both pools full", 2 * SANDBOX_BOOT, async || {
        let by_node = live_by_node(&store).await;
        assert!(
            by_node.values().all(|n| *n <= 3),
            "over capacity: {by_node:?}"
        );
        let (ra, rb) = (ready(&nodes[2], &a).await, ready(&nodes[2], &b).await);
        // Settled: 8 live and nothing else (a golden still being built, or a replacement
        // booting beside the VM it replaces, is live for a moment after the counts are full).
        let live = by_node.values().sum::<usize>();
        seen(
            ra == 4 && rb == 4 && live == 8,
            format!("{ra} and {rb} ready, live by node {by_node:?}"),
        )
    })
    .await;
    let by_node = live_by_node(&store).await;
    assert_eq!(by_node.values().sum::<usize>(), 8, "{by_node:?}");
    assert!(by_node.len() == 3, "every node hosts some: {by_node:?}");
    for (i, s) in nodes.iter().enumerate() {
        let hosted = s.vm_dirs().len();
        let recorded = by_node.get(&format!("n{}", i + 1)).copied().unwrap_or(0);
        assert_eq!(
            hosted,
            recorded,
            "node n{} hosts what the store says",
            i + 1
        );
    }

    // 100 concurrent claims spread over the three nodes: no VM is handed out twice.
    let mut tasks = Vec::new();
    for k in 0..100usize {
        let s = &nodes[k % 3];
        let pid = if k % 2 == 0 { a.clone() } else { b.clone() };
        let (http, base, token) = (s.http.clone(), s.url.clone(), s.token.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/projects/{pid}/warm-pool/claim"))
                .bearer_auth(token)
                .json(&json!({"waitSeconds": 0, "taskId": format!("task-{k}")}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap(), pid)
        }));
    }
    let mut warm = Vec::new();
    let mut ids = HashSet::new();
    let mut claimed = Vec::new();
    for t in tasks {
        let (status, v, pid) = t.await.unwrap();
        assert!(
            matches!(status, 200 | 202 | 429),
            "a claim answered {status}: {v}"
        );
        if status == 429 {
            assert_valid("ErrorResponse", &v);
            continue;
        }
        let id = v["instance"]["id"].as_str().unwrap().to_string();
        assert!(ids.insert(id.clone()), "{id} was handed out twice");
        if v["warm"] == true {
            warm.push(id.clone());
        }
        claimed.push((pid, id));
    }
    assert!(warm.len() >= 8, "the 8 ready VMs were claimed: {warm:?}");

    // A claimed VM on another node is reached through any node: `exec` is forwarded.
    let (pid, id) = claimed
        .iter()
        .find(|(_, id)| warm.contains(id))
        .unwrap()
        .clone();
    let host = store
        .get_instance(&id)
        .await
        .unwrap()
        .unwrap()
        .node
        .unwrap();
    let other = nodes
        .iter()
        .enumerate()
        .find(|(i, _)| format!("n{}", i + 1) != host)
        .unwrap()
        .1;
    let out = other
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}/exec"),
            Some(json!({"command": "printf '%s|' \"$0\" ok; cat /home/booted-on"})),
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");
    assert!(
        out["output"].as_str().unwrap().starts_with("bash|ok|"),
        "{out}"
    );
    // And a boot's events too, from a node that did not run it.
    let events = other
        .http
        .get(format!(
            "{}/v1/projects/{pid}/warm-pool/instances/{id}/events",
            other.url
        ))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // The boot is over: its events are replayed at once.
    let text = tokio::time::timeout(REQUEST, async {
        let mut body = String::new();
        let mut stream = events.bytes_stream();
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if body.contains("event: done") {
                break;
            }
        }
        body
    })
    .await
    .expect("the forwarded event stream ends with done");
    assert!(text.contains("event: step"), "{text}");

    // Releasing the claimed VMs through any node frees their nodes; the pools refill within
    // every node's capacity, and each node's VMs are exactly its live instances.
    for (k, (pid, id)) in claimed.iter().enumerate() {
        nodes[k % 3]
            .ok(
                "DELETE",
                &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
                None,
            )
            .await;
    }
    wait_for(
        "the pools refilled and nodes cleaned up",
        2 * SANDBOX_BOOT,
        async || {
            let by_node = live_by_node(&store).await;
            assert!(
                by_node.values().all(|n| *n <= 3),
                "over capacity: {by_node:?}"
            );
            let hosted: Vec<usize> = nodes.iter().map(|s| s.vm_dirs().len()).collect();
            let hosted_matches = hosted
                .iter()
                .enumerate()
                .all(|(i, n)| *n == by_node.get(&format!("n{}", i + 1)).copied().unwrap_or(0));
            let (ra, rb) = (ready(&nodes[0], &a).await, ready(&nodes[1], &b).await);
            seen(
                hosted_matches && ra == 4 && rb == 4,
                format!("{ra} and {rb} ready, VMs hosted {hosted:?}, live by node {by_node:?}"),
            )
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn a_lost_node_is_replaced_and_returns_clean() {
    let pg = PgCluster::new().unwrap();
    let url = pg.create_database("wp_loss").unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    // n1 fills the pool alone; n2 joins; then n1 dies.
    let mut n1 = node(&url, "n1", 4);
    let repo = TestRepo::new(&[("README.md", "loss\n")]);
    let pid = make_pool(&n1, "loss", &repo, 4).await;
    wait_for("the pool is full", n1.boot(), async || {
        let n = ready(&n1, &pid).await;
        seen(n == 4, format!("{n} ready"))
    })
    .await;
    let n2 = node(&url, "n2", 4);
    // Make sure the node about to die hosts some of the pool.
    let on_n1: Vec<String> = store
        .instances_in(LIVE)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.node.as_deref() == Some("n1"))
        .map(|i| i.id)
        .collect();
    assert!(!on_n1.is_empty(), "n1 hosts part of the pool");

    n1.kill9();
    // Within the lease (3 s) and a reconcile interval (300 ms), n2 fails n1's VMs and replaces
    // them.
    wait_for("n1's instances failed", SETTLE, async || {
        let mut statuses = Vec::new();
        for id in &on_n1 {
            statuses.push(store.get_instance(id).await.unwrap().unwrap().status);
        }
        seen(
            statuses.iter().all(|s| *s == InstanceStatus::Failed),
            format!("{statuses:?}"),
        )
    })
    .await;
    let d = n2
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/{}", on_n1[0]),
            None,
        )
        .await;
    assert_valid("WarmPoolInstanceDetail", &d);
    assert!(
        d["failureReason"]
            .as_str()
            .unwrap_or_default()
            .contains("node n1 was lost"),
        "{d}"
    );
    wait_for("n2 refilled the pool", n2.boot(), async || {
        let n = ready(&n2, &pid).await;
        seen(n == 4, format!("{n} ready"))
    })
    .await;
    assert_eq!(live_by_node(&store).await.get("n1"), None);

    // n1 comes back on its data dir: it is the same node, destroys the VMs it no longer owns,
    // and the pool keeps exactly its 4.
    let leftovers = n1.vm_dirs();
    assert!(!leftovers.is_empty(), "n1's VMs outlived its crash");
    let procs: Vec<(i32, u64)> = leftovers
        .iter()
        .filter_map(|vm| n1.vm_init_pid(vm))
        .flat_map(vm_processes)
        .collect();
    assert!(any_alive(&procs), "n1's VMs still run");
    n1.restart();
    wait_for("n1 cleaned up", SETTLE, async || {
        let dirs = n1.vm_dirs();
        seen(dirs.is_empty(), format!("VM directories {dirs:?}"))
    })
    .await;
    assert!(!any_alive(&procs), "n1's old VMs were destroyed");
    // ... and adds nothing: once passes of both nodes' reconcilers have seen the full pool,
    // it still holds exactly its 4.
    n1.wait_reconciler_pass().await;
    n2.wait_reconciler_pass().await;
    assert_eq!(ready(&n1, &pid).await, 4);
    let live = store.instances_in(LIVE).await.unwrap();
    let pool: Vec<_> = live
        .iter()
        .filter(|i| i.kind == InstanceKind::Pool)
        .collect();
    assert_eq!(pool.len(), 4, "no duplicates: {live:?}");
}

/// Claim leases on two nodes: a lease that runs out ends once — one node's conditional update,
/// one log line over both nodes, the same `endedAt` read from either — and its VM is gone from
/// whichever node hosted it; a lease renewed through the other node lives on.
#[tokio::test]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn a_lease_runs_out_once_across_nodes() {
    let pg = PgCluster::new().unwrap();
    let url = pg.create_database("wp_leases").unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    let nodes = [node(&url, "n1", 3), node(&url, "n2", 3)];
    let repo = TestRepo::new(&[("README.md", "leases\n")]);
    let pid = make_pool(&nodes[0], "leases", &repo, 3).await;
    wait_for("the pool full", 2 * SANDBOX_BOOT, async || {
        let n = ready(&nodes[1], &pid).await;
        seen(n == 3, format!("{n} ready"))
    })
    .await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    let mut claimed = Vec::new();
    for (k, s) in nodes.iter().chain(&nodes[..1]).enumerate() {
        let c = s
            .ok(
                "POST",
                &format!("{pool}/claim"),
                Some(json!({"taskId": format!("t{k}"), "ttlSeconds": 2})),
            )
            .await;
        assert!(c["expiresAt"].is_string(), "{c}");
        claimed.push(c["instance"]["id"].as_str().unwrap().to_string());
    }
    // The third, claimed through n1, renewed through n2.
    let kept = claimed.pop().unwrap();
    let r = nodes[1]
        .ok(
            "POST",
            &format!("{pool}/instances/{kept}/renew"),
            Some(json!({"ttlSeconds": 3600})),
        )
        .await;
    assert_eq!(r["status"], "claimed", "{r}");
    let vms: Vec<(String, String)> = {
        let mut v = Vec::new();
        for id in &claimed {
            let row = store.get_instance(id).await.unwrap().unwrap();
            v.push((row.vm_id, row.node.unwrap_or_default()));
        }
        v
    };
    for id in &claimed {
        wait_for("the lease to run out", SANDBOX_BOOT, async || {
            let life = lifecycle(&nodes[0], &pool, id).await;
            seen(life["endReason"] == "expired", life)
        })
        .await;
    }
    for (k, id) in claimed.iter().enumerate() {
        let (a, b) = (
            lifecycle(&nodes[0], &pool, id).await,
            lifecycle(&nodes[1], &pool, id).await,
        );
        assert_eq!(a, b, "both nodes read one record");
        assert_eq!(
            (&a["status"], &a["taskId"]),
            (&json!("destroyed"), &json!(format!("t{k}")))
        );
        // The node that ended it says so just after its write (and its log is read apart).
        let lines = || -> usize {
            nodes
                .iter()
                .map(|s| {
                    s.log_text()
                        .lines()
                        .filter(|l| l.contains("lease ran out") && l.contains(id.as_str()))
                        .count()
                })
                .sum()
        };
        wait_for("the expiry's log line", REQUEST, async || {
            let n = lines();
            seen(n >= 1, n)
        })
        .await;
        for s in &nodes {
            s.wait_reconciler_pass().await;
        }
        assert_eq!(lines(), 1, "{id} ended once over both nodes");
    }
    // Each VM is gone from its node (at once on the node that ended it, else by its sweep).
    wait_for(
        "the expired VMs to be destroyed",
        SANDBOX_BOOT,
        async || {
            let left: Vec<&(String, String)> = vms
                .iter()
                .filter(|(vm, _)| nodes.iter().any(|s| s.vm_dirs().contains(vm)))
                .collect();
            seen(left.is_empty(), format!("still hosted: {left:?}"))
        },
    )
    .await;
    let life = lifecycle(&nodes[0], &pool, &kept).await;
    assert_eq!(
        (&life["status"], &life["endedAt"]),
        (&json!("claimed"), &Value::Null),
        "{life}"
    );
}

#[tokio::test]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn a_database_restart_during_claims_loses_and_duplicates_nothing() {
    let pg = PgCluster::new().unwrap();
    let url = pg.create_database("wp_dbloss").unwrap();
    let n1 = start_node(&url, "n1", &["--backend", "sim"]);
    let n2 = start_node(&url, "n2", &["--backend", "sim"]);
    let pid = n1.create_project("db restart", vec![]).await;
    n1.configure_pool(&pid, target(20)).await;
    wait_for("the pool is full", n1.boot(), async || {
        let n = ready(&n1, &pid).await;
        seen(n == 20, format!("{n} ready"))
    })
    .await;

    // Claims keep coming on both nodes while the database goes down for longer than a lease.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Each worker's claims accepted so far (200: a VM handed out, 202: one booting for it).
    let answered: [std::sync::Arc<std::sync::atomic::AtomicUsize>; 2] = Default::default();
    let answered_now = || {
        answered
            .each_ref()
            .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
    };
    let mut workers = Vec::new();
    for (s, ok) in [&n1, &n2].into_iter().zip(&answered) {
        let (http, base, token, pid, stop, ok) = (
            s.http.clone(),
            s.url.clone(),
            s.token.clone(),
            pid.clone(),
            stop.clone(),
            ok.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut codes = HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/v1/projects/{pid}/warm-pool/claim"))
                    .bearer_auth(&token)
                    .json(&json!({"waitSeconds": 0}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                codes.insert(status);
                if matches!(status, 200 | 202) {
                    ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                match status {
                    200 if v["warm"] == true => {
                        got.push(v["instance"]["id"].as_str().unwrap().to_string())
                    }
                    200 | 202 | 429 => {}
                    503 => assert_eq!(v["error"]["code"], "unavailable", "{v}"),
                    other => panic!("a claim answered {other}: {v}"),
                }
                // A pace of claims, not a wait for anything.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (got, codes)
        }));
    }
    let readyz = async || {
        (
            n1.call("GET", "/readyz", None).await.0,
            n2.call("GET", "/readyz", None).await.0,
        )
    };
    wait_for("claims accepted on both nodes", SETTLE, async || {
        let n = answered_now();
        seen(n.iter().all(|n| *n > 0), format!("{n:?} accepted"))
    })
    .await;
    pg.stop_immediately().unwrap();
    let stopped = std::time::Instant::now();
    wait_for("both nodes to see the outage", SETTLE, async || {
        let r = readyz().await;
        seen(r == (503, 503), format!("/readyz answered {r:?}"))
    })
    .await;
    // The outage must outlast a lease (3 s): a duration the test sets, not a condition.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    pg.start().unwrap();
    wait_for("both nodes are ready again", SETTLE, async || {
        let r = readyz().await;
        seen(r == (200, 200), format!("/readyz answered {r:?}"))
    })
    .await;
    // Claims succeed again on both nodes, and each node's reconciler has had passes after the
    // outage — where it would have judged the other node lost — before the verdict.
    let at_ready = answered_now();
    wait_for("claims accepted again on both nodes", SETTLE, async || {
        let n = answered_now();
        seen(
            n[0] > at_ready[0] && n[1] > at_ready[1],
            format!("{n:?} accepted, {at_ready:?} when the database was back"),
        )
    })
    .await;
    n1.wait_reconciler_pass().await;
    n2.wait_reconciler_pass().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut claimed = Vec::new();
    let mut codes = HashSet::new();
    for w in workers {
        let (got, c) = w.await.unwrap();
        claimed.extend(got);
        codes.extend(c);
    }
    assert!(codes.contains(&503), "the outage was seen: {codes:?}");
    assert!(codes.contains(&200), "claims succeeded: {codes:?}");
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a VM was claimed twice");
    // Every acknowledged claim is recorded as claimed: none was lost.
    let store = PgStore::connect(&url).await.unwrap();
    for id in &claimed {
        let i = store.get_instance(id).await.unwrap().unwrap();
        assert_eq!(i.status, InstanceStatus::Claimed, "{id}");
    }
    // The outage was longer than a lease, yet no node judged the other lost.
    let failed = store.instances_in(&[InstanceStatus::Failed]).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!n1.log_text().contains("panicked") && !n2.log_text().contains("panicked"));
}
