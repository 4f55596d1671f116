//! The store suite: every engine must pass it. It runs against `&dyn Store`, so a new engine only
//! adds a way to open one.

use std::sync::Arc;

use warmpool_store::*;
use warmpool_types::api::{PoolStatus, SetupCommand};
use warmpool_types::state::{InstanceKind, InstanceStatus};

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("wp.db")).unwrap();
    (dir, Arc::new(store))
}

fn project(id: &str) -> ProjectRow {
    ProjectRow {
        seq: 0,
        id: id.into(),
        name: format!("name of {id}"),
        description: Some("ünïcode 'quotes' \"$x\"".into()),
        task_code: "P".into(),
        repos: vec![RepoSpec {
            full_name: "acme/api".into(),
            url: "/srv/api".into(),
            branch: None,
        }],
        devbox: DevboxSpec::default(),
        generation: 1,
        created_at: 1,
        updated_at: 1,
    }
}

fn instance(id: &str, project: &str, kind: InstanceKind, status: InstanceStatus) -> InstanceRow {
    InstanceRow {
        seq: 0,
        id: id.into(),
        vm_id: format!("vm-{id}"),
        project_id: project.into(),
        kind,
        status,
        total_steps: 8,
        failed_step: None,
        failure_reason: None,
        backend: "sim".into(),
        agent_url: None,
        agent_token: None,
        config_hash: None,
        task_id: None,
        created_at: 10,
        provisioned_at: None,
        finished_at: None,
        claimed_at: None,
        destroyed_at: None,
        stale_at: None,
        commits: Default::default(),
        golden_id: None,
    }
}

fn no_commits() -> std::collections::BTreeMap<String, RepoCommit> {
    Default::default()
}

#[tokio::test]
async fn projects_use_generations() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p1")).await.unwrap();
    assert!(matches!(
        s.insert_project(&project("p1")).await,
        Err(StoreError::Duplicate(_))
    ));
    let mut p = s.get_project("p1").await.unwrap().unwrap();
    assert_eq!(p.description.as_deref(), Some("ünïcode 'quotes' \"$x\""));
    p.name = "renamed".into();
    p.devbox.setup_commands.push(SetupCommand {
        name: "n".into(),
        command: "c".into(),
        background: Some(true),
    });
    assert!(s.update_project(&p).await.unwrap());
    // The same (now stale) generation loses.
    assert!(!s.update_project(&p).await.unwrap());
    let q = s.get_project("p1").await.unwrap().unwrap();
    assert_eq!((q.name.as_str(), q.generation), ("renamed", 2));
    assert_eq!(q.devbox, p.devbox);
    for i in 2..6 {
        s.insert_project(&project(&format!("p{i}"))).await.unwrap();
    }
    let page = s.list_projects(None, 2, None).await.unwrap();
    assert_eq!(
        page.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    let next = s.list_projects(Some(page[1].seq), 10, None).await.unwrap();
    assert_eq!(next.len(), 3);
    assert_eq!(
        s.list_projects(None, 10, Some("p4")).await.unwrap().len(),
        1
    );
    assert!(s.delete_project("p1").await.unwrap());
    assert!(!s.delete_project("p1").await.unwrap());
    assert!(s.get_project("p1").await.unwrap().is_none());
}

#[tokio::test]
async fn env_vars_upsert_and_version() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    s.upsert_env_vars(
        "p",
        &[("A".into(), "1".into()), ("B".into(), "x\ny'\"".into())],
        5,
    )
    .await
    .unwrap();
    s.upsert_env_vars("p", &[("A".into(), "2".into())], 6)
        .await
        .unwrap();
    let vars = s.list_env_vars("p").await.unwrap();
    assert_eq!(vars.len(), 2);
    assert_eq!(
        (vars[0].value.as_str(), vars[0].version, vars[0].updated_at),
        ("2", 2, 6)
    );
    assert_eq!((vars[1].value.as_str(), vars[1].version), ("x\ny'\"", 1));
    assert!(s.delete_env_var("p", "A").await.unwrap());
    assert!(!s.delete_env_var("p", "A").await.unwrap());
}

#[tokio::test]
async fn pool_config_is_conditional() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    let mut cfg = PoolConfigRow {
        project_id: "p".into(),
        enabled: true,
        target_size: 1,
        max_age_minutes: 60,
        branch: None,
        setup_commands: None,
        generation: 0,
        created_at: 1,
        updated_at: 1,
    };
    assert!(s.put_pool_config(&cfg, None).await.unwrap());
    assert!(
        !s.put_pool_config(&cfg, None).await.unwrap(),
        "a second insert loses"
    );
    cfg.target_size = 5;
    cfg.setup_commands = Some(vec![]);
    assert!(s.put_pool_config(&cfg, Some(1)).await.unwrap());
    assert!(
        !s.put_pool_config(&cfg, Some(1)).await.unwrap(),
        "a stale generation loses"
    );
    let got = s.get_pool_config("p").await.unwrap().unwrap();
    assert_eq!(
        (got.target_size, got.generation, got.setup_commands),
        (5, 2, Some(vec![]))
    );
}

#[tokio::test]
async fn instance_transitions_are_conditional() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    let i = instance("i1", "p", InstanceKind::Pool, InstanceStatus::Provisioning);
    s.insert_instance(&i).await.unwrap();
    assert!(s.set_instance_agent("i1", "http://x", "tok").await.unwrap());
    assert!(s.mark_ready("i1", 20, &no_commits(), false).await.unwrap());
    assert!(!s.mark_ready("i1", 21, &no_commits(), false).await.unwrap());
    assert!(
        !s.mark_failed("i1", Some("x"), "y", 22).await.unwrap(),
        "ready cannot fail"
    );
    assert!(!s.set_instance_agent("i1", "http://y", "t2").await.unwrap());
    let got = s.get_instance("i1").await.unwrap().unwrap();
    assert_eq!(got.status, InstanceStatus::Ready);
    assert_eq!(
        (got.provisioned_at, got.agent_url.as_deref()),
        (Some(20), Some("http://x"))
    );
    assert!(!s
        .mark_destroyed("i1", &[InstanceStatus::Claimed], 30)
        .await
        .unwrap());
    assert!(s
        .mark_destroyed("i1", &[InstanceStatus::Ready, InstanceStatus::Failed], 30)
        .await
        .unwrap());
    assert!(!s
        .mark_destroyed("i1", &[InstanceStatus::Ready], 31)
        .await
        .unwrap());

    // Many racers, one winner.
    s.insert_instance(&instance(
        "i2",
        "p",
        InstanceKind::Pool,
        InstanceStatus::Provisioning,
    ))
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for n in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            if n % 2 == 0 {
                s.mark_ready("i2", n, &no_commits(), false).await.unwrap()
            } else {
                s.mark_failed("i2", Some("step"), "why", n).await.unwrap()
            }
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as u32;
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn pool_status_counts_pool_instances_only() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    s.insert_project(&project("q")).await.unwrap();
    use InstanceKind::*;
    use InstanceStatus::*;
    for (id, proj, kind, status) in [
        ("a", "p", Pool, Ready),
        ("b", "p", Pool, Ready),
        ("c", "p", Pool, Provisioning),
        ("d", "p", Pool, Failed),
        ("e", "p", Pool, Claimed),
        ("f", "p", Test, Ready),
        ("g", "p", Pool, Destroyed),
        ("h", "q", Pool, Ready),
        ("i", "p", Cold, Provisioning),
    ] {
        s.insert_instance(&instance(id, proj, kind, status))
            .await
            .unwrap();
    }
    assert_eq!(
        s.pool_status("p").await.unwrap(),
        PoolStatus {
            ready: 2,
            provisioning: 1,
            failed: 1
        }
    );
    let listed = s.list_instances("p", None, 50).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["i", "f", "e", "d", "c", "b", "a"],
        "newest first, destroyed hidden"
    );
    assert_eq!(
        s.list_instances("p", Some(Ready), 1).await.unwrap()[0].id,
        "f"
    );
    assert_eq!(s.instances_in(&[Provisioning]).await.unwrap().len(), 2);
    // Steps come back in order, with their metadata.
    for seq in [1u32, 0] {
        let mut meta = serde_json::Map::new();
        meta.insert("n".into(), seq.into());
        s.insert_step(&StepRow {
            instance_id: "a".into(),
            seq,
            name: format!("s{seq}"),
            success: seq == 0,
            output: Some("out".into()),
            error: (seq == 1).then(|| "bad".to_string()),
            duration_ms: 5,
            finished_at: 100 + seq as i64,
            metadata: Some(meta),
        })
        .await
        .unwrap();
    }
    let steps = s.list_steps("a").await.unwrap();
    assert_eq!(
        steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["s0", "s1"]
    );
    assert_eq!(steps[1].error.as_deref(), Some("bad"));
    assert_eq!(steps[1].metadata.as_ref().unwrap()["n"], 1);
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wp.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_project(&project("p")).await.unwrap();
        s.set_default_branch("/srv/api", "main", 1).await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.get_project("p").await.unwrap().is_some());
    assert_eq!(
        s.get_default_branch("/srv/api").await.unwrap().as_deref(),
        Some("main")
    );
    s.ping().await.unwrap();
}

#[tokio::test]
async fn claims_are_never_handed_out_twice() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    let commits: std::collections::BTreeMap<String, RepoCommit> = [(
        "acme/api".to_string(),
        RepoCommit {
            branch: "main".into(),
            commit: "abc".into(),
        },
    )]
    .into();
    for n in 0..5 {
        let id = format!("r{n}");
        s.insert_instance(&instance(
            &id,
            "p",
            InstanceKind::Pool,
            InstanceStatus::Provisioning,
        ))
        .await
        .unwrap();
        assert!(s.mark_ready(&id, 100 + n, &commits, false).await.unwrap());
    }
    // The newest is stale: fresh ones go first, newest first, the stale one last.
    assert!(s.set_stale("r4", 200).await.unwrap());
    assert!(!s.set_stale("r4", 201).await.unwrap());
    let first = s
        .claim_ready("p", Some("task-1"), 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.status, first.claimed_at),
        ("r3", InstanceStatus::Claimed, Some(300))
    );
    assert_eq!(first.task_id.as_deref(), Some("task-1"));
    assert_eq!(first.commits, commits);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.claim_ready("p", None, 400).await.unwrap()
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        if let Some(i) = t.await.unwrap() {
            got.push(i.id);
        }
    }
    got.sort();
    assert_eq!(
        got,
        ["r0", "r1", "r2", "r4"],
        "each ready instance exactly once"
    );
    assert!(s.claim_ready("p", None, 500).await.unwrap().is_none());
    let counts = s.pool_counts("p").await.unwrap();
    assert_eq!(
        (counts.claimed, counts.warm_claims, counts.ready),
        (5, 5, 0)
    );
    // Cold boots go straight to claimed.
    s.insert_instance(&instance(
        "c",
        "p",
        InstanceKind::Cold,
        InstanceStatus::Provisioning,
    ))
    .await
    .unwrap();
    assert!(s.mark_ready("c", 600, &commits, true).await.unwrap());
    let c = s.get_instance("c").await.unwrap().unwrap();
    assert_eq!(
        (c.status, c.claimed_at, c.provisioned_at),
        (InstanceStatus::Claimed, Some(600), Some(600))
    );
    assert_eq!(s.pool_counts("p").await.unwrap().cold_claims, 1);
    assert_eq!(
        s.provisioning_durations("p", 3).await.unwrap(),
        vec![590, 94, 93]
    );
}

#[tokio::test]
async fn pool_state_changes_are_atomic() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    assert_eq!(s.get_pool_state("p").await.unwrap(), PoolState::default());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.update_pool_state(
                "p",
                1,
                Box::new(|st: &mut PoolState| st.consecutive_failures += 1),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = s
        .update_pool_state(
            "p",
            2,
            Box::new(|st: &mut PoolState| {
                st.degraded_since = Some(2);
                st.last_failed_step = Some("warm_pool_setup".into());
            }),
        )
        .await
        .unwrap();
    assert_eq!(st.consecutive_failures, 10);
    assert_eq!(s.get_pool_state("p").await.unwrap(), st);
    assert_eq!(s.pool_snapshot(None).await.unwrap().configs.len(), 0);
    s.upsert_env_vars("p", &[("X".into(), "1".into())], 1)
        .await
        .unwrap();
    s.upsert_env_vars("p", &[("X".into(), "2".into())], 2)
        .await
        .unwrap();
    assert_eq!(
        s.pool_snapshot(None).await.unwrap().env_versions,
        vec![("p".to_string(), "X".to_string(), 2)]
    );
}

#[tokio::test]
async fn pool_snapshot_reports_changes_since_a_revision() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    let st = InstanceStatus::Provisioning;
    for id in ["a", "b", "c"] {
        s.insert_instance(&instance(id, "p", InstanceKind::Pool, st))
            .await
            .unwrap();
    }
    let full = s.pool_snapshot(None).await.unwrap();
    let ids: Vec<_> = full.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"], "every live instance, oldest first");
    assert_eq!(full.projects.len(), 1);
    let rev = full.rev;

    // Nothing changed: nothing comes back, and the revision stays.
    let same = s.pool_snapshot(Some(rev)).await.unwrap();
    assert!(same.instances.is_empty());
    assert_eq!(same.rev, rev);

    // One goes ready, one is destroyed: exactly those two come back, destroyed ones included so a
    // reader can forget them.
    assert!(s.mark_ready("a", 20, &no_commits(), false).await.unwrap());
    assert!(s.mark_destroyed("b", &[st], 21).await.unwrap());
    let changed = s.pool_snapshot(Some(rev)).await.unwrap();
    let mut got: Vec<_> = changed
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.status))
        .collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        [
            ("a", InstanceStatus::Ready),
            ("b", InstanceStatus::Destroyed)
        ]
    );
    assert!(changed.rev > rev);
    // And after that revision, nothing again.
    assert!(s
        .pool_snapshot(Some(changed.rev))
        .await
        .unwrap()
        .instances
        .is_empty());
    // The full read no longer has the destroyed one.
    let ids: Vec<_> = s
        .pool_snapshot(None)
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
}

#[tokio::test]
async fn goldens_are_recorded_and_forgotten() {
    let (_d, s) = sqlite();
    s.insert_project(&project("p")).await.unwrap();
    let g = GoldenRow {
        id: "wpi_golden".into(),
        project_id: "p".into(),
        config_hash: "h1".into(),
        backend: "qemu".into(),
        commits: Default::default(),
        ready: true,
        created_at: 5,
    };
    s.insert_golden(&g).await.unwrap();
    assert_eq!(s.ready_goldens().await.unwrap(), vec![g.clone()]);
    assert_eq!(s.get_golden("wpi_golden").await.unwrap(), Some(g));
    assert!(s.mark_golden_deleted("wpi_golden", 6).await.unwrap());
    assert!(!s.mark_golden_deleted("wpi_golden", 7).await.unwrap());
    assert!(s.ready_goldens().await.unwrap().is_empty());
    // A golden's own instance is never listed nor claimed; its builds count as the pool's boots.
    let mut b = instance(
        "gb",
        "p",
        InstanceKind::Golden,
        InstanceStatus::Provisioning,
    );
    b.golden_id = None;
    s.insert_instance(&b).await.unwrap();
    assert!(s.list_instances("p", None, 50).await.unwrap().is_empty());
    assert_eq!(s.pool_status("p").await.unwrap().provisioning, 1);
    assert!(s.claim_ready("p", None, 1).await.unwrap().is_none());
}

#[tokio::test]
async fn concurrent_writes_commit_together_and_fail_alone() {
    let (_d, s) = sqlite();
    s.insert_project(&project("dup")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = s.clone();
        // Every 8th write breaks a uniqueness rule; the others, committed in the same batches,
        // must not be affected.
        let id = if i % 8 == 0 {
            "dup".to_string()
        } else {
            format!("p{i}")
        };
        tasks.push(tokio::spawn(async move {
            s.insert_project(&project(&id)).await
        }));
    }
    let mut ok = 0;
    let mut dup = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Duplicate(_)) => dup += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, dup), (56, 8));
    assert_eq!(s.list_projects(None, 1000, None).await.unwrap().len(), 57);
}
