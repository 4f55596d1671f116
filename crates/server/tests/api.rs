//! The HTTP contract: auth, the error shape, validation, the compatible schemas, projects,
//! environment variables, devbox settings, clear, test-instance expiry and recovery after a crash.

mod common;

use common::*;
use serde_json::{json, Value};

/// Waits until the project's pool has `n` ready instances (its boots run at once).
async fn wait_ready(s: &TestServer, pid: &str, n: u64) {
    wait_for(
        &format!("{n} ready and nothing else"),
        s.boot(),
        async || {
            let v = s
                .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
                .await;
            assert_valid("GetWarmPoolResponse", &v);
            assert_eq!(v["status"]["failed"], 0, "a pool boot failed: {v}");
            // Settled: nothing being replaced (a stale VM's replacement boots beside it).
            seen(
                v["status"] == json!({"ready": n, "provisioning": 0, "failed": 0}),
                v,
            )
        },
    )
    .await;
}

fn details_fields(v: &Value) -> Vec<String> {
    v["error"]["details"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn auth_and_not_found() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("auth", vec![]).await;
    let path = format!("/v1/projects/{pid}/warm-pool");
    let (st, v) = s.call_as(None, "GET", &path, None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (st, v) = s
        .call_as(Some("wp_not-a-real-token"), "GET", &path, None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // Unknown and malformed ids are 404 alike.
    for p in [
        "/v1/projects/proj_0000000000000000/warm-pool".to_string(),
        "/v1/projects/proj_123/warm-pool".to_string(),
        "/v1/projects/..%2F..%2Fetc/warm-pool".to_string(),
        format!("/v1/projects/{pid}/warm-pool/instances/wpi_0000000000000000"),
        format!("/v1/projects/{pid}/warm-pool/instances/not-an-id"),
        "/v1/nothing-here".to_string(),
    ] {
        let (st, v) = s.call("GET", &p, None).await;
        assert_eq!(st, 404, "{p}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    // Open endpoints.
    let h = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let r = s
        .http
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = s
        .http
        .get(format!("{}/openapi.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in [
        "/v1/projects/{projectId}/warm-pool",
        "/v1/projects/{projectId}/warm-pool/test",
        "/v1/projects/{projectId}/warm-pool/instances",
        "/v1/projects/{projectId}/warm-pool/instances/{id}",
        "/v1/projects/{projectId}/warm-pool/instances/{id}/exec",
        "/v1/projects/{projectId}/warm-pool/clear",
        "/v1/projects",
        "/v1/projects/{projectId}",
        "/v1/projects/{projectId}/environment-variables",
        "/v1/projects/{projectId}/devbox",
        "/healthz",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from /openapi.json"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/projects/{projectId}/warm-pool"]["get"]["operationId"],
        "getWarmPool"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn warm_pool_config_follows_the_published_contract() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("pool config", vec![]).await;
    let path = format!("/v1/projects/{pid}/warm-pool");
    let v = s.ok("GET", &path, None).await;
    assert_valid("GetWarmPoolResponse", &v);
    assert_eq!(v["config"], Value::Null);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["metadata"], Value::Null);

    // The first PATCH creates the config with defaults for what it does not give.
    let v = s.ok("PATCH", &path, Some(json!({"targetSize": 3}))).await;
    assert_valid("UpdateWarmPoolResponse", &v);
    let c = &v["config"];
    assert_eq!(
        (
            c["enabled"].clone(),
            c["targetSize"].clone(),
            c["maxAgeMinutes"].clone(),
            c["branch"].clone(),
            c["setupCommands"].clone()
        ),
        (json!(true), json!(3), json!(60), Value::Null, Value::Null)
    );
    // Partial updates change only what they name; null clears.
    let v = s
        .ok("PATCH", &path, Some(json!({"branch": "release/1.x", "setupCommands": [{"name": "a", "command": "true", "background": false}]})))
        .await;
    assert_eq!(v["config"]["targetSize"], 3);
    assert_eq!(v["config"]["branch"], "release/1.x");
    assert_eq!(
        v["config"]["setupCommands"][0],
        json!({"name": "a", "command": "true", "background": false})
    );
    let v = s
        .ok(
            "PATCH",
            &path,
            Some(json!({"branch": null, "maxAgeMinutes": 30.0})),
        )
        .await;
    assert_eq!(v["config"]["branch"], Value::Null);
    assert_eq!(v["config"]["maxAgeMinutes"], 30);
    assert_eq!(v["config"]["setupCommands"].as_array().unwrap().len(), 1);
    let got = s.ok("GET", &path, None).await;
    assert_valid("GetWarmPoolResponse", &got);
    assert_eq!(got["config"], v["config"]);
    assert_eq!(
        got["metadata"],
        json!({"lastProvisionedAt": null, "lastClaimedAt": null})
    );

    // Every validation failure is a 422 naming the field, and changes nothing.
    let before = s.ok("GET", &path, None).await;
    for (body, field) in [
        (json!({"targetSize": 0}), "targetSize"),
        (json!({"targetSize": 21}), "targetSize"),
        (json!({"targetSize": 2.5}), "targetSize"),
        (json!({"targetSize": "3"}), "targetSize"),
        (json!({"maxAgeMinutes": 29}), "maxAgeMinutes"),
        (json!({"maxAgeMinutes": 181}), "maxAgeMinutes"),
        (json!({"enabled": "yes"}), "enabled"),
        (json!({"enabled": null}), "enabled"),
        (json!({"targetSize": null}), "targetSize"),
        (json!({"branch": "bad..branch"}), "branch"),
        (json!({"branch": "-x"}), "branch"),
        (json!({"branch": 7}), "branch"),
        (
            json!({"setupCommands": [{"name": "a"}]}),
            "setupCommands[0].command",
        ),
        (
            json!({"setupCommands": [{"name": "", "command": "x"}]}),
            "setupCommands[0].name",
        ),
        (
            json!({"setupCommands": [{"name": "a", "command": ""}]}),
            "setupCommands[0].command",
        ),
        (
            json!({"setupCommands": [{"name": "a", "command": "x", "extra": 1}]}),
            "setupCommands[0].extra",
        ),
        (json!({"setupCommands": [["a", "x"]]}), "setupCommands[0]"),
        (json!({"setupCommands": "echo"}), "setupCommands"),
        (json!({"unknown": true}), "unknown"),
    ] {
        let (st, v) = s.call("PATCH", &path, Some(body.clone())).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "validation_error");
        assert!(
            details_fields(&v).contains(&field.to_string()),
            "{body}: {v}"
        );
    }
    // Several problems are reported at once.
    let (_, v) = s
        .call(
            "PATCH",
            &path,
            Some(json!({"targetSize": 0, "maxAgeMinutes": 1000})),
        )
        .await;
    assert_eq!(details_fields(&v), ["targetSize", "maxAgeMinutes"]);
    // Bodies that are not JSON objects.
    for (ct, body) in [
        (Some("application/json"), b"{not json".to_vec()),
        (Some("application/json"), b"[1,2]".to_vec()),
        (Some("application/json"), b"{\"enabled\": true} {}".to_vec()),
        (Some("text/plain"), b"{\"enabled\": true}".to_vec()),
        (None, b"{\"enabled\": true}".to_vec()),
        (Some("application/json"), vec![b'"', 0xff, b'"']),
        (Some("application/json"), b"".to_vec()),
        (None, b"".to_vec()),
    ] {
        let (st, v) = s.raw("PATCH", &path, ct, body.clone()).await;
        assert_eq!(st, 422, "{ct:?} {}: {v}", String::from_utf8_lossy(&body));
        assert_eq!(v["error"]["code"], "validation_error");
    }
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    let (st, _) = s
        .raw(
            "PATCH",
            &path,
            Some("application/json"),
            format!("{{\"x\": {deep}}}").into_bytes(),
        )
        .await;
    assert_eq!(st, 422);
    let huge = format!("{{\"branch\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let (st, v) = s
        .raw("PATCH", &path, Some("application/json"), huge.into_bytes())
        .await;
    assert_eq!(st, 413);
    assert_eq!(v["error"]["code"], "payload_too_large");
    assert_eq!(
        s.ok("GET", &path, None).await["config"],
        before["config"],
        "failed requests changed nothing"
    );

    // Listing parameters.
    let list = format!("/v1/projects/{pid}/warm-pool/instances");
    for q in [
        "?limit=0",
        "?limit=51",
        "?limit=abc",
        "?status=bogus",
        "?status=destroyed",
    ] {
        let (st, v) = s.call("GET", &format!("{list}{q}"), None).await;
        assert_eq!(st, 422, "{q}: {v}");
    }
    let v = s
        .ok("GET", &format!("{list}?limit=50&status=ready"), None)
        .await;
    assert_valid("ListWarmPoolInstancesResponse", &v);
    // The pool filled itself meanwhile (target 3). Clear with replenish refills it; clear without
    // disables it.
    let clear = format!("/v1/projects/{pid}/warm-pool/clear");
    wait_ready(&s, &pid, 3).await;
    let cleared = ready_ids(&s, &pid).await;
    let v = s.ok("POST", &clear, Some(json!({"replenish": true}))).await;
    assert_valid("ClearWarmPoolResponse", &v);
    assert_eq!(v["cleared"], 3, "{v}");
    assert_eq!(s.ok("GET", &path, None).await["config"]["enabled"], true);
    wait_ready(&s, &pid, 3).await;
    let fresh = ready_ids(&s, &pid).await;
    assert!(
        fresh.iter().all(|id| !cleared.contains(id)),
        "the cleared VMs were replaced: {cleared:?} then {fresh:?}"
    );
    let v = s.ok("POST", &clear, Some(json!({}))).await;
    assert_valid("ClearWarmPoolResponse", &v);
    assert_eq!(v["cleared"], 3);
    let after = s.ok("GET", &path, None).await;
    assert_eq!(
        after["config"]["enabled"], false,
        "clear without replenish disables"
    );
    // Nothing refills it: a reconciler pass that saw the cleared pool has run, and launched
    // nothing.
    s.wait_reconciler_pass().await;
    assert_eq!(
        s.ok("GET", &path, None).await["status"],
        json!({"ready": 0, "provisioning": 0, "failed": 0})
    );
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/clear"),
            Some(json!({"replenish": "yes"})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn projects_env_vars_and_devbox() {
    let s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("f", "x")]);
    // Validation of projects and repos; duplicate repo names are a conflict.
    for (body, field) in [
        (json!({"repos": []}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x\ny"}), "name"),
        (json!({"name": "x\u{0}y"}), "name"),
        (json!({"name": "n".repeat(10_000)}), "name"),
        (
            json!({"name": "x", "description": "d".repeat(100_000)}),
            "description",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b", "url": format!("/{}", "p".repeat(5000))}]}),
            "repos[0].url",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b", "url": "/ok\u{0}"}]}),
            "repos[0].url",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "../x", "url": repo.url()}]}),
            "repos[0].repoFullName",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b/c", "url": repo.url()}]}),
            "repos[0].repoFullName",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/-oProxyCommand=x", "url": repo.url()}]}),
            "repos[0].repoFullName",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/.env", "url": repo.url()}]}),
            "repos[0].repoFullName",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b", "url": "-oProxyCommand=x"}]}),
            "repos[0].url",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b", "url": "ext::sh -c touch% /tmp/pwned"}]}),
            "repos[0].url",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b", "url": "relative/path"}]}),
            "repos[0].url",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b", "url": repo.url(), "branch": "a b"}]}),
            "repos[0].branch",
        ),
        (
            json!({"name": "x", "repos": [{"repoFullName": "a/b"}]}),
            "repos[0].url",
        ),
        (json!({"name": "x", "bogus": 1}), "bogus"),
    ] {
        let (st, v) = s.call("POST", "/v1/projects", Some(body.clone())).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert!(
            details_fields(&v).contains(&field.to_string()),
            "{body}: {v}"
        );
    }
    let (st, v) = s
        .call(
            "POST",
            "/v1/projects",
            Some(json!({"name": "dup", "repos": [
                {"repoFullName": "a/api", "url": repo.url()},
                {"repoFullName": "b/api", "url": repo.url()},
            ]})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    // Create, read, list with pagination, update, delete.
    let name = "Ünïcode 'project' \"$HOME\"";
    let (st, p) = s
        .call(
            "POST",
            "/v1/projects",
            Some(json!({"name": name, "description": "d", "repos": [{"repoFullName": "acme/api", "url": repo.url()}]})),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    assert_valid_project(&p);
    assert_eq!(p["name"], name);
    assert_eq!(
        p["repos"],
        json!([{"repoFullName": "acme/api", "branch": "main"}])
    );
    let pid = p["id"].as_str().unwrap().to_string();
    assert_eq!(s.ok("GET", &format!("/v1/projects/{pid}"), None).await, p);
    let repos = s
        .ok("GET", &format!("/v1/projects/{pid}/repos"), None)
        .await;
    assert_eq!(repos["items"][0]["url"], repo.url());
    for i in 0..4 {
        s.create_project(&format!("p{i}"), vec![]).await;
    }
    let page1 = s.ok("GET", "/v1/projects?limit=2", None).await;
    assert_valid_project_list(&page1);
    assert_eq!(page1["hasMore"], true);
    let cursor = page1["nextCursor"].as_str().unwrap();
    let page2 = s
        .ok(
            "GET",
            &format!("/v1/projects?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);
    let all = s.ok("GET", "/v1/projects?limit=100", None).await;
    assert_valid_project_list(&all);
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert_eq!(all["hasMore"], false);
    assert_eq!(all["nextCursor"], Value::Null);
    let (st, _) = s.call("GET", "/v1/projects?cursor=garbage", None).await;
    assert_eq!(st, 422);
    let p2 = s
        .ok(
            "PATCH",
            &format!("/v1/projects/{pid}"),
            Some(json!({"name": "renamed", "description": null})),
        )
        .await;
    assert_valid_project(&p2);
    assert_eq!(
        (p2["name"].as_str(), p2["description"].clone()),
        (Some("renamed"), Value::Null)
    );
    assert_eq!(p2["repos"], p["repos"]);

    // Environment variables: upsert keeps others, names validated, values never returned.
    let env = format!("/v1/projects/{pid}/environment-variables");
    s.ok(
        "PUT",
        &env,
        Some(json!({"variables": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]})),
    )
    .await;
    let v = s
        .ok(
            "PUT",
            &env,
            Some(json!({"variables": [{"name": "B", "value": "3"}]})),
        )
        .await;
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B"]);
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i.get("value").is_none()));
    for body in [
        json!({"variables": []}),
        json!({"variables": [{"name": "1A", "value": "x"}]}),
        json!({"variables": [{"name": "A-B", "value": "x"}]}),
        json!({"variables": [{"name": "A", "value": "x\u{0}y"}]}),
        json!({"variables": [{"name": "A", "value": "x"}, {"name": "A", "value": "y"}]}),
        json!({"variables": [{"name": "A", "value": "x".repeat(100_001)}]}),
        json!({"variables": [{"name": "A"}]}),
        json!({}),
    ] {
        let (st, v) = s.call("PUT", &env, Some(body)).await;
        assert_eq!(st, 422, "{v}");
    }
    let v = s.ok("DELETE", &format!("{env}/A"), None).await;
    assert_eq!(v, json!({"deleted": true, "name": "A"}));
    let (st, _) = s.call("DELETE", &format!("{env}/A"), None).await;
    assert_eq!(st, 404);

    // Devbox settings.
    let devbox = format!("/v1/projects/{pid}/devbox");
    let d = s.ok("GET", &devbox, None).await;
    assert_eq!(
        d,
        json!({"setupCommands": [], "repos": [{"repoFullName": "acme/api", "setupCommands": []}]})
    );
    let d = s
        .ok("PATCH", &devbox, Some(json!({"repos": [{"repoFullName": "acme/api", "setupCommands": [{"name": "i", "command": "make"}]}]})))
        .await;
    assert_eq!(d["repos"][0]["setupCommands"][0]["command"], "make");
    let (st, v) = s
        .call(
            "PATCH",
            &devbox,
            Some(json!({"repos": [{"repoFullName": "acme/other", "setupCommands": []}]})),
        )
        .await;
    assert_eq!(st, 422, "{v}");

    // Deleting the project.
    let (st, _) = s.call("DELETE", &format!("/v1/projects/{pid}"), None).await;
    assert_eq!(st, 204);
    let (st, _) = s.call("GET", &format!("/v1/projects/{pid}"), None).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn exec_only_where_it_makes_sense() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("exec", vec![]).await;
    let failed = s.test_boot(&pid, boot_with(&[("f", "false")])).await;
    let exec = |id: &str| format!("/v1/projects/{pid}/warm-pool/instances/{id}/exec");
    let (st, v) = s
        .call(
            "POST",
            &exec(failed.id.as_str()),
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let ok = s.test_boot(&pid, boot_with(&[])).await;
    let path = exec(ok.id.as_str());
    for body in [
        json!({}),
        json!({"command": ""}),
        json!({"command": "true", "cwd": "relative"}),
        json!({"command": "true", "timeoutSeconds": 0}),
        json!({"command": "true", "timeoutSeconds": 3601}),
        json!({"command": "true", "env": {"BAD-NAME": "x"}}),
    ] {
        let (st, v) = s.call("POST", &path, Some(body.clone())).await;
        assert_eq!(st, 422, "{body}: {v}");
    }
    let r = s
        .ok(
            "POST",
            &path,
            Some(json!({"command": "echo out; echo err >&2; exit 7"})),
        )
        .await;
    assert_eq!(r["exitCode"], 7);
    assert_eq!(r["output"], "out\nerr\n");
    assert_eq!(r["truncated"], false);
    let r = s
        .ok(
            "POST",
            &path,
            Some(json!({"command": "sleep 30", "timeoutSeconds": 1})),
        )
        .await;
    assert_eq!(
        (r["timedOut"].as_bool(), r["exitCode"].as_i64()),
        (Some(true), Some(124))
    );
    let r = s
        .ok("POST", &path, Some(json!({"command": "cd /nonexistent"})))
        .await;
    assert_ne!(r["exitCode"], 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn test_instances_expire() {
    let s = TestServer::start(&[
        "--test-instance-ttl-secs",
        "1",
        "--reconcile-interval-ms",
        "100",
    ]);
    let pid = s.create_project("ttl", vec![]).await;
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready");
    let vm = d.instance_id.clone();
    // A second after it was ready, a reconciler pass (every 100 ms) destroys it.
    wait_for("the expired test instance destroyed", SETTLE, async || {
        let list = s
            .ok(
                "GET",
                &format!("/v1/projects/{pid}/warm-pool/instances"),
                None,
            )
            .await;
        let dirs = s.vm_dirs();
        seen(
            list["items"].as_array().unwrap().is_empty() && !dirs.contains(&vm),
            format!("instances {list}, VM directories {dirs:?}"),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_crash_mid_boot_leaves_nothing_hanging() {
    let mut s = TestServer::start(&[]);
    let pid = s.create_project("crash", vec![]).await;
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/test"),
            Some(json!({"setupCommands": [{"name": "long", "command": "sleep 600"}]})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    // Wait until the VM runs its setup command (the 4 steps before it recorded), then kill the
    // server.
    let vm = wait_for("the boot in its setup command", s.boot(), async || {
        let d = s
            .ok(
                "GET",
                &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
                None,
            )
            .await;
        seen(d["steps"].as_array().unwrap().len() >= 4, d)
    })
    .await["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let init = s.vm_init_pid(&vm).unwrap();
    let procs = vm_processes(init);
    s.kill9();
    assert!(any_alive(&procs), "VMs outlive the server");
    s.restart();
    let d = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
            None,
        )
        .await;
    assert_valid("WarmPoolInstanceDetail", &d);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["failureReason"], "server restarted during provisioning");
    assert_eq!(
        d["summary"]["error"],
        "server restarted during provisioning"
    );
    assert!(!any_alive(&procs), "the orphaned VM was not destroyed");
    assert!(!s.vm_dirs().contains(&vm));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_warm_pools_says_so() {
    let s = TestServer::start(&["--warm-pool-allowed", "false", "--backend", "sim"]);
    let pid = s.create_project("not allowed", vec![]).await;
    let v = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_valid("GetWarmPoolResponse", &v);
    assert_eq!(v["allowed"], false);
    for (method, path) in [("PATCH", "warm-pool"), ("POST", "warm-pool/test")] {
        let (st, v) = s
            .call(
                method,
                &format!("/v1/projects/{pid}/{path}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sim_backend_runs_the_same_pipeline() {
    let s = TestServer::start(&["--backend", "sim"]);
    let repo = TestRepo::new(&[("x", "y")]);
    let pid = s
        .create_project("sim", vec![repo_input("acme/x", repo.url())])
        .await;
    let d = s.test_boot(&pid, boot_with(&[("ok", "echo fine")])).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    assert_eq!(step_names(&d).len(), 8);
    assert_eq!(meta(&d, "create_vm")["backend"], "sim");
    let d = s.test_boot(&pid, boot_with(&[("bad", "exit 5")])).await;
    assert_failed_at(&d, "warm_pool_setup", "command `bad` exited with status 5");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn odd_names_and_commands_are_passed_through_untouched() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("odd", vec![]).await;
    let mut cmds = commands(&[
        (
            "it's \"quoted\" $HOME",
            "printf '%s|' \"it's\" '$HOME' \"a b\"; echo",
        ),
        ("ünïcødé ✓", "echo 日本語"),
        ("multi\tline", "echo one\necho two\n"),
        ("../../etc/passwd", "echo bg"),
        ("-rf /", "true"),
    ]);
    cmds[3].background = Some(true);
    let d = s
        .test_boot(
            &pid,
            TestWarmPoolBootBody {
                setup_commands: Some(Some(cmds.clone())),
            },
        )
        .await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let out = output(&d, "warm_pool_setup");
    assert!(
        out.contains("$ it's \"quoted\" $HOME\nit's|$HOME|a b|\n"),
        "{out}"
    );
    assert!(out.contains("$ ünïcødé ✓\n日本語\n"), "{out}");
    assert!(out.contains("one\ntwo\n"), "{out}");
    // A background command's log file name is derived safely from its name.
    assert!(
        out.contains("/var/log/warmpool/.._.._etc_passwd.log")
            || out.contains("/var/log/warmpool/command-3.log"),
        "{out}"
    );
    let r = s
        .exec(
            &pid,
            d.id.as_str(),
            "ls /var/log/warmpool; head -c 4 /etc/passwd",
        )
        .await;
    assert!(r.output.as_str().ends_with("root"), "{r:?}");
    let pool = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_eq!(
        pool["config"]["setupCommands"],
        json!(cmds),
        "commands are stored exactly as given"
    );
}

/// Clearing a pool ends its failed boots without rewriting them: each stays `failed` with its
/// summary and steps, is still listed as failed, no longer counts in the pool's status, and its
/// lifecycle says when and why it was ended. A VM that was ready is destroyed, and says so too.
#[tokio::test(flavor = "multi_thread")]
async fn clear_keeps_failed_records_readable() {
    let s = TestServer::start(&["--backend", "sim"]);
    let (pid, pool, failed) = failed_pool_boot(&s, "failures kept").await;
    let list = format!("{pool}/instances?status=failed");
    let before = s
        .ok("GET", &format!("{pool}/instances/{failed}"), None)
        .await;

    let cleared = s
        .ok("POST", &format!("{pool}/clear"), Some(json!({})))
        .await;
    assert!(cleared["cleared"].as_u64() >= Some(1), "{cleared}");
    assert_eq!(cleared["status"]["failed"], 0, "{cleared}");

    // The record reads as it did: how the boot ended is never rewritten.
    let after = s
        .ok("GET", &format!("{pool}/instances/{failed}"), None)
        .await;
    assert_eq!(after, before);
    assert_eq!(after["status"], "failed");
    assert_eq!(after["summary"]["failedStep"], "warm_pool_setup");
    assert!(
        after["summary"]["error"]
            .as_str()
            .unwrap()
            .contains("exited with status 3"),
        "{after}"
    );
    let listed = s.ok("GET", &list, None).await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == failed.as_str()),
        "still listed as failed: {listed}"
    );
    let life = lifecycle(&s, &pool, &failed).await;
    assert_eq!(life["status"], "failed", "{life}");
    assert_eq!(life["kind"], "pool", "{life}");
    assert_eq!(life["endReason"], "cleared", "{life}");
    assert!(life["endedAt"].is_string(), "{life}");
    // Ended once: deleting it afterwards changes nothing.
    let (code, _) = s
        .call("DELETE", &format!("{pool}/instances/{failed}"), None)
        .await;
    assert_eq!(code, 404);
    let life = lifecycle(&s, &pool, &failed).await;
    assert_eq!(life["endReason"], "cleared", "{life}");

    // A ready VM, cleared, is destroyed and says why; a claimed one, deleted, says so too.
    s.ok(
        "PATCH",
        &pool,
        Some(json!({"enabled": true, "targetSize": 2, "setupCommands": null})),
    )
    .await;
    wait_ready(&s, &pid, 2).await;
    let claim = s
        .ok(
            "POST",
            &format!("{pool}/claim"),
            Some(json!({"taskId": "task 7"})),
        )
        .await;
    let claimed = claim["instance"]["id"].as_str().unwrap().to_string();
    let ready = s
        .ok("GET", &format!("{pool}/instances?status=ready"), None)
        .await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok("POST", &format!("{pool}/clear"), Some(json!({})))
        .await;
    let life = lifecycle(&s, &pool, &ready).await;
    assert_eq!(
        (&life["status"], &life["endReason"]),
        (&json!("destroyed"), &json!("cleared")),
        "{life}"
    );
    let life = lifecycle(&s, &pool, &claimed).await;
    assert_eq!(
        (&life["status"], &life["taskId"], &life["endReason"]),
        (&json!("claimed"), &json!("task 7"), &Value::Null),
        "a claimed VM is not the pool's to clear: {life}"
    );
    assert!(life["claimedAt"].is_string(), "{life}");
    let (code, _) = s
        .call("DELETE", &format!("{pool}/instances/{claimed}"), None)
        .await;
    assert_eq!(code, 204);
    let life = lifecycle(&s, &pool, &claimed).await;
    assert_eq!(
        (&life["status"], &life["endReason"]),
        (&json!("destroyed"), &json!("deleted")),
        "{life}"
    );
}

/// Claim leases: a claim asks for `ttlSeconds` within the project's maximum (a longer one is
/// refused, naming the field) and is told when its lease runs out; at expiry the VM is
/// destroyed and its record says it expired, when, and for which task; a renewed one lives on;
/// a lease that ran out cannot be renewed; and a lease that runs out while the server is down
/// is ended once the server is back.
#[tokio::test(flavor = "multi_thread")]
async fn claims_expire_unless_renewed() {
    let mut s = TestServer::start(&["--backend", "sim", "--reconcile-interval-ms", "100"]);
    let pid = s.create_project("leases", vec![]).await;
    let leases = format!("/v1/projects/{pid}/leases");
    let l = s.ok("GET", &leases, None).await;
    assert_eq!(
        l,
        json!({"defaultTtlSeconds": 86400, "maxTtlSeconds": 604800})
    );
    let l = s
        .ok(
            "PATCH",
            &leases,
            Some(json!({"defaultTtlSeconds": 600, "maxTtlSeconds": 3600})),
        )
        .await;
    assert_eq!(l["maxTtlSeconds"], 3600);
    for bad in [
        json!({"defaultTtlSeconds": 7200}),
        json!({"defaultTtlSeconds": null}),
        json!({"maxTtlSeconds": "60"}),
    ] {
        let (code, v) = s.call("PATCH", &leases, Some(bad.clone())).await;
        assert_eq!(code, 422, "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{bad}: {v}");
    }
    assert_eq!(s.ok("GET", &leases, None).await["defaultTtlSeconds"], 600);
    let pool = format!("/v1/projects/{pid}/warm-pool");
    s.ok("PATCH", &pool, Some(json!({"targetSize": 3}))).await;
    wait_ready(&s, &pid, 3).await;

    let claim = format!("{pool}/claim");
    let (code, v) = s
        .call("POST", &claim, Some(json!({"ttlSeconds": 3601})))
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("ttlSeconds"), "{v}");
    for bad in [json!(0), json!(1.5), json!(-3), json!("60")] {
        let (code, v) = s
            .call("POST", &claim, Some(json!({"ttlSeconds": bad})))
            .await;
        assert_eq!(code, 422, "{bad}: {v}");
    }
    let short = s
        .ok(
            "POST",
            &claim,
            Some(json!({"taskId": "t-short", "ttlSeconds": 1})),
        )
        .await;
    let renewed = s
        .ok(
            "POST",
            &claim,
            Some(json!({"taskId": "t-renewed", "ttlSeconds": 1})),
        )
        .await;
    let default = s.ok("POST", &claim, Some(json!({}))).await;
    for c in [&short, &renewed, &default] {
        assert!(c["expiresAt"].is_string(), "{c}");
    }
    let id = |c: &Value| c["instance"]["id"].as_str().unwrap().to_string();
    let (short, renewed, default) = (id(&short), id(&renewed), id(&default));
    let r = s
        .ok(
            "POST",
            &format!("{pool}/instances/{renewed}/renew"),
            Some(json!({"ttlSeconds": 3600})),
        )
        .await;
    assert!(r["expiresAt"].is_string(), "{r}");
    wait_for("the short lease to run out", s.boot(), async || {
        let life = lifecycle(&s, &pool, &short).await;
        seen(life["endReason"] == "expired", life)
    })
    .await;
    let life = lifecycle(&s, &pool, &short).await;
    assert_eq!(life["status"], "destroyed", "{life}");
    assert_eq!(life["taskId"], "t-short", "{life}");
    assert!(life["endedAt"].is_string(), "{life}");
    let (code, v) = s
        .call(
            "POST",
            &format!("{pool}/instances/{short}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    for (id, what) in [(&renewed, "renewed"), (&default, "the default lease")] {
        let life = lifecycle(&s, &pool, id).await;
        assert_eq!(life["status"], "claimed", "{what}: {life}");
    }

    // A lease that runs out around a crash (kill -9) and restart ends once, after it.
    let late = s
        .ok(
            "POST",
            &claim,
            Some(json!({"taskId": "t-late", "ttlSeconds": 1})),
        )
        .await;
    let late = id(&late);
    s.restart();
    wait_for(
        "the lease that ran out meanwhile to end",
        s.boot(),
        async || {
            let life = lifecycle(&s, &pool, &late).await;
            seen(life["endReason"] == "expired", life)
        },
    )
    .await;
    let ended = lifecycle(&s, &pool, &late).await["endedAt"].clone();
    s.restart();
    assert_eq!(
        lifecycle(&s, &pool, &late).await["endedAt"],
        ended,
        "ended once"
    );
}

/// Autoscale over the API: off by default (`stats` shows the fixed target); bad bounds are
/// refused naming the field and change nothing; on, a burst of claims raises the effective
/// target at once to what the claims within one boot time ask for, with headroom, within max,
/// and the pool grows to it; the decision and the claims it came from outlive a kill -9; off
/// again, the pool goes back to its `targetSize`.
#[tokio::test(flavor = "multi_thread")]
async fn autoscale_sizes_the_pool_from_its_claims() {
    // Boots long enough that a burst of claims falls within one.
    let mut s = TestServer::start(&[
        "--backend",
        "sim",
        "--sim-create-ms",
        "1500",
        "--reconcile-interval-ms",
        "100",
    ]);
    let pid = s.create_project("autoscale", vec![]).await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    let auto = format!("{pool}/autoscale");
    s.ok("PATCH", &pool, Some(json!({"targetSize": 1}))).await;
    wait_ready(&s, &pid, 1).await;
    let off = json!({"enabled": false, "min": 1, "max": 20});
    assert_eq!(s.ok("GET", &auto, None).await, off);
    let st = s.ok("GET", &format!("{pool}/stats"), None).await;
    assert_eq!(
        (&st["effectiveTarget"], &st["autoscale"]),
        (&json!(1), &Value::Null)
    );

    for (bad, field) in [
        (json!({"min": 21}), "min"),
        (json!({"max": 0}), "max"),
        (json!({"max": 21}), "max"),
        (json!({"min": 1.5}), "min"),
        (json!({"min": -1}), "min"),
        (json!({"min": 5, "max": 3}), "min"),
        (json!({"max": 0.5, "enabled": true}), "max"),
    ] {
        let (code, v) = s.call("PATCH", &auto, Some(bad.clone())).await;
        assert_eq!(code, 422, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "validation_error", "{bad}: {v}");
        assert!(v.to_string().contains(field), "{bad}: {v}");
    }
    for bad in [
        json!({"min": "2"}),
        json!({"enabled": "yes"}),
        json!({"size": 3}),
        json!({"min": null}),
        json!({"enabled": null}),
    ] {
        let (code, v) = s.call("PATCH", &auto, Some(bad.clone())).await;
        assert!((400..500).contains(&code), "{bad}: {code} {v}");
        assert!(v["error"]["message"].is_string(), "{bad}: {v}");
    }
    let (code, v) = s.call("PATCH", &auto, Some(json!({"min": 4}))).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.call("PATCH", &auto, Some(json!({"max": 3}))).await;
    assert_eq!(code, 422, "below the min already set: {v}");
    assert_eq!(
        s.ok("GET", &auto, None).await,
        json!({"enabled": false, "min": 4, "max": 20}),
        "refused changes change nothing"
    );
    s.ok("GET", &format!("{pool}/stats"), None).await;

    let on = s
        .ok(
            "PATCH",
            &auto,
            Some(json!({"enabled": true, "min": 1, "max": 6})),
        )
        .await;
    assert_eq!(on, json!({"enabled": true, "min": 1, "max": 6}));
    // A burst: four claims at once (the first warm, the others booted for their claim).
    let claims: Vec<_> = (0..4)
        .map(|i| {
            let c = s.client();
            let pid = pid.clone();
            tokio::spawn(async move {
                let body = warmpool_types::api::ClaimBody {
                    task_id: Some(format!("burst-{i}")),
                    wait_seconds: Some(0.0),
                    ..Default::default()
                };
                c.claim(&pid, &body).await.unwrap()
            })
        })
        .collect();
    for c in claims {
        c.await.unwrap();
    }
    // 4 claims within one boot, a quarter more: 5.
    let st = wait_for("the target to rise", s.boot(), async || {
        let st = s.ok("GET", &format!("{pool}/stats"), None).await;
        seen(st["effectiveTarget"] == 5, st)
    })
    .await;
    let a = &st["autoscale"];
    assert_eq!(
        (&a["min"], &a["max"], &a["target"]),
        (&json!(1), &json!(6), &json!(5)),
        "{st}"
    );
    assert_eq!(
        (&a["reason"], &a["peakClaims"]),
        (&json!("demand"), &json!(4)),
        "{st}"
    );
    assert!(a["bootMs"].as_u64().unwrap() >= 1500, "{st}");
    assert!(a["why"].as_str().unwrap().contains("4 claims"), "{st}");
    assert!(a["changedAt"].is_string(), "{st}");
    wait_ready(&s, &pid, 5).await;

    // After a kill -9 the same target: the decision and the claims it came from are stored.
    s.restart();
    let st = s.ok("GET", &format!("{pool}/stats"), None).await;
    assert_eq!(st["effectiveTarget"], 5, "{st}");
    s.wait_reconciler_pass().await;
    s.wait_reconciler_pass().await;
    let st = s.ok("GET", &format!("{pool}/stats"), None).await;
    assert_eq!(
        (&st["effectiveTarget"], &st["autoscale"]["peakClaims"]),
        (&json!(5), &json!(4)),
        "the claims were read again: {st}"
    );
    assert_eq!(s.ok("GET", &auto, None).await, on);

    // Max holds it down.
    s.ok("PATCH", &auto, Some(json!({"max": 3}))).await;
    let st = wait_for("the max to hold the target", s.boot(), async || {
        let st = s.ok("GET", &format!("{pool}/stats"), None).await;
        seen(
            st["effectiveTarget"] == 3 && st["autoscale"]["reason"] == "max",
            st,
        )
    })
    .await;
    assert!(
        st["autoscale"]["why"].as_str().unwrap().contains("maximum"),
        "{st}"
    );
    wait_ready(&s, &pid, 3).await;

    // Off: back to targetSize.
    s.ok("PATCH", &auto, Some(json!({"enabled": false}))).await;
    let st = s.ok("GET", &format!("{pool}/stats"), None).await;
    assert_eq!(
        (&st["effectiveTarget"], &st["autoscale"]),
        (&json!(1), &Value::Null)
    );
    wait_ready(&s, &pid, 1).await;
    // A disabled pool keeps nothing, autoscaled or not.
    s.ok("PATCH", &auto, Some(json!({"enabled": true}))).await;
    s.ok("PATCH", &pool, Some(json!({"enabled": false}))).await;
    let st = s.ok("GET", &format!("{pool}/stats"), None).await;
    assert_eq!(st["effectiveTarget"], 0, "{st}");
}
