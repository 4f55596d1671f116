//! Goldens on the default backend, end to end on the real binary and real sandboxes: a pool's
//! golden is built once, its VMs are made from it (the setup's files there, its services started
//! again, their own identity), a configuration change builds a new one while the old VMs stay
//! claimable, and the old golden goes once no VM uses it.

mod common;

use std::collections::HashSet;

use common::*;
use warmpool_client::Claim;
use warmpool_types::api::ClaimBody;

/// The goldens the server keeps on disk.
fn golden_dirs(s: &TestServer) -> HashSet<String> {
    std::fs::read_dir(s.data_dir().join("sandbox-goldens"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_pool_is_served_from_its_golden_and_a_new_config_builds_a_new_one() {
    let s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("README", "v1\n")]);
    let pid = s
        .create_project("goldens", vec![repo_input("acme/app", repo.url())])
        .await;
    // A setup that takes `secs`: long enough, for the second golden, that the claim made right
    // after the change is sure to find only the old golden's VMs.
    let setup = |version: &str, secs: u32| UpdateWarmPoolBody {
        setup_commands: Some(Some(vec![
            command(
                "deps",
                &format!("sleep {secs}; echo {version} > /home/deps; date +%s%N > /home/built-at"),
            ),
            background("svc", "exec sleep 3600"),
        ])),
        ..target(2)
    };
    s.configure_pool(&pid, setup("v1", 0)).await;
    let first = wait_ready_ids(&s, &pid, 2, SETTLE + s.boot() * 2).await;
    let goldens = golden_dirs(&s);
    assert_eq!(goldens.len(), 1, "one golden for the pool: {goldens:?}");
    let golden = goldens.iter().next().unwrap().clone();

    let c = s.client();
    for id in &first {
        let d = c.get_instance(&pid, id).await.unwrap();
        assert_eq!(
            meta(&d, "create_vm")["fromGolden"],
            golden.as_str(),
            "{d:#?}"
        );
        assert!(
            output(&d, "create_vm").contains(&format!(
                "on golden {golden}'s files (the image, with what the golden's setup changed; "
            )),
            "{}",
            output(&d, "create_vm")
        );
        // What a clone needs runs for real; the setup is the golden's.
        for real in ["ensure_server", "set_env_vars"] {
            assert!(meta(&d, real)["fromGolden"].is_null(), "{real}: {d:#?}");
        }
        let clone = output(&d, "clone_repo");
        assert!(clone.contains("still the head of"), "{clone}");
        for done in [
            "init_repo",
            "project_setup",
            "repo_setup",
            "warm_pool_setup",
        ] {
            assert_eq!(meta(&d, done)["fromGolden"], golden.as_str(), "{done}");
        }
        let setup = output(&d, "warm_pool_setup");
        assert!(
            setup.contains(&format!("done in golden {golden}")),
            "{setup}"
        );
        assert!(setup.contains("$ svc (started again in this VM"), "{setup}");
        assert_eq!(meta(&d, "warm_pool_setup")["backgroundRunning"], 1);
    }
    // In each VM (claimed, to run commands): the golden's files, its service running again, an
    // identity of its own.
    let mut built_at = HashSet::new();
    let mut claimed = Vec::new();
    for _ in &first {
        let id = c.claim(&pid, &ClaimBody::default()).await.unwrap();
        let id = id.into_response().instance.id;
        assert!(first.contains(&id), "{id} is not one of {first:?}");
        let vm = c.get_instance(&pid, &id).await.unwrap().instance_id;
        let probe = "cat /home/deps /home/built-at /home/app/README; pgrep -c -x sleep; hostname";
        let out = s.exec(&pid, &id, probe).await;
        let lines: Vec<&str> = out.output.lines().collect();
        assert_eq!(lines.len(), 5, "{out:?}");
        assert_eq!(
            (lines[0], lines[2], lines[3], lines[4]),
            ("v1", "v1", "1", vm.as_str())
        );
        built_at.insert(lines[1].to_string());
        claimed.push(id);
    }
    assert_eq!(built_at.len(), 1, "the setup ran once, in the golden");

    // A new configuration: a new golden, the old golden's VMs stale but claimable meanwhile,
    // then VMs of the new golden, and the old golden gone once no VM uses it.
    let refilled = wait_ready_ids(&s, &pid, 2, SETTLE + s.boot()).await;
    s.configure_pool(&pid, setup("v2", 5)).await;
    let stale = c.claim(&pid, &ClaimBody::default()).await.unwrap();
    let stale = stale.into_response().instance.id;
    assert!(
        refilled.contains(&stale),
        "{stale} is not one of {refilled:?}"
    );
    let out = s.exec(&pid, &stale, "cat /home/deps").await;
    assert_eq!(out.output, "v1\n");
    for id in claimed.iter().chain([&stale]) {
        c.delete_instance(&pid, id).await.unwrap();
    }
    wait_for(
        "the pool served by a new golden",
        SETTLE + s.boot() * 2,
        async || {
            let ids = ready_ids(&s, &pid).await;
            let dirs = golden_dirs(&s);
            seen(
                ids.len() == 2
                    && ids.iter().all(|i| !refilled.contains(i))
                    && !dirs.contains(&golden),
                format!("ready {ids:?}, goldens {dirs:?}"),
            )
        },
    )
    .await;
    let new_golden = golden_dirs(&s).into_iter().next().unwrap();
    for id in ready_ids(&s, &pid).await {
        let d = c.get_instance(&pid, &id).await.unwrap();
        assert_eq!(meta(&d, "create_vm")["fromGolden"], new_golden.as_str());
    }
    let fresh = c.claim(&pid, &ClaimBody::default()).await.unwrap();
    let fresh = fresh.into_response().instance.id;
    assert_eq!(s.exec(&pid, &fresh, "cat /home/deps").await.output, "v2\n");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_burst_of_claims_larger_than_the_pool_is_served_from_the_golden() {
    let s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("README", "burst\n")]);
    let pid = s
        .create_project("burst", vec![repo_input("acme/app", repo.url())])
        .await;
    // A setup far longer than a VM made from the golden takes.
    let slow = UpdateWarmPoolBody {
        setup_commands: Some(Some(vec![command(
            "slow",
            "sleep 20; echo done > /home/setup-done",
        )])),
        ..target(2)
    };
    s.configure_pool(&pid, slow).await;
    // The golden's setup once, then two VMs made from it.
    wait_ready_ids(&s, &pid, 2, SETTLE + s.boot() * 2).await;
    let golden = golden_dirs(&s).into_iter().next().unwrap();

    // 20 claims at once: 2 get the ready VMs, 18 get VMs made for them from the golden. Each
    // may wait as long as the setup takes; none needs to.
    let c = s.client();
    let claims = (0..20).map(|n| {
        let c = c.clone();
        let pid = pid.clone();
        async move {
            let body = ClaimBody {
                task_id: Some(format!("burst {n}")),
                wait_seconds: Some(60.0),
                ttl_seconds: None,
            };
            c.claim(&pid, &body).await
        }
    });
    let answers = futures_util::future::join_all(claims).await;
    let mut ids = HashSet::new();
    for a in answers {
        let claim = a.expect("every claim is answered");
        assert!(
            matches!(claim, Claim::Ready(_)),
            "a claim did not get a ready VM within 60 s: {claim:?}"
        );
        let r = claim.into_response();
        ids.insert(r.instance.id.clone());
        let d = c.get_instance(&pid, &r.instance.id).await.unwrap();
        assert_eq!(d.status, "claimed");
        // Made from the golden: the setup's files are there and the setup did not run again.
        assert_eq!(
            meta(&d, "create_vm")["fromGolden"],
            golden.as_str(),
            "{d:#?}"
        );
        assert!(output(&d, "warm_pool_setup").contains("done in golden"));
        let out = s.exec(&pid, &r.instance.id, "cat /home/setup-done").await;
        assert_eq!(out.output, "done\n");
    }
    assert_eq!(ids.len(), 20, "each claim got a VM of its own");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn with_goldens_off_every_vm_runs_its_setup_and_the_old_golden_goes() {
    let mut s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("README", "v1\n")]);
    let pid = s
        .create_project("no goldens", vec![repo_input("acme/app", repo.url())])
        .await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            setup_commands: Some(Some(vec![command("stamp", "date +%s%N > /home/built-at")])),
            ..target(1)
        },
    )
    .await;
    let first = wait_ready_ids(&s, &pid, 1, SETTLE + s.boot() * 2).await;
    let golden = golden_dirs(&s);
    assert_eq!(golden.len(), 1, "{golden:?}");

    // Restarted with goldens off: the VM made from the golden is still claimable; once it is
    // gone, so is the golden, and every new VM runs the whole setup itself.
    s.restart_with(&["--goldens", "false"]);
    let c = s.client();
    let claimed = c.claim(&pid, &ClaimBody::default()).await.unwrap();
    let claimed = claimed.into_response().instance.id;
    assert_eq!(claimed, first[0]);
    c.delete_instance(&pid, &claimed).await.unwrap();
    s.configure_pool(&pid, target(2)).await;
    wait_for(
        "the old golden deleted",
        SETTLE + s.boot() * 2,
        async || {
            let dirs = golden_dirs(&s);
            seen(dirs.is_empty(), format!("{dirs:?}"))
        },
    )
    .await;
    let ids = wait_ready_ids(&s, &pid, 2, SETTLE + s.boot() * 2).await;
    let mut stamps = HashSet::new();
    for id in &ids {
        let d = c.get_instance(&pid, id).await.unwrap();
        for st in &d.steps {
            let from = st.metadata.as_ref().and_then(|m| m.get("fromGolden"));
            assert!(from.is_none(), "{d:#?}");
        }
        assert!(
            output(&d, "warm_pool_setup").contains("$ stamp\n"),
            "{}",
            output(&d, "warm_pool_setup")
        );
        let claimed = c.claim(&pid, &ClaimBody::default()).await.unwrap();
        let claimed = claimed.into_response().instance.id;
        stamps.insert(s.exec(&pid, &claimed, "cat /home/built-at").await.output);
    }
    assert_eq!(stamps.len(), 2, "each VM ran the setup: {stamps:?}");
    assert!(golden_dirs(&s).is_empty());
}
