//! Security end to end: project tokens, agent tokens, secrets at rest, limits, TLS.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Every byte the store keeps on disk (the database and its write-ahead log).
fn store_bytes(s: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["warmpool.db", "warmpool.db-wal", "warmpool.db-shm"] {
        if let Ok(b) = std::fs::read(s.data_dir().join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_token_acts_on_its_project_only() {
    let s = TestServer::start(&["--backend", "sim"]);
    let a = s.create_project("A", vec![]).await;
    let b = s.create_project("B", vec![]).await;
    let (st, t) = s
        .call("POST", &format!("/v1/projects/{a}/tokens"), Some(json!({})))
        .await;
    assert_eq!(st, 201, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("wp_"));
    let tok = Some(token.as_str());

    // Its own project: everything a project user needs works.
    let (st, _) = s
        .call_as(tok, "GET", &format!("/v1/projects/{a}"), None)
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call_as(
            tok,
            "PATCH",
            &format!("/v1/projects/{a}/warm-pool"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .call_as(
            tok,
            "POST",
            &format!("/v1/projects/{a}/warm-pool/test"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, list) = s.call_as(tok, "GET", "/v1/projects", None).await;
    assert_eq!(st, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], a.as_str());

    // Another project looks exactly like one that does not exist.
    for (method, path, body) in [
        ("GET", format!("/v1/projects/{b}"), None),
        ("GET", format!("/v1/projects/{b}/warm-pool"), None),
        (
            "PATCH",
            format!("/v1/projects/{b}/warm-pool"),
            Some(json!({"targetSize": 2})),
        ),
        (
            "POST",
            format!("/v1/projects/{b}/warm-pool/test"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/v1/projects/{b}/warm-pool/claim"),
            Some(json!({})),
        ),
        (
            "GET",
            format!("/v1/projects/{b}/environment-variables"),
            None,
        ),
        (
            "PUT",
            format!("/v1/projects/{b}/environment-variables"),
            Some(json!({"variables": [{"name": "X", "value": "y"}]})),
        ),
        ("GET", format!("/v1/projects/{b}/warm-pool/events"), None),
        ("GET", format!("/v1/projects/{b}/warm-pool/stats"), None),
        ("GET", format!("/v1/projects/{b}/warm-pool/autoscale"), None),
        (
            "PATCH",
            format!("/v1/projects/{b}/warm-pool/autoscale"),
            Some(json!({"enabled": true, "max": 20})),
        ),
        ("GET", format!("/v1/projects/{b}/leases"), None),
        (
            "GET",
            "/v1/projects/proj_0000000000000000".to_string(),
            None,
        ),
    ] {
        let (st, v) = s.call_as(tok, method, &path, body).await;
        assert_eq!(st, 404, "{method} {path}: {v}");
        assert_eq!(v["error"]["message"], "project not found");
    }
    // Admin-only operations are refused.
    for (method, path, body) in [
        (
            "POST",
            "/v1/projects".to_string(),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("/v1/projects/{a}"), None),
        ("POST", format!("/v1/projects/{a}/tokens"), Some(json!({}))),
        ("GET", format!("/v1/projects/{a}/tokens"), None),
    ] {
        let (st, v) = s.call_as(tok, method, &path, body).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
    }
    // Stored hashed; lastUsedAt kept; revocation is immediate.
    assert!(!contains(&store_bytes(&s), &token));
    let list = s.ok("GET", &format!("/v1/projects/{a}/tokens"), None).await;
    assert_eq!(list["items"][0]["id"], t["id"]);
    assert!(list["items"][0]["lastUsedAt"].is_string());
    assert!(list["items"][0].get("token").is_none());
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/projects/{a}/tokens/{}", t["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, v) = s
        .call_as(tok, "GET", &format!("/v1/projects/{a}"), None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/projects/{a}/tokens/tok_0000000000000000"),
            None,
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn secrets_stay_secret_at_rest_in_logs_and_in_events() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("secrets at rest", vec![]).await;
    let secret = "s3cr3t-Zq9v-at-rest";
    let multi = "first-line-abc123\nsecond-line-def456";
    s.ok(
        "PUT",
        &format!("/v1/projects/{pid}/environment-variables"),
        Some(json!({"variables": [{"name": "DB_PASSWORD", "value": secret}, {"name": "CERT", "value": multi}]})),
    )
    .await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(json!({"enabled": false})),
    )
    .await;
    let d = s
        .test_boot(
            &pid,
            boot_with(&[("use", "echo \"$DB_PASSWORD\"; echo \"$CERT\"")]),
        )
        .await;
    assert_eq!(d.status, "ready");
    let id = d.id.as_str();
    // The VM has the value; nothing else shows it.
    let out = s.exec(&pid, id, "printf %s \"$DB_PASSWORD\" | wc -c").await;
    assert_eq!(out.output, format!("{}\n", secret.len()));
    let events = reqwest_text(
        &s,
        &format!("/v1/projects/{pid}/warm-pool/instances/{id}/events"),
    )
    .await;
    assert!(events.contains("[REDACTED:DB_PASSWORD]") && events.contains("[REDACTED:CERT]"));
    let store = store_bytes(&s);
    for needle in [secret, "first-line-abc123", "second-line-def456"] {
        assert!(!events.contains(needle), "{needle} in the events");
        assert!(
            !serde_json::to_string(&d).unwrap().contains(needle),
            "{needle} in the instance"
        );
        assert!(!s.log_text().contains(needle), "{needle} in the server log");
        assert!(!contains(&store, needle), "{needle} in the database files");
    }
    // Nor is a VM's agent token anywhere but in the answer that hands it over.
    let (_, claim_pid) = (0, pid.clone());
    s.ok(
        "PATCH",
        &format!("/v1/projects/{claim_pid}/warm-pool"),
        Some(json!({"enabled": true})),
    )
    .await;
    // The pool's first VM boots for this claim.
    let (st, c) = s
        .call(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/claim"),
            Some(json!({"waitSeconds": s.boot().as_secs()})),
        )
        .await;
    assert!(st == 200, "{c}");
    let agent_token = c["vm"]["agentToken"].as_str().unwrap().to_string();
    let claimed = s
        .ok(
            "GET",
            &format!(
                "/v1/projects/{pid}/warm-pool/instances/{}",
                c["instance"]["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert!(!claimed.to_string().contains(&agent_token));
    assert!(!s.log_text().contains(&agent_token));
    assert!(!contains(&store_bytes(&s), &agent_token));
    // The keys and the admin token are readable by their owner only.
    assert_eq!(mode(&s.data_dir().join("secret.key")), 0o600);
    assert_eq!(mode(&s.data_dir().join("admin-token")), 0o600);
}

async fn reqwest_text(s: &TestServer, path: &str) -> String {
    let resp = s
        .http
        .get(format!("{}{}", s.url, path))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if text.contains("event: done") {
            break;
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_vm_token_opens_that_vm_only() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("agents", vec![]).await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(json!({"targetSize": 2})),
    )
    .await;
    let mut vms = Vec::new();
    for _ in 0..2 {
        let (st, c) = s
            .call(
                "POST",
                &format!("/v1/projects/{pid}/warm-pool/claim"),
                Some(json!({"waitSeconds": s.boot().as_secs()})),
            )
            .await;
        assert_eq!(st, 200, "{c}");
        vms.push(c["vm"].clone());
    }
    let exec = |url: &str, token: Option<&str>| {
        let mut r = s
            .http
            .post(format!("{url}/v1/exec"))
            .json(&json!({"command": "hostname"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let (a, b) = (&vms[0], &vms[1]);
    let ok = exec(a["agentUrl"].as_str().unwrap(), a["agentToken"].as_str())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for token in [
        b["agentToken"].as_str(),
        None,
        Some(""),
        Some(s.token.as_str()),
    ] {
        let r = exec(a["agentUrl"].as_str().unwrap(), token).await.unwrap();
        assert_eq!(r.status(), 401, "token {token:?}");
    }
    // Every agent endpoint wants the token.
    for path in ["/v1/health", "/v1/files?path=/home/.env"] {
        let r = s
            .http
            .get(format!("{}{path}", a["agentUrl"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn limits_answer_429_and_floods_do_not_stall_the_server() {
    let s = TestServer::start(&[
        "--rate-limit-per-sec",
        "5",
        "--rate-limit-burst",
        "5",
        "--max-cold-claims",
        "1",
    ]);
    let pid = s.create_project("limits", vec![]).await;
    // Past the burst, requests are refused with Retry-After until the rate allows again.
    let mut limited = None;
    for _ in 0..20 {
        let r = s
            .http
            .get(format!("{}/v1/projects/{pid}", s.url))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some((
                r.headers()["retry-after"].to_str().unwrap().to_string(),
                r.json::<Value>().await.unwrap(),
            ));
            break;
        }
    }
    let (retry, body) = limited.expect("no 429 after 20 quick requests");
    let retry: u64 = retry.parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(body["error"]["code"], "rate_limited");
    // ... and allowed again once the rate allows (5 a second: within Retry-After).
    let project = format!("/v1/projects/{pid}");
    wait_for(
        "a request allowed again",
        Duration::from_secs(retry) + REQUEST,
        async || {
            let (st, v) = s.call("GET", &project, None).await;
            seen(st == 200, format!("{st} {v}"))
        },
    )
    .await;

    // The rest of the test stays within the rate: a request refused by it is sent again once
    // the rate allows (a request's time, at 5 a second).
    let call = |method: &'static str, path: String, body: Value| {
        let s = &s;
        async move {
            wait_for(
                &format!("{method} {path} allowed by the rate limit"),
                REQUEST,
                async || {
                    let (st, v) = s.call(method, &path, Some(body.clone())).await;
                    let limited = st == 429
                        && v["error"]["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("too many requests");
                    seen(!limited, (st, v)).map_err(|(st, v)| format!("{st} {v}"))
                },
            )
            .await
        }
    };
    // One VM booting for claims at a time: a second claim is told to come back.
    let pool = format!("/v1/projects/{pid}/warm-pool");
    call("PATCH", pool.clone(), json!({"enabled": false, "setupCommands": [{"name": "flood", "command": "timeout 6 yes 'a line of flood output'; true"}]})).await;
    let (st, first) = call("POST", format!("{pool}/claim"), json!({"waitSeconds": 0})).await;
    assert_eq!(st, 202, "{first}");
    let (st, second) = call("POST", format!("{pool}/claim"), json!({"waitSeconds": 0})).await;
    assert_eq!(
        (st, second["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{second}"
    );

    // While that VM floods its output (from when its setup runs until the boot ends), the API
    // answers promptly. The flood is under way once the boot is in its setup step (the 4 steps
    // before it recorded) and has output.
    let id = first["instance"]["id"].as_str().unwrap();
    let instance = format!("{pool}/instances/{id}");
    wait_for("the boot flooding its output", s.boot(), async || {
        let (_, d) = call("GET", instance.clone(), Value::Null).await;
        assert_eq!(d["status"], "provisioning", "the boot ended early: {d}");
        seen(d["steps"].as_array().map_or(0, Vec::len) >= 4, d)
    })
    .await;
    let mut answered = 0;
    // The flood lasts 6 s: the boot ends a moment after.
    let d = wait_for("the flooding boot to end", s.boot(), async || {
        let t = Instant::now();
        let (st, _) = call("GET", pool.clone(), Value::Null).await;
        assert_eq!(st, 200);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a request took {:?} during the flood",
            t.elapsed()
        );
        answered += 1;
        let (_, d) = call("GET", instance.clone(), Value::Null).await;
        seen(d["status"] != "provisioning", d)
    })
    .await;
    assert!(answered >= 5, "{answered} requests during the flood");
    // The boot is over, so its project may boot another VM for a claim.
    let (st, again) = call("POST", format!("{pool}/claim"), json!({"waitSeconds": 0})).await;
    assert!(matches!(st, 200 | 202), "{st} {again}");
    let d: WarmPoolInstanceDetail = serde_json::from_value(d).unwrap();
    let out = output(&d, "warm_pool_setup");
    assert!(
        out.len() <= 64 * 1024 + 64 && out.contains("bytes omitted"),
        "{} bytes",
        out.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_tls_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let s = TestServer::start(&[
        "--backend",
        "sim",
        "--tls-cert",
        cert_pem.to_str().unwrap(),
        "--tls-key",
        key_pem.to_str().unwrap(),
    ]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/v1/projects", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Without trusting the certificate, or in plain HTTP, nothing gets through.
    assert!(reqwest::get(format!("{}/healthz", s.url)).await.is_err());
    let plain = s.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true));
    // The CLI trusts it with --ca-cert.
    let out = output_within(
        std::process::Command::new(BIN).args([
            "--url",
            &s.url,
            "--token",
            &s.token,
            "--ca-cert",
            cert_pem.to_str().unwrap(),
            "project",
            "create",
            "over tls",
        ]),
        "warmpool project create over TLS",
        REQUEST,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("over tls"));
}
