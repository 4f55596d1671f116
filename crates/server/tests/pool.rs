//! The pool end to end on the real binary and real sandboxes: filling, instant claims under
//! concurrency, staleness, live events, metrics, and crashes.

mod common;

use std::collections::HashSet;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn pool_status(s: &TestServer, pid: &str) -> Value {
    let v = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_valid("GetWarmPoolResponse", &v);
    v["status"].clone()
}

async fn stats(s: &TestServer, pid: &str) -> Value {
    s.ok("GET", &format!("/v1/projects/{pid}/warm-pool/stats"), None)
        .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_pool_fills_and_hands_out_each_vm_once() {
    let s = TestServer::start(&["--max-cold-claims", "20"]);
    let repo = TestRepo::new(&[("README", "v1\n")]);
    let pid = s
        .create_project("claims", vec![repo_input("acme/app", repo.url())])
        .await;
    s.configure_pool(&pid, target(3)).await;
    wait_for("3 ready", s.boot(), async || {
        let st = pool_status(&s, &pid).await;
        seen(st["ready"] == 3, st)
    })
    .await;
    let warm_ids: HashSet<String> = ready_ids(&s, &pid).await.into_iter().collect();

    // 20 claims at once: the 3 ready VMs go to 3 of them, each once; 17 get a VM booted for them
    // (booting at once: each claim waits as long as a boot takes).
    let wait = s.boot().as_secs();
    let claims = (0..20).map(|n| {
        let s = &s;
        let pid = pid.clone();
        async move {
            s.call(
                "POST",
                &format!("/v1/projects/{pid}/warm-pool/claim"),
                Some(json!({"taskId": format!("task {n}"), "waitSeconds": wait})),
            )
            .await
        }
    });
    let answers: Vec<(u16, Value)> = futures_util::future::join_all(claims).await;
    let mut ids = HashSet::new();
    let mut warm = 0;
    for (status, v) in &answers {
        assert_eq!(*status, 200, "{v}");
        assert_valid(
            "ListWarmPoolInstancesResponse",
            &json!({"items": [v["instance"]]}),
        );
        assert_eq!(v["instance"]["status"], "claimed");
        assert!(
            ids.insert(v["instance"]["id"].as_str().unwrap().to_string()),
            "an instance was handed out twice"
        );
        assert!(v["vm"]["agentUrl"].is_string() && v["vm"]["agentToken"].is_string());
        if v["warm"] == true {
            warm += 1;
            assert!(warm_ids.contains(v["instance"]["id"].as_str().unwrap()));
        }
    }
    assert_eq!((warm, ids.len()), (3, 20));

    // The pool refills by itself.
    wait_for("the pool refilled", s.boot(), async || {
        let st = pool_status(&s, &pid).await;
        seen(st["ready"] == 3, st)
    })
    .await;
    let st = stats(&s, &pid).await;
    assert_eq!(
        (
            st["warmClaims"].as_u64(),
            st["coldClaims"].as_u64(),
            st["claimed"].as_u64()
        ),
        (Some(3), Some(17), Some(20))
    );
    assert!(st["provisioningP50Ms"].as_u64().unwrap() <= st["provisioningP95Ms"].as_u64().unwrap());
    let pool = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert!(
        pool["metadata"]["lastClaimedAt"].is_string()
            && pool["metadata"]["lastProvisionedAt"].is_string()
    );

    // A warm claim gets a VM at the branch head; exec works through warmpool and directly.
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/claim"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["warm"], true);
    let id = v["instance"]["id"].as_str().unwrap().to_string();
    let out = s
        .exec(
            &pid,
            &id,
            "cat /home/app/README; git -C /home/app rev-parse HEAD; hostname",
        )
        .await;
    assert_eq!(
        out.output,
        format!(
            "v1\n{}\n{}\n",
            repo.head(),
            v["vm"]["instanceId"].as_str().unwrap()
        )
    );
    let agent = format!("{}/v1/exec", v["vm"]["agentUrl"].as_str().unwrap());
    let direct: Value = s
        .http
        .post(&agent)
        .bearer_auth(v["vm"]["agentToken"].as_str().unwrap())
        .json(&json!({"command": "git -C /home/app log --format=%s -1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["output"], "initial\n");
    let refused = s
        .http
        .post(&agent)
        .bearer_auth("wrong-token")
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let access = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}/vm"),
            None,
        )
        .await;
    assert_eq!(access, v["vm"]);

    // Release destroys it.
    let vm = v["vm"]["instanceId"].as_str().unwrap().to_string();
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert!(!s.vm_dirs().contains(&vm));
    let (st, _) = s
        .call(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}/exec"),
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(st, 409);
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}/vm"),
            None,
        )
        .await;
    assert_eq!(st, 409);
    // Bad claims.
    for body in [
        json!({"waitSeconds": 601}),
        json!({"waitSeconds": -1}),
        json!({"waitSeconds": "x"}),
        json!({"bogus": 1}),
    ] {
        let (st, v) = s
            .call(
                "POST",
                &format!("/v1/projects/{pid}/warm-pool/claim"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, 422, "{body}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn stale_vms_stay_claimable_until_replaced() {
    let s = TestServer::start(&["--head-check-interval-secs", "1"]);
    let repo = TestRepo::new(&[("README", "v1\n")]);
    let pid = s
        .create_project("stale", vec![repo_input("acme/app", repo.url())])
        .await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    s.ok("PATCH", &pool, Some(json!({"targetSize": 2, "setupCommands": [{"name": "v1", "command": "echo v1 > /home/version"}]}))).await;
    wait_for("2 ready", s.boot(), async || {
        let st = pool_status(&s, &pid).await;
        seen(st["ready"] == 2, st)
    })
    .await;
    let old: HashSet<String> = ready_ids(&s, &pid).await.into_iter().collect();

    // New setup commands, slow to run: the old VMs are stale but stay ready and claimable.
    s.ok("PATCH", &pool, Some(json!({"setupCommands": [{"name": "v2", "command": "sleep 3; echo v2 > /home/version"}]}))).await;
    // The next reconciler pass marks them.
    wait_for("2 stale", SETTLE, async || {
        let st = stats(&s, &pid).await;
        seen(st["stale"] == 2, st)
    })
    .await;
    assert_eq!(pool_status(&s, &pid).await["ready"], 2);
    let (st, v) = s
        .call("POST", &format!("{pool}/claim"), Some(json!({})))
        .await;
    assert_eq!((st, v["warm"].as_bool()), (200, Some(true)));
    let claimed = v["instance"]["id"].as_str().unwrap().to_string();
    assert!(old.contains(&claimed));
    assert_eq!(
        s.exec(&pid, &claimed, "cat /home/version").await.output,
        "v1\n"
    );
    // Once the replacements are ready, the remaining stale VM goes; the claimed one stays.
    wait_for("2 fresh", s.boot(), async || {
        let ids = ready_ids(&s, &pid).await;
        seen(
            ids.len() == 2 && ids.iter().all(|i| !old.contains(i)),
            format!("ready {ids:?}, stale were {old:?}"),
        )
    })
    .await;
    assert_eq!(stats(&s, &pid).await["stale"], 0);
    let fresh = ready_ids(&s, &pid).await;
    let (st, v) = s
        .call("POST", &format!("{pool}/claim"), Some(json!({})))
        .await;
    assert_eq!(st, 200);
    assert!(fresh.contains(&v["instance"]["id"].as_str().unwrap().to_string()));
    assert_eq!(
        s.exec(
            &pid,
            v["instance"]["id"].as_str().unwrap(),
            "cat /home/version"
        )
        .await
        .output,
        "v2\n"
    );
    let c = s
        .ok("GET", &format!("{pool}/instances/{claimed}"), None)
        .await;
    assert_eq!(c["status"], "claimed");

    // A new commit on the branch makes the pool's VMs stale too; replacements carry the commit.
    let before: HashSet<String> = wait_ready_ids(&s, &pid, 2, s.boot())
        .await
        .into_iter()
        .collect();
    let head = repo.commit(&[("README", "v3\n")], "v3");
    // The head is checked every second; then the replacements boot.
    wait_for("VMs at the new commit", SETTLE + s.boot(), async || {
        let ids = ready_ids(&s, &pid).await;
        seen(
            ids.len() == 2 && ids.iter().all(|i| !before.contains(i)),
            format!("ready {ids:?}, at the old commit {before:?}"),
        )
    })
    .await;
    // The pool is served from its golden (the configuration did not change): the replacements
    // are made from it and fetch the new head in their own clone step.
    for id in ready_ids(&s, &pid).await {
        let d = s.client().get_instance(&pid, &id).await.unwrap();
        let golden = meta(&d, "create_vm")["fromGolden"].clone();
        assert!(golden.is_string(), "{d:#?}");
        let clone = meta(&d, "clone_repo");
        assert_eq!(clone["commit"], head);
        assert_eq!(clone["fromGolden"], golden);
        assert!(clone["goldenCommit"].is_string(), "{clone}");
        assert_ne!(clone["goldenCommit"], head);
        assert!(
            output(&d, "clone_repo").contains(&format!("now at {head} (main)")),
            "{}",
            output(&d, "clone_repo")
        );
        assert_eq!(meta(&d, "warm_pool_setup")["fromGolden"], golden);
    }
    let v = s.client().claim(&pid, &Default::default()).await.unwrap();
    let id = v.into_response().instance.id;
    let out = s
        .exec(
            &pid,
            &id,
            "cat /home/app/README /home/version; git -C /home/app rev-parse HEAD",
        )
        .await;
    assert_eq!(out.output, format!("v3\nv2\n{head}\n"));
}

/// Reads server-sent events until `done` (or the stream ends).
async fn read_events(s: &TestServer, path: &str) -> Vec<(String, Value)> {
    use eventsource_stream::Eventsource;
    // The stream lasts as long as the boot it follows.
    let resp = s
        .http
        .get(format!("{}{}", s.url, path))
        .bearer_auth(&s.token)
        .timeout(s.boot())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap_or_else(|e| panic!("reading the events of {path}: {e}"));
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        let done = ev.event == "done";
        out.push((ev.event, data));
        if done {
            break;
        }
    }
    out
}

fn check_event_log(events: &[(String, Value)], id: &str) {
    let steps: Vec<(String, String)> = events
        .iter()
        .filter(|(k, _)| k == "step")
        .map(|(_, d)| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names = [
        "create_vm",
        "ensure_server",
        "set_env_vars",
        "project_setup",
        "warm_pool_setup",
    ];
    let expected: Vec<(String, String)> = names
        .iter()
        .flat_map(|n| {
            [
                (n.to_string(), "running".to_string()),
                (n.to_string(), "success".to_string()),
            ]
        })
        .collect();
    assert_eq!(steps, expected);
    let output: String = events
        .iter()
        .filter(|(k, d)| k == "output" && d["step"] == "warm_pool_setup")
        .map(|(_, d)| d["data"].as_str().unwrap())
        .collect();
    assert_eq!(output, "$ talk\none\nsecret=[REDACTED:SECRET]\ntwo\n");
    let (kind, done) = events.last().unwrap();
    assert_eq!(kind, "done");
    assert_eq!(done["status"], "ready");
    assert_eq!(done["instanceId"], id);
    assert_eq!(done["summary"]["completedSteps"], 5);
    let end = events
        .iter()
        .find(|(k, d)| k == "step" && d["name"] == "warm_pool_setup" && d["status"] == "success")
        .unwrap();
    assert_eq!(end.1["metadata"], json!({"commands": 1}));
    assert!(end.1["durationMs"].as_u64().unwrap() >= 1000);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn events_replay_then_follow() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("events", vec![]).await;
    s.ok(
        "PUT",
        &format!("/v1/projects/{pid}/environment-variables"),
        Some(json!({"variables": [{"name": "SECRET", "value": "very-secret-value"}]})),
    )
    .await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await;
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/test"),
            Some(json!({"setupCommands": [{"name": "talk", "command": "echo one; echo secret=$SECRET; sleep 1.5; echo two"}]})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let path = format!("/v1/projects/{pid}/warm-pool/instances/{id}/events");
    // One client from the start, one that joins mid-boot, one after the end: all see it all.
    let early = read_events(&s, &path);
    let late = async {
        wait_for("the boot is in its last step", s.boot(), async || {
            let d = s
                .ok(
                    "GET",
                    &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
                    None,
                )
                .await;
            seen(d["steps"].as_array().unwrap().len() == 4, d)
        })
        .await;
        read_events(&s, &path).await
    };
    let (early, late) = tokio::join!(early, late);
    check_event_log(&early, &id);
    check_event_log(&late, &id);
    // After the end, from the store (once the run has left memory it is replayed the same way).
    check_event_log(&read_events(&s, &path).await, &id);
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/wpi_0000000000000000/events"),
            None,
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn metrics_show_the_pool() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("metrics", vec![]).await;
    s.configure_pool(&pid, target(2)).await;
    wait_for("2 ready", s.boot(), async || {
        let st = pool_status(&s, &pid).await;
        seen(st["ready"] == 2, st)
    })
    .await;
    s.ok(
        "POST",
        &format!("/v1/projects/{pid}/warm-pool/claim"),
        Some(json!({})),
    )
    .await;
    let text = wait_for("gauges updated", SETTLE, async || {
        let text = s.metrics().await;
        seen(
            text.contains(&format!(
                "warmpool_pool_instances{{project=\"{pid}\",state=\"claimed\"}} 1"
            )),
            text,
        )
    })
    .await;
    for needle in [
        format!("warmpool_claims_total{{project=\"{pid}\",kind=\"warm\"}} 1"),
        "warmpool_claim_duration_seconds_bucket{kind=\"warm\"".to_string(),
        "warmpool_step_duration_seconds_bucket{step=\"create_vm\",result=\"success\"".to_string(),
        "warmpool_boots_total{kind=\"pool\",result=\"ready\"}".to_string(),
        "warmpool_reconcile_runs_total".to_string(),
        "# TYPE warmpool_pool_instances gauge".to_string(),
    ] {
        assert!(
            text.contains(&needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
    let (st, _) = s
        .call("GET", &format!("/v1/projects/{pid}/warm-pool/stats"), None)
        .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn kill_9_loses_and_leaks_nothing() {
    let mut s = TestServer::start(&[]);
    let pid = s.create_project("crash", vec![]).await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    // Boots that never finish, and a claim waiting for one of its own.
    s.ok(
        "PATCH",
        &pool,
        Some(json!({"targetSize": 2, "setupCommands": [{"name": "hang", "command": "sleep 600"}]})),
    )
    .await;
    let (st, cold) = s
        .call(
            "POST",
            &format!("{pool}/claim"),
            Some(json!({"waitSeconds": 1})),
        )
        .await;
    assert_eq!(
        (st, cold["instance"]["status"].as_str()),
        (202, Some("provisioning"))
    );
    assert_eq!(cold["vm"], Value::Null);
    // The pool builds its golden first (its VMs are made from it): two boots hang, the
    // golden's and the claim's, each in its setup command.
    let in_setup = |vm: &String| {
        s.vm_init_pid(vm).is_some_and(|init| {
            vm_processes(init).iter().any(|(pid, _)| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"600"))
            })
        })
    };
    let hung = wait_for("2 boots in their setup", s.boot(), async || {
        let vms = s.vm_dirs();
        let n = vms.iter().filter(|v| in_setup(v)).count();
        if n == 2 && vms.len() == 2 {
            Ok(vms)
        } else {
            Err(format!("{n} of {vms:?} in their setup"))
        }
    })
    .await;
    let procs: Vec<(i32, u64)> = hung
        .iter()
        .flat_map(|vm| vm_processes(s.vm_init_pid(vm).unwrap()))
        .collect();
    let cold_id = cold["instance"]["id"].as_str().unwrap().to_string();
    s.kill9();
    s.restart();
    // Every boot the crash interrupted is failed with a clear error, and its VM is gone.
    let d = s.wait_instance(&pid, &cold_id).await;
    assert_eq!(d.status, "failed");
    assert_eq!(
        d.failure_reason.as_deref(),
        Some("server restarted during provisioning")
    );
    wait_for("the interrupted boots' VMs gone", SETTLE, async || {
        let left: Vec<String> = s
            .vm_dirs()
            .into_iter()
            .filter(|v| hung.contains(v))
            .collect();
        seen(left.is_empty(), format!("{left:?}"))
    })
    .await;
    assert!(!any_alive(&procs), "a VM of an interrupted boot still runs");

    // Fix the setup: the pool refills; ready VMs survive the next kill -9 and are adopted again.
    s.ok(
        "PATCH",
        &pool,
        Some(json!({"setupCommands": [{"name": "ok", "command": "true"}]})),
    )
    .await;
    let before: HashSet<String> = wait_ready_ids(&s, &pid, 2, s.boot())
        .await
        .into_iter()
        .collect();
    // Each ready instance's VM and the processes it runs, to know them again after the crash.
    let mut vms = std::collections::HashMap::new();
    for id in &before {
        let d = s.ok("GET", &format!("{pool}/instances/{id}"), None).await;
        let vm = d["instanceId"].as_str().unwrap().to_string();
        let procs = vm_processes(s.vm_init_pid(&vm).unwrap());
        vms.insert(id.clone(), (vm, procs));
    }
    s.kill9();
    s.restart();
    // Re-adoption: the restarted server checks that each ready VM still answers and keeps it.
    // Waiting for its report (not for "2 ready", which a refill would also reach) proves it ran.
    let line = s
        .wait_log_line("re-adopted the ready VMs that survived", SETTLE)
        .await;
    assert!(line.contains("adopted=2 replaced=0"), "{line}");
    let after: HashSet<String> = ready_ids(&s, &pid).await.into_iter().collect();
    assert_eq!(before, after, "the ready VMs were adopted again");
    // Both are handed out warm, each the very VM that ran before the crash, and commands run in
    // them. The two claims go at once: a replacement of the first, once ready, would be handed
    // out first (the newest ready VM is), and it takes a boot's time to be ready.
    let path = format!("{pool}/claim");
    let claim = || s.call("POST", &path, Some(json!({})));
    let (a, b) = tokio::join!(claim(), claim());
    for (st, v) in [a, b] {
        assert_eq!((st, v["warm"].as_bool()), (200, Some(true)), "{v}");
        let id = v["instance"]["id"].as_str().unwrap();
        let (vm, procs) = vms.remove(id).expect("a VM adopted again");
        assert_eq!(v["vm"]["instanceId"], vm.as_str());
        assert!(any_alive(&procs), "{vm} runs the processes it ran before");
        let out = s.exec(&pid, id, "hostname").await;
        assert_eq!(out.output, format!("{vm}\n"));
    }
    // Nothing on disk that no instance owns (a VM being destroyed — say, one that did not answer
    // its health check after the restart — is gone once its destroy finishes).
    wait_for(
        "every VM directory belongs to a live instance",
        SETTLE,
        async || {
            let mut live = HashSet::new();
            for st in ["ready", "claimed", "provisioning"] {
                let v = s
                    .ok(
                        "GET",
                        &format!("{pool}/instances?status={st}&limit=50"),
                        None,
                    )
                    .await;
                for i in v["items"].as_array().unwrap() {
                    live.insert(i["instanceId"].as_str().unwrap().to_string());
                }
            }
            let stray: Vec<String> = s
                .vm_dirs()
                .into_iter()
                .filter(|d| !live.contains(d))
                .collect();
            seen(stray.is_empty(), format!("stray VM directories {stray:?}"))
        },
    )
    .await;
}
