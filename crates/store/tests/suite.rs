//! The store suite: every engine must pass it. Each test is a function of a `Store`, run once on a
//! fresh SQLite file and once on a fresh PostgreSQL database (in one throwaway cluster shared by
//! the whole binary), so a new engine only adds a way to open one. A missing PostgreSQL fails the
//! tests rather than skipping them. Tests of what only one engine has come last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warmpool_pg_cluster::PgCluster;
use warmpool_store::*;
use warmpool_types::api::{PoolStatus, SetupCommand};
use warmpool_types::state::{EndReason, InstanceKind, InstanceStatus, ScaleReason};

fn open_sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("wp.db")).unwrap();
    (dir, Arc::new(store))
}

/// A new database in the shared cluster, so tests stay independent and run in parallel.
async fn fresh_pg_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("suite_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    tokio::task::spawn_blocking(move || {
        let cluster = PgCluster::shared().expect("the store suite needs PostgreSQL");
        cluster.create_database(&name).unwrap()
    })
    .await
    .unwrap()
}

async fn open_postgres() -> Arc<dyn Store> {
    Arc::new(PgStore::connect(&fresh_pg_database().await).await.unwrap())
}

/// Runs each test body on both engines: `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, store) = super::open_sqlite();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
                async fn $name() {
                    super::$name(super::open_postgres().await).await;
                }
            )*
        }
    };
}

on_both_engines!(
    projects_use_generations,
    env_vars_upsert_and_version,
    pool_config_is_conditional,
    instance_transitions_are_conditional,
    pool_status_counts_pool_instances_only,
    an_ended_failure_stays_failed_and_stops_counting,
    leases_start_renew_and_expire_once,
    autoscale_bounds_and_decisions_are_conditional,
    claims_are_never_handed_out_twice,
    pool_state_changes_are_atomic,
    pool_snapshot_reports_changes_since_a_revision,
    pool_snapshot_never_misses_a_change,
    goldens_are_recorded_and_forgotten,
    tokens_are_found_by_hash,
    concurrent_writes_commit_together_and_fail_alone,
    pool_boots_are_placed_within_target_and_capacity,
    nodes_hold_their_names_by_lease,
    lost_nodes_lose_their_live_instances,
    nodes_round_trip_on_instances_and_goldens,
    interrupted_boots_record_the_step_they_were_in,
    instances_are_found_by_any_set_of_statuses,
    settings_keep_the_first_value,
);

fn project(id: &str) -> ProjectRow {
    ProjectRow {
        seq: 0,
        id: id.into(),
        name: format!("name of {id}"),
        description: Some("ünïcode 'quotes' \"$x\"".into()),
        task_code: "P".into(),
        repos: vec![
            RepoSpec {
                full_name: "acme/api".into(),
                url: "/srv/api".into(),
                branch: None,
                credentials: None,
                admin_source: true,
            },
            RepoSpec {
                full_name: "acme/web".into(),
                url: "https://example.com/web.git".into(),
                branch: Some("main".into()),
                credentials: Some(SealedCredentials {
                    sealed: "sealed:v1:abc".into(),
                    digest: "d1".into(),
                }),
                admin_source: false,
            },
        ],
        devbox: DevboxSpec::default(),
        resources: warmpool_types::api::Resources {
            cpus: 3,
            memory_mb: 700,
            pids_max: 333,
            disk_mb: 4096,
        },
        leases: warmpool_types::api::Leases {
            default_ttl_seconds: 600,
            max_ttl_seconds: 3600,
        },
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
        end_reason: None,
        lease_ms: None,
        expires_at: None,
        stale_at: None,
        commits: Default::default(),
        golden_id: None,
        node: None,
    }
}

fn no_commits() -> std::collections::BTreeMap<String, RepoCommit> {
    Default::default()
}

async fn projects_use_generations(s: Arc<dyn Store>) {
    s.insert_project(&project("p1")).await.unwrap();
    assert!(matches!(
        s.insert_project(&project("p1")).await,
        Err(StoreError::Duplicate(_))
    ));
    let mut p = s.get_project("p1").await.unwrap().unwrap();
    assert_eq!(p.description.as_deref(), Some("ünïcode 'quotes' \"$x\""));
    assert_eq!(p.resources, project("p1").resources);
    p.name = "renamed".into();
    p.resources.memory_mb = 512;
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
    assert_eq!(q.resources, p.resources);
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

async fn env_vars_upsert_and_version(s: Arc<dyn Store>) {
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

async fn pool_config_is_conditional(s: Arc<dyn Store>) {
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

async fn instance_transitions_are_conditional(s: Arc<dyn Store>) {
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
        .mark_destroyed("i1", &[InstanceStatus::Claimed], EndReason::Deleted, 30)
        .await
        .unwrap());
    assert!(s
        .mark_destroyed(
            "i1",
            &[InstanceStatus::Ready, InstanceStatus::Failed],
            EndReason::Deleted,
            30
        )
        .await
        .unwrap());
    assert!(!s
        .mark_destroyed("i1", &[InstanceStatus::Ready], EndReason::Deleted, 31)
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

async fn interrupted_boots_record_the_step_they_were_in(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    s.insert_instance(&instance(
        "i1",
        "p",
        InstanceKind::Pool,
        InstanceStatus::Provisioning,
    ))
    .await
    .unwrap();
    let step = |seq: u32, name: &str| StepRow {
        instance_id: "i1".into(),
        seq,
        name: name.into(),
        success: false,
        output: Some("stopped\n".into()),
        error: Some("server restarted during provisioning".into()),
        duration_ms: 40,
        finished_at: 90,
        metadata: None,
    };
    assert!(s
        .fail_interrupted(
            &step(0, "create_vm"),
            "server restarted during provisioning",
            100
        )
        .await
        .unwrap());
    let got = s.get_instance("i1").await.unwrap().unwrap();
    assert_eq!(got.status, InstanceStatus::Failed);
    assert_eq!(got.failed_step.as_deref(), Some("create_vm"));
    assert_eq!(
        got.failure_reason.as_deref(),
        Some("server restarted during provisioning")
    );
    let steps = s.list_steps("i1").await.unwrap();
    assert_eq!(steps, vec![step(0, "create_vm")]);
    // Once failed, nothing more is recorded.
    assert!(!s
        .fail_interrupted(&step(1, "ensure_server"), "again", 110)
        .await
        .unwrap());
    assert_eq!(s.list_steps("i1").await.unwrap().len(), 1);
}

/// A claim's lease starts with the claim (for an instance booted for a claim, when it is ready),
/// a renewal moves it on only while it runs, and expiry ends each instance once, as `expired`.
async fn leases_start_renew_and_expire_once(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    let got = s.get_project("p").await.unwrap().unwrap();
    assert_eq!(got.leases.max_ttl_seconds, 3600, "leases round-trip");
    for id in ["a", "b"] {
        let i = instance(id, "p", InstanceKind::Pool, InstanceStatus::Provisioning);
        s.insert_instance(&i).await.unwrap();
        assert!(s.mark_ready(id, 10, &no_commits(), false).await.unwrap());
    }
    let a = s
        .claim_ready("p", Some("t1"), Some(1000), 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.lease_ms, a.expires_at), (Some(1000), Some(1100)));
    assert!(
        s.claim_ready("p", None, Some(3_600_001), 100)
            .await
            .unwrap()
            .is_none(),
        "longer than the project allows"
    );
    let b = s.claim_ready("p", None, None, 100).await.unwrap().unwrap();
    assert_eq!(
        (b.lease_ms, b.expires_at),
        (Some(600_000), Some(600_100)),
        "the project's default"
    );
    // One booted for a claim: its lease starts when it is ready.
    let mut c = instance("c", "p", InstanceKind::Cold, InstanceStatus::Provisioning);
    c.lease_ms = Some(500);
    s.insert_instance(&c).await.unwrap();
    assert!(s.mark_ready("c", 300, &no_commits(), true).await.unwrap());
    let c = s.get_instance("c").await.unwrap().unwrap();
    assert_eq!(
        (c.status, c.expires_at),
        (InstanceStatus::Claimed, Some(800))
    );

    let renewed = s
        .renew_lease(&a.id, "p", 2000, 1050)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.expires_at, Some(3050));
    assert!(
        s.renew_lease(&a.id, "q", 2000, 1050)
            .await
            .unwrap()
            .is_none(),
        "only in its own project"
    );
    assert!(s.expire_leases(799).await.unwrap().is_empty());
    let ended: Vec<String> = s
        .expire_leases(800)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ended, ["c"]);
    assert!(s.expire_leases(800).await.unwrap().is_empty(), "once");
    let c = s.get_instance("c").await.unwrap().unwrap();
    assert_eq!(
        (c.status, c.end_reason, c.destroyed_at),
        (
            InstanceStatus::Destroyed,
            Some(EndReason::Expired),
            Some(800)
        )
    );
    assert!(
        s.renew_lease("c", "p", 2000, 900).await.unwrap().is_none(),
        "a lease that ran out is not brought back"
    );
    // Many nodes asking at once: each instance is ended once.
    let mut askers = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        askers.push(tokio::spawn(
            async move { s.expire_leases(5000).await.unwrap() },
        ));
    }
    let mut all = Vec::new();
    for a in askers {
        all.extend(a.await.unwrap().into_iter().map(|i| i.id));
    }
    assert_eq!(all, std::slice::from_ref(&a.id));
    assert_eq!(
        s.get_instance(&b.id).await.unwrap().unwrap().status,
        InstanceStatus::Claimed,
        "its lease runs until 600,100"
    );
}

/// A pool's autoscale bounds change only from the generation they were read at; a decision of
/// its target is recorded once by whichever node makes it first; both are in the snapshot, and
/// go with the project. Claims are found by time, ended ones included.
async fn autoscale_bounds_and_decisions_are_conditional(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    assert_eq!(s.get_autoscale("p").await.unwrap(), None);
    let mut row = AutoscaleRow {
        project_id: "p".into(),
        enabled: true,
        min_size: 0,
        max_size: 7,
        generation: 0,
        scale: None,
        updated_at: 5,
    };
    assert!(s.put_autoscale(&row, None).await.unwrap());
    assert!(!s.put_autoscale(&row, None).await.unwrap(), "created once");
    let got = s.get_autoscale("p").await.unwrap().unwrap();
    assert_eq!(
        got,
        AutoscaleRow {
            generation: 1,
            ..row.clone()
        }
    );
    row.max_size = 9;
    assert!(s.put_autoscale(&row, Some(1)).await.unwrap());
    assert!(
        !s.put_autoscale(&row, Some(1)).await.unwrap(),
        "a stale generation"
    );

    let first = ScaleRecord {
        target: 4,
        changed_at: 100,
        reason: ScaleReason::Demand,
        peak: 3,
        boot_ms: 90_000,
    };
    assert!(s.record_scale("p", None, &first).await.unwrap());
    let second = ScaleRecord {
        target: 3,
        changed_at: 200,
        reason: ScaleReason::SteppedDown,
        ..first
    };
    // Two nodes decide from the same record: one is kept.
    assert!(!s.record_scale("p", None, &second).await.unwrap());
    assert!(s.record_scale("p", Some(100), &second).await.unwrap());
    assert!(!s.record_scale("p", Some(100), &first).await.unwrap());
    assert!(!s.record_scale("nope", None, &first).await.unwrap());
    let got = s.get_autoscale("p").await.unwrap().unwrap();
    assert_eq!((got.max_size, got.generation), (9, 2));
    assert_eq!(got.scale, Some(second));
    let snap = s.pool_snapshot(None).await.unwrap();
    assert_eq!(snap.autoscale.get("p"), Some(&got));

    // Claims, ended or not, by time.
    for (id, at) in [("a", 10), ("b", 20), ("c", 30)] {
        let i = instance(id, "p", InstanceKind::Pool, InstanceStatus::Provisioning);
        s.insert_instance(&i).await.unwrap();
        assert!(s
            .mark_ready(id, at - 5, &no_commits(), false)
            .await
            .unwrap());
        assert!(s.claim_ready("p", None, None, at).await.unwrap().is_some());
    }
    let b = s.get_instance("b").await.unwrap().unwrap();
    assert!(s
        .mark_destroyed(&b.id, &[InstanceStatus::Claimed], EndReason::Deleted, 25)
        .await
        .unwrap());
    // One booted for a claim was asked for when it was created, not when it became ready.
    let mut cold = instance("d", "p", InstanceKind::Cold, InstanceStatus::Provisioning);
    cold.created_at = 22;
    s.insert_instance(&cold).await.unwrap();
    assert!(s.mark_ready("d", 40, &no_commits(), true).await.unwrap());
    let claims = s.claims_since("p", 10).await.unwrap();
    let times: Vec<(&str, i64)> = claims.iter().map(|c| (c.0.as_str(), c.1)).collect();
    assert_eq!(times, [("b", 20), ("d", 22), ("c", 30)]);
    assert!(s.claims_since("q", 0).await.unwrap().is_empty());

    assert!(s.delete_project("p").await.unwrap());
    assert_eq!(
        s.get_autoscale("p").await.unwrap(),
        None,
        "gone with its project"
    );
}

/// Ending a failed instance (clear, delete, retention) keeps how its boot ended — status,
/// failed step, reason, steps — and says when and why it was ended; it no longer counts as a
/// pool failure, nor among live instances, but it is still listed. Ended once only.
async fn an_ended_failure_stays_failed_and_stops_counting(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    let i = instance("f", "p", InstanceKind::Pool, InstanceStatus::Provisioning);
    s.insert_instance(&i).await.unwrap();
    assert!(s
        .mark_failed("f", Some("warm_pool_setup"), "exit 1", 10)
        .await
        .unwrap());
    assert_eq!(s.pool_status("p").await.unwrap().failed, 1);
    let live = [InstanceStatus::Ready, InstanceStatus::Failed];
    assert!(s
        .mark_destroyed("f", &live, EndReason::Cleared, 20)
        .await
        .unwrap());
    assert!(
        !s.mark_destroyed("f", &live, EndReason::Deleted, 21)
            .await
            .unwrap(),
        "ended once"
    );
    let got = s.get_instance("f").await.unwrap().unwrap();
    assert_eq!(got.status, InstanceStatus::Failed);
    assert_eq!(
        (
            got.failed_step.as_deref(),
            got.failure_reason.as_deref(),
            got.destroyed_at,
            got.end_reason
        ),
        (
            Some("warm_pool_setup"),
            Some("exit 1"),
            Some(20),
            Some(EndReason::Cleared)
        )
    );
    assert_eq!(s.pool_status("p").await.unwrap().failed, 0);
    assert_eq!(s.pool_counts("p").await.unwrap().failed, 0);
    assert!(s
        .instances_in(&[InstanceStatus::Failed])
        .await
        .unwrap()
        .is_empty());
    let full = s.pool_snapshot(None).await.unwrap();
    assert!(full.instances.iter().all(|i| i.id != "f"), "not live");
    let listed = s
        .list_instances("p", Some(InstanceStatus::Failed), 50)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "still listed as failed");
    // Any other instance is destroyed, with its reason.
    let r = instance("r", "p", InstanceKind::Pool, InstanceStatus::Ready);
    s.insert_instance(&r).await.unwrap();
    assert!(s
        .mark_destroyed("r", &live, EndReason::Replaced, 30)
        .await
        .unwrap());
    let got = s.get_instance("r").await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.end_reason),
        (InstanceStatus::Destroyed, Some(EndReason::Replaced))
    );
}

async fn pool_status_counts_pool_instances_only(s: Arc<dyn Store>) {
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

async fn claims_are_never_handed_out_twice(s: Arc<dyn Store>) {
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
        .claim_ready("p", Some("task-1"), None, 300)
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
            s.claim_ready("p", None, None, 400).await.unwrap()
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
    assert!(s.claim_ready("p", None, None, 500).await.unwrap().is_none());
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

async fn pool_state_changes_are_atomic(s: Arc<dyn Store>) {
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

async fn pool_snapshot_reports_changes_since_a_revision(s: Arc<dyn Store>) {
    // SQLite's revision is an exact counter. PostgreSQL's is a cursor that may repeat rows it
    // already reported (never with a change missed): it answers exactly only when no other
    // transaction runs, and this suite shares its server with parallel tests. Both meet the
    // contract checked here; SQLite's exactness is checked too.
    let exact = s.engine() == "sqlite";
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

    // Nothing changed: nothing new comes back (at most rows already seen, unchanged), and the
    // revision does not go back.
    let same = s.pool_snapshot(Some(rev)).await.unwrap();
    for i in &same.instances {
        assert!(full.instances.contains(i), "{} came back changed", i.id);
    }
    assert!(same.rev >= rev);
    if exact {
        assert!(same.instances.is_empty());
        assert_eq!(same.rev, rev);
    }

    // One goes ready, one is destroyed: both come back, destroyed ones included so a reader can
    // forget them.
    assert!(s.mark_ready("a", 20, &no_commits(), false).await.unwrap());
    assert!(s
        .mark_destroyed("b", &[st], EndReason::ScaledDown, 21)
        .await
        .unwrap());
    let changed = s.pool_snapshot(Some(rev)).await.unwrap();
    let mut got: Vec<_> = changed
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.status))
        .collect();
    got.sort_by_key(|g| g.0);
    got.dedup();
    let expected = [
        ("a", InstanceStatus::Ready),
        ("b", InstanceStatus::Destroyed),
    ];
    for e in expected {
        assert!(got.contains(&e), "{e:?} missing from {got:?}");
    }
    for g in &got {
        assert!(
            expected.contains(g) || *g == ("c", st),
            "{g:?} did not change"
        );
    }
    assert!(changed.rev >= same.rev);
    if exact {
        assert_eq!(got, expected);
        assert!(changed.rev > rev);
    }
    // And after that revision, nothing new again: whatever comes back is as it is now.
    let after = s.pool_snapshot(Some(changed.rev)).await.unwrap();
    for i in &after.instances {
        assert_eq!(Some(i), s.get_instance(&i.id).await.unwrap().as_ref());
    }
    assert!(after.rev >= changed.rev);
    if exact {
        assert!(after.instances.is_empty());
    }
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

/// A reader that keeps rows between passes, as the reconciler does, while writers change rows
/// concurrently: whatever it holds at the end is exactly what a full read holds.
async fn pool_snapshot_never_misses_a_change(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for k in 0..30i64 {
                let id = format!("w{w}-{k}");
                s.insert_instance(&instance(
                    &id,
                    "p",
                    InstanceKind::Pool,
                    InstanceStatus::Provisioning,
                ))
                .await
                .unwrap();
                match k % 3 {
                    0 => assert!(s.mark_ready(&id, k, &no_commits(), false).await.unwrap()),
                    1 => assert!(s.mark_failed(&id, None, "x", k).await.unwrap()),
                    _ => {}
                }
                if k % 5 == 0 {
                    use InstanceStatus::*;
                    let from = [Provisioning, Ready, Failed, Claimed];
                    assert!(s
                        .mark_destroyed(&id, &from, EndReason::Deleted, k)
                        .await
                        .unwrap());
                }
                if k % 7 == 0 {
                    s.claim_ready("p", None, None, k).await.unwrap();
                }
            }
        }));
    }
    fn apply(snap: PoolSnapshot, rev: &mut i64, kept: &mut HashMap<String, InstanceRow>) {
        assert!(snap.rev >= *rev, "the revision went back");
        *rev = snap.rev;
        for i in snap.instances {
            if i.is_ended() {
                kept.remove(&i.id);
            } else {
                kept.insert(i.id.clone(), i);
            }
        }
    }
    let mut kept = HashMap::new();
    let mut rev = 0;
    apply(s.pool_snapshot(None).await.unwrap(), &mut rev, &mut kept);
    let mut passes = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        apply(
            s.pool_snapshot(Some(rev)).await.unwrap(),
            &mut rev,
            &mut kept,
        );
        passes += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    apply(
        s.pool_snapshot(Some(rev)).await.unwrap(),
        &mut rev,
        &mut kept,
    );
    assert!(passes > 0, "the reader never ran alongside the writers");
    let full: HashMap<String, InstanceRow> = s
        .pool_snapshot(None)
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    assert_eq!(
        full.len(),
        4 * 30 - 4 * 6,
        "every instance but the destroyed ones"
    );
    assert!(kept == full, "the kept rows differ from a full read");
}

async fn goldens_are_recorded_and_forgotten(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    let g = GoldenRow {
        id: "wpi_golden".into(),
        project_id: "p".into(),
        config_hash: "h1".into(),
        backend: "qemu".into(),
        commits: Default::default(),
        ready: true,
        created_at: 5,
        node: None,
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
    assert!(s.claim_ready("p", None, None, 1).await.unwrap().is_none());
}

async fn tokens_are_found_by_hash(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    // Listed by creation time, then id, compared byte by byte.
    for (id, hash, at) in [("tb", "h1", 5), ("tA", "h2", 5), ("ta", "h3", 1)] {
        s.insert_token(&TokenRow {
            id: id.into(),
            project_id: "p".into(),
            hash: hash.into(),
            created_at: at,
            last_used_at: None,
        })
        .await
        .unwrap();
    }
    let dup = TokenRow {
        id: "other".into(),
        project_id: "p".into(),
        hash: "h1".into(),
        created_at: 9,
        last_used_at: None,
    };
    assert!(matches!(
        s.insert_token(&dup).await,
        Err(StoreError::Duplicate(_))
    ));
    let ids: Vec<_> = s
        .list_tokens("p")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["ta", "tA", "tb"]);
    s.touch_token("tb", 42).await.unwrap();
    let t = s.token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!((t.id.as_str(), t.last_used_at), ("tb", Some(42)));
    assert!(s.token_by_hash("nope").await.unwrap().is_none());
    assert!(
        !s.delete_token("q", "tb").await.unwrap(),
        "another project's"
    );
    assert!(s.delete_token("p", "tb").await.unwrap());
    assert!(s.token_by_hash("h1").await.unwrap().is_none());
    // Env var names sort byte by byte too, and the default branch of a remote is remembered.
    s.upsert_env_vars(
        "p",
        &[("b".into(), "1".into()), ("B".into(), "2".into())],
        1,
    )
    .await
    .unwrap();
    let names: Vec<_> = s
        .list_env_vars("p")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["B", "b"]);
    assert_eq!(s.get_default_branch("/srv/api").await.unwrap(), None);
    s.set_default_branch("/srv/api", "main", 1).await.unwrap();
    s.set_default_branch("/srv/api", "trunk", 2).await.unwrap();
    assert_eq!(
        s.get_default_branch("/srv/api").await.unwrap().as_deref(),
        Some("trunk")
    );
    assert_eq!(s.pool_times("p").await.unwrap(), (None, None));
}

async fn concurrent_writes_commit_together_and_fail_alone(s: Arc<dyn Store>) {
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

fn pool_config(project: &str, target: u32) -> PoolConfigRow {
    PoolConfigRow {
        project_id: project.into(),
        enabled: true,
        target_size: target,
        max_age_minutes: 60,
        branch: None,
        setup_commands: None,
        generation: 0,
        created_at: 1,
        updated_at: 1,
    }
}

/// A pool instance of `project` with config `hash` on `node`, in `status`.
fn on_node(id: &str, project: &str, hash: &str, node: &str, status: InstanceStatus) -> InstanceRow {
    let mut i = instance(id, project, InstanceKind::Pool, status);
    i.config_hash = Some(hash.into());
    i.node = Some(node.into());
    i
}

fn node(name: &str, node_id: &str, capacity: u32, lease_until: i64) -> NodeRow {
    NodeRow {
        name: name.into(),
        node_id: node_id.into(),
        url: format!("http://{name}:8080"),
        capacity,
        lease_until,
        started_at: 1,
        renewed_at: 1,
    }
}

/// Ids of the project's instances in `status`, sorted.
async fn ids_in(s: &Arc<dyn Store>, project: &str, status: InstanceStatus) -> Vec<String> {
    let mut ids: Vec<_> = s
        .list_instances(project, Some(status), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    ids
}

async fn pool_boots_are_placed_within_target_and_capacity(s: Arc<dyn Store>) {
    use InstanceStatus::*;
    for p in ["p", "q"] {
        s.insert_project(&project(p)).await.unwrap();
        assert!(s.put_pool_config(&pool_config(p, 5), None).await.unwrap());
    }
    // Node `c` is registered (PostgreSQL then locks its row), `a` and `b` are not.
    assert!(s
        .register_node(&node("c", "id-c", 4, 1000), 0)
        .await
        .unwrap());
    let mut stale = on_node("p-stale", "p", "h1", "b", Ready);
    stale.stale_at = Some(5);
    let mut cold = on_node("p-cold", "p", "h1", "b", Provisioning);
    cold.kind = InstanceKind::Cold;
    for i in [
        // Count toward p's target, on any node: provisioning, and ready and fresh.
        on_node("p-prov", "p", "h1", "b", Provisioning),
        on_node("p-ready", "p", "h1", "a", Ready),
        // Do not: stale, another config, failed, claimed, not a pool instance.
        stale,
        on_node("p-old", "p", "h0", "b", Provisioning),
        on_node("p-failed", "p", "h1", "a", Failed),
        on_node("p-claimed", "p", "h1", "a", Claimed),
        cold,
    ] {
        s.insert_instance(&i).await.unwrap();
    }
    assert_eq!(s.place_pool_boots(&[], 5, 100).await.unwrap(), 0);

    // Room for 3 of the 5 (target 5, 2 counted): the first 3, in order.
    let boots: Vec<_> = (1..=5)
        .map(|n| on_node(&format!("p-new{n}"), "p", "h1", "a", Provisioning))
        .collect();
    assert_eq!(s.place_pool_boots(&boots, 5, 100).await.unwrap(), 3);
    let got = s
        .list_instances("p", Some(Provisioning), 100)
        .await
        .unwrap();
    let new: Vec<_> = got
        .iter()
        .rev()
        .map(|i| i.id.as_str())
        .filter(|id| id.starts_with("p-new"))
        .collect();
    assert_eq!(new, ["p-new1", "p-new2", "p-new3"], "the first k, in order");
    let more: Vec<_> = (6..=7)
        .map(|n| on_node(&format!("p-new{n}"), "p", "h1", "b", Provisioning))
        .collect();
    assert_eq!(
        s.place_pool_boots(&more, 5, 100).await.unwrap(),
        0,
        "the pool is full, on every node"
    );
    // A new config counts on its own.
    let h2: Vec<_> = (1..=3)
        .map(|n| on_node(&format!("p-h2-{n}"), "p", "h2", "b", Provisioning))
        .collect();
    assert_eq!(s.place_pool_boots(&h2, 2, 100).await.unwrap(), 2);

    // A node's capacity counts its live instances of every project and kind (node `a` has
    // p-ready, p-claimed and p-new1..3: 5 live; p-failed does not count).
    let on_a = |id: &str| on_node(id, "q", "hq", "a", Provisioning);
    assert_eq!(
        s.place_pool_boots(&[on_a("q-a1"), on_a("q-a2")], 5, 6)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.place_pool_boots(&[on_a("q-a3")], 5, 6).await.unwrap(), 0);
    // Node `c` (capacity 4) already hosts a claimed cold VM of p and a ready one of q.
    let mut c_cold = on_node("p-c-cold", "p", "h1", "c", Claimed);
    c_cold.kind = InstanceKind::Cold;
    s.insert_instance(&c_cold).await.unwrap();
    s.insert_instance(&on_node("q-c-ready", "q", "hq", "c", Ready))
        .await
        .unwrap();
    let on_c = |id: &str| on_node(id, "q", "hq", "c", Provisioning);
    let batch = [on_c("q-c1"), on_c("q-c2"), on_c("q-c3")];
    assert_eq!(s.place_pool_boots(&batch, 5, 4).await.unwrap(), 2);
    assert_eq!(s.place_pool_boots(&[on_c("q-c4")], 5, 4).await.unwrap(), 0);
    // A VM gone frees its place.
    assert!(s.mark_failed("q-c1", None, "boom", 50).await.unwrap());
    assert_eq!(s.place_pool_boots(&[on_c("q-c5")], 5, 4).await.unwrap(), 1);
    assert_eq!(
        ids_in(&s, "q", Provisioning).await,
        ["q-a1", "q-c2", "q-c5"]
    );
    assert_eq!(
        ids_in(&s, "p", Provisioning).await,
        ["p-cold", "p-h2-1", "p-h2-2", "p-new1", "p-new2", "p-new3", "p-old", "p-prov"]
    );
    // A claimed instance no longer counts toward the target: claiming p-ready leaves p-prov and
    // p-new1..3, room for one.
    assert!(s.claim_ready("p", None, None, 60).await.unwrap().is_some());
    let again: Vec<_> = (8..=10)
        .map(|n| on_node(&format!("p-new{n}"), "p", "h1", "b", Provisioning))
        .collect();
    assert_eq!(s.place_pool_boots(&again, 5, 100).await.unwrap(), 1);
}

async fn nodes_hold_their_names_by_lease(s: Arc<dyn Store>) {
    assert!(s.list_nodes().await.unwrap().is_empty());
    let a = node("n1", "id-a", 8, 100);
    assert!(s.register_node(&a, 0).await.unwrap());
    // Another process cannot take a live name.
    let b = node("n1", "id-b", 3, 1000);
    assert!(!s.register_node(&b, 50).await.unwrap());
    assert_eq!(s.list_nodes().await.unwrap(), vec![a.clone()]);
    // The same node (restarted on its data dir) takes its row over at once, settings and all.
    let mut a2 = node("n1", "id-a", 16, 120);
    a2.url = "http://elsewhere:1".into();
    a2.started_at = 60;
    a2.renewed_at = 60;
    assert!(s.register_node(&a2, 60).await.unwrap());
    assert_eq!(s.list_nodes().await.unwrap(), vec![a2.clone()]);
    // Renewals: only by the holder.
    assert!(!s.renew_node("n1", "id-b", 500, 90).await.unwrap());
    assert!(!s.renew_node("nope", "id-a", 500, 90).await.unwrap());
    assert!(s.renew_node("n1", "id-a", 200, 90).await.unwrap());
    let got = &s.list_nodes().await.unwrap()[0];
    assert_eq!(
        (
            got.node_id.as_str(),
            got.lease_until,
            got.renewed_at,
            got.started_at
        ),
        ("id-a", 200, 90, 60)
    );
    // Until the lease has passed (at its last millisecond it still holds), then anyone can.
    assert!(!s.register_node(&b, 199).await.unwrap());
    assert!(!s.register_node(&b, 200).await.unwrap());
    assert!(s.register_node(&b, 201).await.unwrap());
    assert_eq!(s.list_nodes().await.unwrap(), vec![b.clone()]);
    // The old holder has lost it: it can neither renew nor take it back while b's lease lasts.
    assert!(!s.renew_node("n1", "id-a", 900, 202).await.unwrap());
    assert!(!s.register_node(&a, 202).await.unwrap());
    assert_eq!(s.list_nodes().await.unwrap(), vec![b]);
    // Listed by name, byte by byte.
    for name in ["b-node", "a-node", "B"] {
        assert!(s.register_node(&node(name, name, 1, 10), 0).await.unwrap());
    }
    let names: Vec<_> = s
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["B", "a-node", "b-node", "n1"]);
}

async fn lost_nodes_lose_their_live_instances(s: Arc<dyn Store>) {
    use InstanceStatus::*;
    s.insert_project(&project("p")).await.unwrap();
    assert!(s
        .register_node(&node("n1", "id-1", 10, 100), 0)
        .await
        .unwrap());
    assert!(s
        .register_node(&node("n2", "id-2", 10, 1000), 0)
        .await
        .unwrap());
    let mut ready = on_node("n1-ready", "p", "h", "n1", Ready);
    ready.finished_at = Some(20);
    let mut failed = on_node("n1-failed", "p", "h", "n1", Failed);
    (failed.failure_reason, failed.finished_at) = (Some("earlier".into()), Some(5));
    let mut cold = on_node("n1-cold", "p", "h", "n1", Claimed);
    cold.kind = InstanceKind::Cold;
    let mut before_nodes = instance("old", "p", InstanceKind::Pool, Ready);
    before_nodes.node = None;
    for i in [
        on_node("n1-prov", "p", "h", "n1", Provisioning),
        ready,
        on_node("n1-claimed", "p", "h", "n1", Claimed),
        cold,
        failed,
        on_node("n1-gone", "p", "h", "n1", Destroyed),
        on_node("n2-prov", "p", "h", "n2", Provisioning),
        on_node("n2-ready", "p", "h", "n2", Ready),
        before_nodes,
    ] {
        s.insert_instance(&i).await.unwrap();
    }
    let snap = s.pool_snapshot(None).await.unwrap();
    // While the lease holds (through its last millisecond), nothing happens.
    assert!(s
        .fail_instances_of_lost_node("n1", 50, "lost")
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .fail_instances_of_lost_node("n1", 100, "lost")
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .fail_instances_of_lost_node("n2", 500, "lost")
        .await
        .unwrap()
        .is_empty());
    // Not a node at all: nothing either.
    assert!(s
        .fail_instances_of_lost_node("n3", 5000, "lost")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(ids_in(&s, "p", Failed).await, ["n1-failed"]);

    let mut failed = s
        .fail_instances_of_lost_node("n1", 101, "node n1 lost")
        .await
        .unwrap();
    failed.sort();
    assert_eq!(failed, ["n1-claimed", "n1-cold", "n1-prov", "n1-ready"]);
    for id in &failed {
        let i = s.get_instance(id).await.unwrap().unwrap();
        assert_eq!(i.status, Failed, "{id}");
        assert_eq!(i.failure_reason.as_deref(), Some("node n1 lost"), "{id}");
        let finished = if id == "n1-ready" { 20 } else { 101 };
        assert_eq!(i.finished_at, Some(finished), "{id}: a finish time is kept");
    }
    // Others untouched: n1's failed and destroyed ones, n2's, and those of no node.
    let earlier = s.get_instance("n1-failed").await.unwrap().unwrap();
    assert_eq!(
        (earlier.failure_reason.as_deref(), earlier.finished_at),
        (Some("earlier"), Some(5))
    );
    assert_eq!(
        s.get_instance("n1-gone").await.unwrap().unwrap().status,
        Destroyed
    );
    assert_eq!(ids_in(&s, "p", Provisioning).await, ["n2-prov"]);
    assert_eq!(ids_in(&s, "p", Ready).await, ["n2-ready", "old"]);
    // The reconciler hears of them.
    let changed = s.pool_snapshot(Some(snap.rev)).await.unwrap();
    for id in &failed {
        assert!(
            changed
                .instances
                .iter()
                .any(|i| &i.id == id && i.status == Failed),
            "{id} missing from the changes"
        );
    }
    // Once done, again is nothing.
    assert!(s
        .fail_instances_of_lost_node("n1", 102, "again")
        .await
        .unwrap()
        .is_empty());
}

async fn nodes_round_trip_on_instances_and_goldens(s: Arc<dyn Store>) {
    s.insert_project(&project("p")).await.unwrap();
    let mut with = instance(
        "with",
        "p",
        InstanceKind::Pool,
        InstanceStatus::Provisioning,
    );
    with.node = Some("node-ü 1".into());
    with.config_hash = Some("h".into());
    let without = instance(
        "without",
        "p",
        InstanceKind::Pool,
        InstanceStatus::Provisioning,
    );
    s.insert_instance(&with).await.unwrap();
    s.insert_instance(&without).await.unwrap();
    let mut placed = with.clone();
    placed.id = "placed".into();
    placed.vm_id = "vm-placed".into();
    assert!(s.put_pool_config(&pool_config("p", 5), None).await.unwrap());
    assert_eq!(
        s.place_pool_boots(std::slice::from_ref(&placed), 5, 5)
            .await
            .unwrap(),
        1
    );
    for (id, node) in [
        ("with", Some("node-ü 1")),
        ("without", None),
        ("placed", Some("node-ü 1")),
    ] {
        let got = s.get_instance(id).await.unwrap().unwrap();
        assert_eq!(got.node.as_deref(), node, "{id}");
    }
    let listed = s.list_instances("p", None, 10).await.unwrap();
    assert!(listed.iter().any(|i| i.id == "with" && i.node == with.node));
    let snap = s.pool_snapshot(None).await.unwrap();
    assert!(snap
        .instances
        .iter()
        .any(|i| i.id == "placed" && i.node == with.node));
    assert!(s
        .mark_ready("with", 20, &no_commits(), false)
        .await
        .unwrap());
    let claimed = s.claim_ready("p", None, None, 30).await.unwrap().unwrap();
    assert_eq!(
        (claimed.id.as_str(), claimed.node),
        ("with", with.node.clone())
    );

    let mut g = GoldenRow {
        id: "g1".into(),
        project_id: "p".into(),
        config_hash: "h".into(),
        backend: "qemu".into(),
        commits: Default::default(),
        ready: true,
        created_at: 5,
        node: Some("node-a".into()),
    };
    s.insert_golden(&g).await.unwrap();
    g.id = "g2".into();
    g.created_at = 6;
    g.node = None;
    s.insert_golden(&g).await.unwrap();
    assert_eq!(
        s.get_golden("g1").await.unwrap().unwrap().node.as_deref(),
        Some("node-a")
    );
    assert_eq!(s.get_golden("g2").await.unwrap().unwrap().node, None);
    let nodes: Vec<_> = s
        .ready_goldens()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.node)
        .collect();
    assert_eq!(nodes, [Some("node-a".to_string()), None]);
    let nodes: Vec<_> = s
        .pool_snapshot(None)
        .await
        .unwrap()
        .goldens
        .into_iter()
        .map(|g| g.node)
        .collect();
    assert_eq!(nodes, [Some("node-a".to_string()), None]);
}

async fn instances_are_found_by_any_set_of_statuses(s: Arc<dyn Store>) {
    use InstanceStatus::*;
    s.insert_project(&project("p")).await.unwrap();
    let all = [Provisioning, Ready, Claimed, Failed, Destroyed];
    for (n, status) in all.into_iter().enumerate() {
        s.insert_instance(&instance(&format!("i{n}"), "p", InstanceKind::Pool, status))
            .await
            .unwrap();
    }
    let ids = |got: Vec<InstanceRow>| got.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert!(s.instances_in(&[]).await.unwrap().is_empty());
    assert_eq!(ids(s.instances_in(&[Claimed]).await.unwrap()), ["i2"]);
    assert_eq!(
        ids(s.instances_in(&[Failed, Ready, Failed]).await.unwrap()),
        ["i1", "i3"],
        "oldest first, each once"
    );
    assert_eq!(ids(s.instances_in(&all).await.unwrap()).len(), 5);
    // Destroying is conditional on any set of statuses too.
    assert!(!s
        .mark_destroyed("i1", &[], EndReason::Deleted, 5)
        .await
        .unwrap());
    assert!(!s
        .mark_destroyed("i1", &[Provisioning, Claimed], EndReason::Deleted, 5)
        .await
        .unwrap());
    assert!(s
        .mark_destroyed("i1", &all, EndReason::Deleted, 5)
        .await
        .unwrap());
    assert_eq!(
        ids(s.instances_in(&[Ready]).await.unwrap()),
        Vec::<String>::new()
    );
}

async fn settings_keep_the_first_value(s: Arc<dyn Store>) {
    assert_eq!(s.setting("key", "a").await.unwrap(), "a");
    assert_eq!(s.setting("key", "b").await.unwrap(), "a");
    assert_eq!(s.setting("other", "c").await.unwrap(), "c");
    // Servers starting together on a new database: every one gets the first one's value.
    let racing: Vec<_> = (0..8)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move { s.setting("race", &format!("v{n}")).await.unwrap() })
        })
        .collect();
    let mut got = Vec::new();
    for r in racing {
        got.push(r.await.unwrap());
    }
    assert!(got.iter().all(|v| *v == got[0]), "{got:?}");
    assert_eq!(s.setting("race", "late").await.unwrap(), got[0]);
}

// Databases of older servers ------------------------------------------------------------------

/// Rows as a server from before nodes wrote them (SQLite's migrations 1 to 5, PostgreSQL's 1),
/// in SQL both engines take.
const OLD_ROWS: &str = r#"
    INSERT INTO projects (id, name, description, task_code, repos_json, devbox_json, generation,
        created_at, updated_at)
    VALUES ('p', 'old', NULL, 'P', '[]', '{"setup_commands":[],"repos":{}}', 3, 1, 2);
    INSERT INTO repo_remotes (url, default_branch, updated_at) VALUES ('/srv/api', 'main', 1);
    INSERT INTO env_vars (project_id, name, value, version, updated_at)
    VALUES ('p', 'X', 'x', 2, 5);
    INSERT INTO warm_pools (project_id, enabled, target_size, max_age_minutes, branch,
        setup_commands_json, generation, created_at, updated_at)
    VALUES ('p', TRUE, 2, 60, NULL, NULL, 1, 1, 1);
    INSERT INTO instances (id, vm_id, project_id, kind, status, total_steps, backend, created_at,
        provisioned_at, finished_at)
    VALUES ('i', 'vm-i', 'p', 'pool', 'ready', 8, 'sim', 10, 20, 20);
    INSERT INTO steps (instance_id, seq, name, status, duration_ms, finished_at)
    VALUES ('i', 0, 'clone', 'success', 5, 15);
    INSERT INTO pool_state (project_id, consecutive_failures, identical_failures, last_error,
        updated_at)
    VALUES ('p', 2, 1, 'boom', 3);
    INSERT INTO goldens (id, project_id, config_hash, backend, commits_json, status, created_at)
    VALUES ('g', 'p', 'h', 'sim', '{}', 'ready', 4);
    INSERT INTO tokens (id, project_id, hash, created_at) VALUES ('t', 'p', 'hash', 6);
"#;

/// Reads back `OLD_ROWS` once the store has migrated them, and uses what the later migrations
/// added.
async fn check_old_rows(s: &dyn Store) {
    let p = s.get_project("p").await.unwrap().unwrap();
    assert_eq!(
        (p.name.as_str(), p.generation, p.description),
        ("old", 3, None)
    );
    // Projects from before resources got the defaults.
    let defaults = warmpool_types::api::Resources {
        cpus: 2,
        memory_mb: 2048,
        pids_max: 4096,
        disk_mb: 10240,
    };
    assert_eq!(p.resources, defaults);
    // Default branches kept by URL were forgotten.
    assert_eq!(s.get_default_branch("/srv/api").await.unwrap(), None);
    let vars = s.list_env_vars("p").await.unwrap();
    assert_eq!((vars[0].name.as_str(), vars[0].version), ("X", 2));
    let pool = s.get_pool_config("p").await.unwrap().unwrap();
    assert!(pool.enabled);
    assert_eq!((pool.target_size, pool.setup_commands), (2, None));
    let i = s.get_instance("i").await.unwrap().unwrap();
    assert_eq!(
        (i.status, i.node, i.commits),
        (InstanceStatus::Ready, None, no_commits())
    );
    assert!(s.list_steps("i").await.unwrap()[0].success);
    let st = s.get_pool_state("p").await.unwrap();
    assert_eq!(
        (st.consecutive_failures, st.last_error.as_deref()),
        (2, Some("boom"))
    );
    let g = s.get_golden("g").await.unwrap().unwrap();
    assert!(g.ready && g.node.is_none());
    assert_eq!(s.token_by_hash("hash").await.unwrap().unwrap().id, "t");
    assert_eq!(s.pool_snapshot(None).await.unwrap().instances.len(), 1);
    // What came after works on the old rows.
    assert!(s
        .register_node(&node("n", "id-n", 4, 100), 0)
        .await
        .unwrap());
    let claimed = s
        .claim_ready("p", Some("task"), None, 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (claimed.id.as_str(), claimed.status),
        ("i", InstanceStatus::Claimed)
    );
}

/// A database of a server from before nodes opens: SQLite's migrations 6 to 10 apply once, and
/// every row reads back.
#[tokio::test]
async fn sqlite_database_of_an_older_server_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wp.db");
    let versions = |c: &rusqlite::Connection| -> Vec<i64> {
        let mut st = c
            .prepare("SELECT version FROM schema_migrations ORDER BY version")
            .unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    };
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        let old = [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_pool.sql"),
            include_str!("../migrations/sqlite/0003_goldens.sql"),
            include_str!("../migrations/sqlite/0004_tokens.sql"),
            include_str!("../migrations/sqlite/0005_instance_rev.sql"),
        ];
        for (version, sql) in (1..).zip(old) {
            c.execute_batch(sql).unwrap();
            c.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [version])
                .unwrap();
        }
        c.execute_batch(OLD_ROWS).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    check_old_rows(&s).await;
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(versions(&c), Vec::from_iter(1..=11));
}

// SQLite only ---------------------------------------------------------------------------------

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

// PostgreSQL only -----------------------------------------------------------------------------

/// A plain client of the database at `url`, to look under the store.
async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The migrations a PostgreSQL database has recorded.
async fn pg_versions(client: &tokio_postgres::Client) -> Vec<i64> {
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Nodes starting together: each opens the same new database at once; the schema is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn postgres_migrations_run_once_across_concurrent_opens() {
    let url = fresh_pg_database().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    stores[0].insert_project(&project("p")).await.unwrap();
    assert!(stores[3].get_project("p").await.unwrap().is_some());
    drop(stores);
    let s = PgStore::connect(&url).await.unwrap();
    assert!(s.get_project("p").await.unwrap().is_some());
    s.ping().await.unwrap();
    assert_eq!(s.engine(), "postgres");

    let client = pg_client(&url).await;
    assert_eq!(pg_versions(&client).await, [1, 2, 3, 4, 9, 10, 11]);
}

/// A database of a server from before nodes opens: PostgreSQL's migrations 2 to 4, 9 and 10 apply
/// once,
/// and every row reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn postgres_database_of_an_older_server_is_migrated() {
    let url = fresh_pg_database().await;
    let client = pg_client(&url).await;
    client
        .batch_execute(concat!(
            "CREATE TABLE schema_migrations (
                version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0);",
            include_str!("../migrations/postgres/0001_init.sql")
        ))
        .await
        .unwrap();
    client.batch_execute(OLD_ROWS).await.unwrap();
    let s = PgStore::connect(&url).await.unwrap();
    check_old_rows(&s).await;
    assert_eq!(pg_versions(&client).await, [1, 2, 3, 4, 9, 10, 11]);
}

/// Two nodes on one database: claims from both never take the same instance, and pool state
/// changes from both all count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn postgres_nodes_never_claim_the_same_instance() {
    let url = fresh_pg_database().await;
    let nodes: Vec<Arc<dyn Store>> = vec![
        Arc::new(PgStore::connect(&url).await.unwrap()),
        Arc::new(PgStore::connect(&url).await.unwrap()),
    ];
    nodes[0].insert_project(&project("p")).await.unwrap();
    for n in 0..40 {
        let id = format!("r{n}");
        let mut i = instance(&id, "p", InstanceKind::Pool, InstanceStatus::Provisioning);
        i.created_at = n;
        nodes[n as usize % 2].insert_instance(&i).await.unwrap();
        assert!(nodes[0]
            .mark_ready(&id, 100 + n, &no_commits(), false)
            .await
            .unwrap());
    }
    let mut tasks = Vec::new();
    for n in 0..60 {
        let s = nodes[n % 2].clone();
        tasks.push(tokio::spawn(async move {
            let got = s
                .claim_ready("p", None, None, 500)
                .await
                .unwrap()
                .map(|i| i.id);
            s.update_pool_state(
                "p",
                1,
                Box::new(|st: &mut PoolState| st.consecutive_failures += 1),
            )
            .await
            .unwrap();
            got
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    got.sort();
    let before = got.len();
    got.dedup();
    assert_eq!(before, got.len(), "an instance was claimed twice");
    // A claim may find every remaining instance locked by other claims and answer none, but
    // those claims take them: every instance is claimed.
    assert_eq!(got.len(), 40);
    assert!(nodes[1]
        .claim_ready("p", None, None, 600)
        .await
        .unwrap()
        .is_none());
    assert_eq!(nodes[1].pool_counts("p").await.unwrap().claimed, 40);
    assert_eq!(
        nodes[0]
            .get_pool_state("p")
            .await
            .unwrap()
            .consecutive_failures,
        60
    );
}

/// Three nodes on one database placing boots at once, for several pools on two hosts: no pool ever
/// goes over its target, no host over its capacity (which spans pools), and topping up afterwards
/// fills the hosts exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn postgres_concurrent_placement_never_overshoots() {
    const POOLS: usize = 4;
    const TARGET: u32 = 6;
    const CAPACITY: u32 = 10;
    const HOSTS: [&str; 2] = ["h0", "h1"];
    let url = fresh_pg_database().await;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..3 {
        // Few connections each, so that calls also queue for connections.
        stores.push(Arc::new(PgStore::connect_with(&url, 4).await.unwrap()));
    }
    for p in 0..POOLS {
        let id = format!("p{p}");
        stores[0].insert_project(&project(&id)).await.unwrap();
        assert!(stores[0]
            .put_pool_config(&pool_config(&id, TARGET), None)
            .await
            .unwrap());
    }
    // Placements for different pools on one host queue on the host's row.
    assert!(stores[0]
        .register_node(&node("h0", "id-h0", CAPACITY, i64::MAX), 0)
        .await
        .unwrap());
    assert!(stores[0]
        .register_node(&node("h1", "id-h1", CAPACITY, i64::MAX), 0)
        .await
        .unwrap());
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let batch = |p: usize, host: &str, n: usize| -> Vec<InstanceRow> {
        (0..n)
            .map(|_| {
                let id = format!("b{}", NEXT.fetch_add(1, Ordering::Relaxed));
                on_node(
                    &id,
                    &format!("p{p}"),
                    "h",
                    host,
                    InstanceStatus::Provisioning,
                )
            })
            .collect()
    };
    let check = |s: Arc<dyn Store>| async move {
        let live = s
            .instances_in(&[InstanceStatus::Provisioning])
            .await
            .unwrap();
        for p in 0..POOLS {
            let n = live
                .iter()
                .filter(|i| i.project_id == format!("p{p}"))
                .count();
            assert!(n <= TARGET as usize, "pool p{p} holds {n}");
        }
        let mut per_host = Vec::new();
        for h in HOSTS {
            let n = live.iter().filter(|i| i.node.as_deref() == Some(h)).count();
            assert!(n <= CAPACITY as usize, "host {h} holds {n}");
            per_host.push(n);
        }
        per_host
    };
    let mut tasks = Vec::new();
    for t in 0..120usize {
        let s = stores[t % 3].clone();
        let rows = batch(t % POOLS, HOSTS[(t / 3) % 2], 1 + t % 4);
        tasks.push(tokio::spawn(async move {
            s.place_pool_boots(&rows, TARGET, CAPACITY).await.unwrap()
        }));
        // Checks while placements run.
        if t % 30 == 0 {
            check(stores[(t + 1) % 3].clone()).await;
        }
    }
    let mut placed = 0;
    for t in tasks {
        placed += t.await.unwrap();
    }
    let per_host = check(stores[0].clone()).await;
    assert_eq!(
        placed,
        per_host.iter().sum::<usize>(),
        "placements said what they placed"
    );
    assert!(placed > 0);
    // Topping up, one call at a time: 4 pools want 24, the hosts hold 20 — both fill exactly.
    for p in 0..POOLS {
        for h in HOSTS {
            stores[p % 3]
                .place_pool_boots(&batch(p, h, 10), TARGET, CAPACITY)
                .await
                .unwrap();
        }
    }
    assert_eq!(check(stores[1].clone()).await, [10, 10]);
}

/// The database going down answers Unavailable (the server's 503), never Internal, and the store
/// works again once it is back, with what was acknowledged before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier postgres: starts a PostgreSQL 15 cluster of its own; run every tier with `cargo test -- --include-ignored`"]
async fn postgres_outage_is_unavailable_then_recovers() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(PgCluster::new)
            .await
            .unwrap()
            .expect("this test needs PostgreSQL"),
    );
    let s = PgStore::connect(&cluster.url()).await.unwrap();
    s.insert_project(&project("p")).await.unwrap();
    s.insert_instance(&instance(
        "i",
        "p",
        InstanceKind::Pool,
        InstanceStatus::Provisioning,
    ))
    .await
    .unwrap();
    assert!(s.mark_ready("i", 1, &no_commits(), false).await.unwrap());

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediately())
        .await
        .unwrap()
        .unwrap();
    let unavailable = |r: Result<()>, what: &str| match r {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("{what} while the database is down: {other:?}"),
    };
    unavailable(s.ping().await, "ping");
    unavailable(s.claim_ready("p", None, None, 2).await.map(drop), "claim");
    unavailable(s.insert_project(&project("q")).await, "insert");
    unavailable(s.pool_snapshot(None).await.map(drop), "snapshot");
    unavailable(
        PgStore::connect(&cluster.url()).await.map(drop),
        "a new store",
    );

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = s.ping().await {
        assert!(
            matches!(e, StoreError::Unavailable(_)),
            "unexpected error while the database restarts: {e}"
        );
        assert!(Instant::now() < deadline, "the store did not recover: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.get_project("p").await.unwrap().is_some());
    let claimed = s
        .claim_ready("p", Some("t"), None, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, "i");
}
