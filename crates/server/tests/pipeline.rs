//! The provisioning pipeline end to end: the real binary, real git repositories, real sandboxes.

mod common;

use common::*;
use serde_json::{json, Value};

const STEPS_TWO_REPOS: [&str; 11] = [
    "create_vm",
    "ensure_server",
    "set_env_vars",
    "clone_repo",
    "clone_repo",
    "init_repo",
    "init_repo",
    "project_setup",
    "repo_setup",
    "repo_setup",
    "warm_pool_setup",
];

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn two_repos_reach_ready_with_all_steps_in_order() {
    let s = TestServer::start(&[]);
    let api = TestRepo::new(&[
        ("README.md", "api\n"),
        (
            ".capy/settings.json",
            r#"{"hooks": {"setup": ["pwd > /tmp/api-hook-pwd", "echo hook output"]}}"#,
        ),
    ]);
    let web = TestRepo::new(&[("index.html", "<p>web</p>\n")]);
    let web_feature = web.branch("feature", &[("feature.txt", "yes\n")]);
    let pid = s
        .create_project(
            "Two repos",
            vec![
                repo_input("acme/api", api.url()),
                RepoInput {
                    branch: Some("feature".into()),
                    ..repo_input("acme/web", format!("file://{}", web.url()))
                },
            ],
        )
        .await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/devbox"),
        Some(json!({
            "setupCommands": [{"name": "project", "command": "echo in $(pwd) > /tmp/project-setup"}],
            "repos": [{"repoFullName": "acme/web", "setupCommands": [{"name": "web", "command": "pwd; ls"}]}],
        })),
    )
    .await;
    let patched = s
        .ok(
            "PATCH",
            &format!("/v1/projects/{pid}/warm-pool"),
            // Disabled: this test is about the test boot; the pool must not fill meanwhile.
            Some(json!({"enabled": false, "setupCommands": [{"name": "pool", "command": "echo pool done; touch /home/pool-ran"}]})),
        )
        .await;
    assert_valid("UpdateWarmPoolResponse", &patched);

    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    assert!(d.is_test);
    assert_eq!(step_names(&d), STEPS_TWO_REPOS);
    let sum = &d.summary;
    assert!(sum.success);
    assert_eq!((sum.total_steps, sum.completed_steps), (11, 11));
    assert_eq!((&sum.failed_step, &sum.error), (&None, &None));
    assert_eq!(d.failure_reason, None);
    assert!(d.steps.iter().all(|s| s.status == StepResult::Success));
    let vm = d.instance_id.clone();
    assert!(vm.starts_with("vm-"));

    // Per-step metadata.
    let steps = &d.steps;
    assert_eq!(
        json!(steps[0].metadata),
        json!({"backend": "sandbox", "instanceId": vm})
    );
    assert!(json!(steps[1].metadata)["agentVersion"].is_string());
    assert!(json!(steps[1].metadata)["waitedMs"].is_number());
    assert_eq!(json!(steps[2].metadata), json!({"count": 0}));
    assert_eq!(
        json!(steps[3].metadata),
        json!({"repo": "acme/api", "branch": "main", "commit": api.head()})
    );
    assert_eq!(
        json!(steps[4].metadata),
        json!({"repo": "acme/web", "branch": "feature", "commit": web_feature})
    );
    assert_eq!(
        json!(steps[5].metadata),
        json!({"repo": "acme/api", "hooks": 2})
    );
    assert!(steps[5].output.as_deref().unwrap().contains("hook output"));
    assert_eq!(
        json!(steps[6].metadata),
        json!({"repo": "acme/web", "hooks": 0})
    );
    assert_eq!(json!(steps[7].metadata), json!({"commands": 1}));
    assert_eq!(
        json!(steps[8].metadata),
        json!({"repo": "acme/api", "commands": 0})
    );
    assert!(steps[8]
        .output
        .as_deref()
        .unwrap()
        .contains("nothing to run"));
    assert_eq!(
        json!(steps[9].metadata),
        json!({"repo": "acme/web", "commands": 1})
    );
    assert!(steps[9].output.as_deref().unwrap().contains("/home/web"));
    assert!(steps[9].output.as_deref().unwrap().contains("feature.txt"));
    assert_eq!(json!(steps[10].metadata), json!({"commands": 1}));
    assert!(steps[10]
        .output
        .as_deref()
        .unwrap()
        .starts_with("$ pool\npool done"));

    // Inside the VM: the repos at the right commits with origin at the real URL, hooks and setup
    // ran where they should, hostname is the VM id, root with working sudo.
    let id = d.id.as_str();
    let out = s
        .exec(
            &pid,
            id,
            "git -C /home/api rev-parse HEAD; git -C /home/api remote get-url origin; \
             git -C /home/web rev-parse HEAD; git -C /home/web remote get-url origin; \
             cat /tmp/api-hook-pwd /tmp/project-setup; ls /home/pool-ran; hostname; \
             id -u; sudo -n true && echo sudo-ok",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let expected = format!(
        "{}\n{}\n{}\nfile://{}\n/home/api\nin /home\n/home/pool-ran\n{vm}\n0\nsudo-ok\n",
        api.head(),
        api.url(),
        web_feature,
        web.url()
    );
    assert_eq!(out.output, expected);

    // The compatible list shows it; the pool's status does not count test instances.
    let list = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances"),
            None,
        )
        .await;
    assert_valid("ListWarmPoolInstancesResponse", &list);
    assert_eq!(list["items"][0]["id"], d.id.as_str());
    assert_eq!(list["items"][0]["isTest"], true);
    assert!(list["items"][0]["provisionedAt"].is_string());
    let pool = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_valid("GetWarmPoolResponse", &pool);
    assert_eq!(
        pool["status"],
        json!({"ready": 0, "provisioning": 0, "failed": 0})
    );

    // Destroying it leaves no process, mount or directory behind.
    let init = s.vm_init_pid(&vm).expect("the VM's init pid");
    let procs = vm_processes(init);
    assert!(procs.len() >= 2, "{procs:?}");
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert!(!any_alive(&procs), "processes of the VM are still running");
    assert!(
        !s.vm_dirs().contains(&vm),
        "the VM's directory is still there"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&vm));
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}/exec"),
            None,
        )
        .await;
    assert_eq!(st, 405);
    let list = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances"),
            None,
        )
        .await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn env_values_round_trip_through_home_env() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("env", vec![]).await;
    let values = [
        ("SINGLE_QUOTES", "it's a 'quoted' value"),
        ("DOUBLE_QUOTES", "say \"hi\""),
        ("NEWLINES", "line one\nline two\n\nlast\n"),
        ("DOLLARS", "$HOME ${PATH} $(id) `id` $$"),
        ("BACKSLASHES", "C:\\path\\to\\ \\n \\\\"),
        ("UNICODE", "ünïcødé ✓ 日本語 😀"),
        ("EMPTY", ""),
        ("SPACES", "  leading and trailing  "),
        ("MIXED", "'\"\\$`\n\t!*?[]{}#;&|<>"),
    ];
    let vars: Vec<Value> = values
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    let r = s
        .ok(
            "PUT",
            &format!("/v1/projects/{pid}/environment-variables"),
            Some(json!({"variables": vars})),
        )
        .await;
    assert_eq!(r["items"].as_array().unwrap().len(), values.len());
    assert!(
        r.to_string().find("ünïcødé").is_none(),
        "values must never be returned"
    );
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    assert_eq!(meta(&d, "set_env_vars"), json!({"count": values.len()}));
    let id = d.id.as_str();
    // Compare digests inside the VM: the values themselves would be redacted from the output.
    for (name, value) in values {
        let expect = sha256_hex(value.as_bytes());
        let out = s
            .exec(
                &pid,
                id,
                &format!("printf %s \"${name}\" | sha256sum | cut -c1-64"),
            )
            .await;
        assert_eq!(
            out.output.as_str().trim(),
            expect,
            "{name} did not round-trip"
        );
    }
    let out = s.exec(&pid, id, "stat -c '%a %U' /home/.env").await;
    assert_eq!(out.output, "600 root\n");
    // Exec's own env is applied over /home/.env.
    let out = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}/exec"),
            Some(json!({"command": "echo \"$EXTRA|$EMPTY|$(pwd)\"", "env": {"EXTRA": "x y", "EMPTY": "set"}, "cwd": "/tmp"})),
        )
        .await;
    assert_eq!(out["output"], "x y|set|/tmp\n");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

async fn failed_boot(
    s: &TestServer,
    pid: &str,
    body: TestWarmPoolBootBody,
) -> WarmPoolInstanceDetail {
    let d = s.test_boot(pid, body).await;
    assert_eq!(d.status, "failed", "{d:#?}");
    assert!(!d.summary.success);
    assert_eq!(d.failure_reason, d.summary.error);
    // The failed step is the last one recorded, and the VM is gone.
    let last = d.steps.last().unwrap();
    assert_eq!(last.status, StepResult::Error);
    assert_eq!(Some(&last.name), d.summary.failed_step.as_ref());
    assert_eq!(d.summary.completed_steps as usize, d.steps.len() - 1);
    let vm = d.instance_id.as_str();
    assert!(
        !s.vm_dirs().iter().any(|v| v == vm),
        "a failed instance's VM must be destroyed"
    );
    d
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn each_failure_names_its_step_and_says_why() {
    let s = TestServer::start(&[]);
    let good = TestRepo::new(&[("a.txt", "a\n")]);

    // A repository that does not exist.
    let missing = s
        .create_project(
            "missing",
            vec![repo_input("acme/gone", "/nonexistent/repo/path")],
        )
        .await;
    let d = failed_boot(&s, &missing, Default::default()).await;
    assert_failed_at(
        &d,
        "clone_repo",
        "git clone of acme/gone failed: repository not found",
    );
    assert_eq!(d.summary.total_steps, 8);
    assert_eq!(meta(&d, "clone_repo")["repo"], "acme/gone");

    // A branch that does not exist.
    let badbranch = s
        .create_project(
            "bad branch",
            vec![RepoInput {
                branch: Some("nope".into()),
                ..repo_input("acme/good", good.url())
            }],
        )
        .await;
    let d = failed_boot(&s, &badbranch, Default::default()).await;
    assert_failed_at(
        &d,
        "clone_repo",
        "git clone of acme/good failed: branch `nope` not found",
    );

    // A hook that fails.
    let hooky = TestRepo::new(&[(
        ".capy/settings.json",
        r#"{"hooks": {"setup": ["echo before", "exit 3", "echo never"]}}"#,
    )]);
    let hooks = s
        .create_project("hooks", vec![repo_input("acme/hooky", hooky.url())])
        .await;
    let d = failed_boot(&s, &hooks, Default::default()).await;
    assert_failed_at(&d, "init_repo", "command `exit 3` exited with status 3");
    let out = output(&d, "init_repo");
    assert!(out.contains("before") && !out.contains("never"), "{out:?}");

    // Settings that are not JSON.
    let broken = TestRepo::new(&[(".capy/settings.json", "{not json")]);
    let bp = s
        .create_project(
            "broken settings",
            vec![repo_input("acme/broken", broken.url())],
        )
        .await;
    let d = failed_boot(&s, &bp, Default::default()).await;
    assert_eq!(
        d.summary.failed_step.as_deref(),
        Some("init_repo"),
        "{d:#?}"
    );
    let e = d.summary.error.as_deref().unwrap();
    assert!(
        e.starts_with("invalid JSON (") && e.ends_with(") in .capy/settings.json of acme/broken"),
        "{e}"
    );

    // A failing command in each of the three setup steps.
    let pid = s
        .create_project("setup", vec![repo_input("acme/good", good.url())])
        .await;
    let devbox = format!("/v1/projects/{pid}/devbox");
    let patch_devbox = |body: Value| s.ok("PATCH", &devbox, Some(body));
    patch_devbox(json!({"setupCommands": [{"name": "fails", "command": "echo partial; false"}]}))
        .await;
    let d = failed_boot(&s, &pid, Default::default()).await;
    assert_failed_at(&d, "project_setup", "command `fails` exited with status 1");
    assert!(output(&d, "project_setup").contains("$ fails\npartial\n"));

    patch_devbox(json!({
        "setupCommands": [],
        "repos": [{"repoFullName": "acme/good", "setupCommands": [{"name": "build", "command": "exit 42"}]}],
    }))
    .await;
    let d = failed_boot(&s, &pid, Default::default()).await;
    assert_failed_at(&d, "repo_setup", "command `build` exited with status 42");
    assert_eq!(
        meta(&d, "repo_setup"),
        json!({"repo": "acme/good", "commands": 1})
    );

    patch_devbox(json!({"repos": [{"repoFullName": "acme/good", "setupCommands": []}]})).await;
    let d = failed_boot(
        &s,
        &pid,
        boot_with(&[
            ("ok", "true"),
            ("npm ci", "echo 'npm ERR! missing package.json' >&2; exit 1"),
            ("never", "touch /never"),
        ]),
    )
    .await;
    assert_failed_at(
        &d,
        "warm_pool_setup",
        "command `npm ci` exited with status 1",
    );
    assert_eq!(d.summary.completed_steps, 7);
    let out = output(&d, "warm_pool_setup");
    assert!(
        out.contains("npm ERR! missing package.json") && !out.contains("$ never"),
        "{out:?}"
    );
    // The test boot saved its commands first, like a PATCH.
    let pool = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await;
    assert_eq!(pool["config"]["setupCommands"].as_array().unwrap().len(), 3);
    // The pool's own boots (same commands) may have failed meanwhile; the test boot never counts.
    let status_failed = s
        .ok("GET", &format!("/v1/projects/{pid}/warm-pool"), None)
        .await["status"]["failed"]
        .as_u64()
        .unwrap();
    // Failures only add up: the list, read after, has at least those the status counted.
    let failed = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/warm-pool/instances?status=failed"),
            None,
        )
        .await;
    let pool_failed = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["isTest"] == false)
        .count();
    assert!(
        status_failed as usize <= pool_failed,
        "test instances never count in status ({status_failed} failed, {pool_failed} pool boots failed)"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn command_timeouts_fail_the_step() {
    let s = TestServer::start(&["--command-timeout-secs", "2"]);
    let pid = s.create_project("slow", vec![]).await;
    let d = failed_boot(
        &s,
        &pid,
        boot_with(&[("slow", "echo started; sleep 60; echo never")]),
    )
    .await;
    assert_failed_at(&d, "warm_pool_setup", "timed out after 2 s: `slow`");
    let st = step(&d, "warm_pool_setup");
    assert!(st.output.as_deref().unwrap().contains("started"));
    assert!(st.duration_ms.unwrap() < 30_000);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn secrets_are_redacted_everywhere() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("secrets", vec![]).await;
    s.ok(
        "PUT",
        &format!("/v1/projects/{pid}/environment-variables"),
        Some(json!({"variables": [
            {"name": "API_TOKEN", "value": "tok-8f3k2j5h"},
            {"name": "PRIVATE_KEY", "value": "-----BEGIN KEY-----\nAAAAsecretline1\nBBBBsecretline2\n-----END KEY-----"},
            {"name": "SHORT", "value": "abc"},
        ]})),
    )
    .await;
    let d = failed_boot(
        &s,
        &pid,
        boot_with(&[
            (
                "show",
                "echo token=$API_TOKEN; echo \"$PRIVATE_KEY\"; echo short=$SHORT; cat /home/.env",
            ),
            ("leak tok-8f3k2j5h", "exit 1"),
        ]),
    )
    .await;
    let out = output(&d, "warm_pool_setup");
    assert!(out.contains("token=[REDACTED:API_TOKEN]"), "{out:?}");
    assert!(out.contains("\n[REDACTED:PRIVATE_KEY]\n"), "{out:?}");
    assert!(
        out.contains("short=abc"),
        "short values are not redacted: {out:?}"
    );
    assert_eq!(
        d.summary.error.as_deref(),
        Some("command `leak [REDACTED:API_TOKEN]` exited with status 1")
    );
    let everything = serde_json::to_string(&d).unwrap() + &s.log_text();
    for secret in [
        "tok-8f3k2j5h",
        "AAAAsecretline1",
        "BBBBsecretline2",
        "BEGIN KEY",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    let vars = s
        .ok(
            "GET",
            &format!("/v1/projects/{pid}/environment-variables"),
            None,
        )
        .await;
    assert!(!vars.to_string().contains("tok-8f3k2j5h"));
    assert_eq!(vars["items"][0]["configured"], true);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn big_output_is_capped_keeping_head_and_tail() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("loud", vec![]).await;
    let d = failed_boot(
        &s,
        &pid,
        boot_with(&[("loud", "seq 1 200000; echo the real error >&2; exit 2")]),
    )
    .await;
    let out = output(&d, "warm_pool_setup");
    assert!(out.len() <= 64 * 1024 + 64, "{} bytes kept", out.len());
    assert!(out.starts_with("$ loud\n1\n2\n3\n"));
    assert!(
        out.ends_with("199999\n200000\nthe real error\n"),
        "{}",
        &out[out.len() - 100..]
    );
    let marker = out
        .lines()
        .find(|l| l.starts_with("[... "))
        .expect("an omission marker");
    assert!(marker.ends_with(" bytes omitted ...]"), "{marker}");
    let omitted: usize = marker.split_whitespace().nth(1).unwrap().parse().unwrap();
    let total: usize = "$ loud\n".len()
        + (1..=200000)
            .map(|n: usize| n.to_string().len() + 1)
            .sum::<usize>()
        + "the real error\n".len();
    assert_eq!(omitted, total - 16 * 1024 - 48 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn background_commands_are_started_and_not_waited_for() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("bg", vec![]).await;
    let d = s
        .test_boot(
            &pid,
            boot_running(vec![
                background("dev server", "echo serving; exec sleep 3600"),
                command("after", "echo after"),
            ]),
        )
        .await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let st = step(&d, "warm_pool_setup");
    let out = st.output.as_deref().unwrap();
    assert!(out.contains("started in background (pid "), "{out:?}");
    assert!(out.contains("/var/log/warmpool/dev_server.log"), "{out:?}");
    assert!(out.contains("$ after\nafter\n"));
    assert!(st.duration_ms.unwrap() < 30_000);
    let id = d.id.as_str();
    // It runs on: its first line reaches its log (the boot did not wait for that), and it is
    // still there.
    wait_for("the background command's log line", SETTLE, async || {
        let r = s
            .exec(&pid, id, "cat /var/log/warmpool/dev_server.log")
            .await;
        seen(r.output == "serving\n", format!("{r:?}"))
    })
    .await;
    let r = s.exec(&pid, id, "pgrep -c -x sleep").await;
    assert_eq!(r.output, "1\n");
    // The background command lives in its own session.
    let r = s
        .exec(
            &pid,
            id,
            "ps -o sid= -o pid= -C sleep | awk '{print ($1 == $2)}'",
        )
        .await;
    assert_eq!(r.output, "1\n");
}

/// A background service that dies before its boot is over fails the boot, named, with the end
/// of its log; one that ends well (a daemon forking away) does not.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn background_commands_that_die_fail_the_boot_with_their_log() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("bg-dies", vec![]).await;
    let d = failed_boot(
        &s,
        &pid,
        boot_running(vec![
            background("forks away", "true"),
            background(
                "web server",
                "echo \"listen tcp :3000: address already in use\" >&2; exit 3",
            ),
            command("after", "echo after"),
        ]),
    )
    .await;
    assert_eq!(
        d.summary.failed_step.as_deref(),
        Some("warm_pool_setup"),
        "{d:#?}"
    );
    let st = step(&d, "warm_pool_setup");
    assert_eq!(
        st.error.as_deref(),
        Some("background command `web server` exited with status 3"),
        "{st:#?}"
    );
    let out = st.output.as_deref().unwrap();
    assert!(
        out.contains("--- the end of /var/log/warmpool/web_server.log ---\nlisten tcp :3000: address already in use\n"),
        "{out:?}"
    );

    // Started in project_setup, alive at its end, dead before the boot is over: the last look
    // before ready sees it.
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/devbox"),
        Some(json!({"setupCommands": [
            {"name": "worker", "command": "sleep 1; echo worker gave up; exit 4", "background": true}
        ]})),
    )
    .await;
    let d = failed_boot(&s, &pid, boot_with(&[("slow", "sleep 2")])).await;
    let st = step(&d, "warm_pool_setup");
    assert_eq!(
        st.error.as_deref(),
        Some("background command `worker` exited with status 4"),
        "{st:#?}"
    );
    assert!(
        st.output.as_deref().unwrap().contains("worker gave up"),
        "{st:#?}"
    );
    assert_eq!(
        step(&d, "project_setup").status,
        StepResult::Success,
        "{d:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn the_sandbox_is_its_own_machine() {
    let s = TestServer::start(&[]);
    let marker = s.dir.path().join("host-only-marker");
    std::fs::write(&marker, "host").unwrap();
    let pid = s.create_project("isolation", vec![]).await;
    let d = s.test_boot(&pid, Default::default()).await;
    let id = d.id.as_str();
    let vm = d.instance_id.as_str();
    let r = s
        .exec(
            &pid,
            id,
            &format!(
                "test -e {m} && echo host-visible; test -e {data} && echo data-visible; \
                 ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
                 hostname; cat /etc/hostname; ls -A /home; \
                 grep -c . /proc/mounts; touch /etc/written && echo rootfs-writable",
                m = marker.display(),
                data = s.data_dir().display()
            ),
        )
        .await;
    let out = r.output.as_str();
    let lines: Vec<&str> = out.lines().collect();
    assert!(!out.contains("visible"), "{out:?}");
    let procs: u32 = lines[0].parse().unwrap();
    assert!(procs < 10, "the VM sees {procs} processes: {out:?}");
    assert_eq!(
        lines[1].trim(),
        "/usr/local/bin/warmpool-agent --init --listen-fd 3"
    );
    assert_eq!(lines[2], vm);
    assert_eq!(lines[3], vm);
    assert_eq!(lines[4], ".env");
    assert_eq!(*lines.last().unwrap(), "rootfs-writable");
    // Writes stay in this VM: the image and the host are unchanged.
    assert!(!std::path::Path::new("/etc/written").exists());
}
