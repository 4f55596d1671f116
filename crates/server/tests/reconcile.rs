//! The reconciler's logic, driven directly: an in-process app on the `sim` backend and a real
//! SQLite store, a clock the test moves, and `App::reconcile` called by hand — no sleeping through
//! timers. (End-to-end pool behaviour on real sandboxes is in `pool.rs`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{seen, wait_for, SIM_BOOT};

use serde_json::json;
use warmpool::app::clock::OffsetClock;
use warmpool::app::reconcile::ReconcileReport;
use warmpool::app::{App, AppConfig, AppParts, Caller};
use warmpool::git::mirror::Mirrors;
use warmpool::git::serve::GitServer;
use warmpool_backend::sim::{SimBackend, SimOptions};
use warmpool_store::{SqliteStore, Store};
use warmpool_types::api::{ClaimBody, CreateProjectBody, UpdateWarmPoolBody};
use warmpool_types::state::{EndReason, InstanceKind, InstanceStatus};

struct Harness {
    app: Arc<App>,
    clock: Arc<OffsetClock>,
    pid: String,
    _dir: tempfile::TempDir,
}

const MINUTE: i64 = 60_000;

async fn harness(create_delay: Duration, repos: serde_json::Value) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("wp.db")).unwrap());
    let mirrors = Arc::new(
        Mirrors::new(
            dir.path().join("mirrors"),
            Duration::from_secs(60),
            Default::default(),
        )
        .unwrap(),
    );
    let git = GitServer::start(mirrors.clone()).await.unwrap();
    let clock = Arc::new(OffsetClock::default());
    let app = App::new(AppParts {
        admin_token: "test-admin-token-0123456789".into(),
        store,
        backend: Arc::new(SimBackend::new(SimOptions {
            create_delay,
            panic_command: true,
            ..SimOptions::default()
        })),
        cfg: AppConfig::default(),
        mirrors,
        git,
        clock: clock.clone(),
        sealer: Arc::new(warmpool::sealed::Sealer::from_key(&[1u8; 32])),
    });
    let body: CreateProjectBody =
        serde_json::from_value(json!({"name": "p", "repos": repos})).unwrap();
    let pid = app.create_project(&Caller::Admin, body).await.unwrap().id;
    Harness {
        app,
        clock,
        pid,
        _dir: dir,
    }
}

impl Harness {
    async fn pool(&self, body: serde_json::Value) {
        let b: UpdateWarmPoolBody = serde_json::from_value(body).unwrap();
        self.app
            .update_warm_pool(&Caller::Admin, &self.pid, b)
            .await
            .unwrap();
    }

    async fn reconcile(&self) -> ReconcileReport {
        self.app.reconcile().await.unwrap()
    }

    /// Waits until no instance of the project is provisioning (its boots run at once, on the
    /// sim backend).
    async fn settle(&self) {
        wait_for("the boots to finish", SIM_BOOT, async || {
            let busy: Vec<String> = self
                .app
                .store
                .instances_in(&[InstanceStatus::Provisioning])
                .await
                .unwrap()
                .into_iter()
                .filter(|i| i.project_id == self.pid)
                .map(|i| i.id)
                .collect();
            seen(busy.is_empty(), format!("provisioning {busy:?}"))
        })
        .await;
    }

    async fn pool_instances(&self, status: InstanceStatus) -> Vec<warmpool_store::InstanceRow> {
        self.app
            .store
            .list_instances(&self.pid, Some(status), 50)
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.kind == InstanceKind::Pool)
            .collect()
    }

    async fn vms(&self) -> usize {
        self.app.backend.list().await.unwrap().len()
    }
}

fn report(launched: usize, destroyed: usize, marked_stale: usize) -> ReconcileReport {
    ReconcileReport {
        launched,
        destroyed,
        marked_stale,
        ..Default::default()
    }
}

#[tokio::test]
async fn fills_scales_and_is_idempotent() {
    let h = harness(Duration::ZERO, json!([])).await;
    h.pool(json!({"targetSize": 3})).await;
    assert_eq!(h.reconcile().await, report(3, 0, 0));
    // Boots in flight count: a second pass does not boot more.
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    h.settle().await;
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    assert_eq!(h.pool_instances(InstanceStatus::Ready).await.len(), 3);
    assert_eq!(h.vms().await, 3);

    h.pool(json!({"targetSize": 1})).await;
    assert_eq!(h.reconcile().await, report(0, 2, 0));
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    assert_eq!(h.pool_instances(InstanceStatus::Ready).await.len(), 1);
    assert_eq!(h.vms().await, 1);

    // A claim takes the ready one; a replacement boots; the claimed VM is never touched.
    let (done, r) = h
        .app
        .claim(&Caller::Admin, &h.pid, ClaimBody::default())
        .await
        .unwrap();
    assert!(done && r.warm);
    assert_eq!(h.reconcile().await, report(1, 0, 0));
    h.settle().await;
    h.pool(json!({"enabled": false})).await;
    assert_eq!(h.reconcile().await, report(0, 1, 0));
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    assert_eq!(h.vms().await, 1, "only the claimed VM is left");
    let claimed = h
        .app
        .store
        .get_instance(&r.instance.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.status, InstanceStatus::Claimed);
}

#[tokio::test]
async fn old_instances_are_replaced_before_they_are_destroyed() {
    let h = harness(Duration::from_millis(300), json!([])).await;
    h.pool(json!({"targetSize": 2, "maxAgeMinutes": 30})).await;
    h.reconcile().await;
    h.settle().await;
    let old: Vec<String> = h
        .pool_instances(InstanceStatus::Ready)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(old.len(), 2);
    h.clock.advance(29 * MINUTE);
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    h.clock.advance(2 * MINUTE);
    // Both are too old: replacements boot, the old ones stay (and stay claimable) meanwhile.
    assert_eq!(h.reconcile().await, report(2, 0, 2));
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    let stats = h.app.pool_stats(&Caller::Admin, &h.pid).await.unwrap();
    assert_eq!((stats.ready, stats.stale, stats.provisioning), (2, 2, 2));
    let (done, r) = h
        .app
        .claim(&Caller::Admin, &h.pid, ClaimBody::default())
        .await
        .unwrap();
    assert!(
        done && r.warm && old.contains(&r.instance.id),
        "a stale VM is claimable until replaced"
    );
    h.settle().await;
    // The replacements are ready: the stale one left is destroyed; the claimed one is not touched.
    assert_eq!(h.reconcile().await, report(0, 1, 0));
    let ready: Vec<String> = h
        .pool_instances(InstanceStatus::Ready)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ready.len(), 2);
    assert!(ready.iter().all(|id| !old.contains(id)));
    assert_eq!(h.vms().await, 3);
}

#[tokio::test]
async fn a_config_change_makes_instances_stale() {
    let h = harness(Duration::ZERO, json!([])).await;
    h.pool(json!({"targetSize": 2, "setupCommands": [{"name": "v1", "command": "echo v1"}]}))
        .await;
    h.reconcile().await;
    h.settle().await;
    assert_eq!(h.reconcile().await, report(0, 0, 0));
    // Environment variable versions are part of the configuration (their values are not read).
    h.app
        .put_env_vars(
            &Caller::Admin,
            &h.pid,
            serde_json::from_value(json!({"variables": [{"name": "A", "value": "1"}]})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(h.reconcile().await, report(2, 0, 2));
    h.settle().await;
    assert_eq!(h.reconcile().await, report(0, 2, 0));
    // Changing the target size alone is not a configuration change.
    h.pool(json!({"targetSize": 3})).await;
    assert_eq!(h.reconcile().await, report(1, 0, 0));
    h.settle().await;
    assert_eq!(h.reconcile().await, report(0, 0, 0));
}

#[tokio::test]
async fn failures_back_off_then_degrade_until_the_config_changes() {
    let h = harness(Duration::ZERO, json!([])).await;
    h.pool(json!({"targetSize": 2, "setupCommands": [{"name": "broken", "command": "exit 1"}]}))
        .await;
    let mut boots = 0;
    // Simulate an hour: a pass every 5 s of (simulated) time.
    for _ in 0..720 {
        boots += h.reconcile().await.launched;
        h.settle().await;
        h.clock.advance(5_000);
    }
    assert_eq!(
        boots, 3,
        "2 at first, then one probe after the backoff; then degraded"
    );
    let stats = h.app.pool_stats(&Caller::Admin, &h.pid).await.unwrap();
    let degraded = stats.degraded.expect("the pool reports degraded");
    assert_eq!(degraded.failed_step.as_deref(), Some("warm_pool_setup"));
    assert_eq!(
        degraded.error.as_deref(),
        Some("command `broken` exited with status 1")
    );
    assert_eq!(stats.failed, 3);

    // A fixed configuration recovers the pool.
    h.pool(json!({"setupCommands": [{"name": "fixed", "command": "true"}]}))
        .await;
    assert_eq!(h.reconcile().await.launched, 2);
    h.settle().await;
    let stats = h.app.pool_stats(&Caller::Admin, &h.pid).await.unwrap();
    assert_eq!(
        (
            stats.ready,
            stats.degraded.clone(),
            stats.next_attempt_at.clone()
        ),
        (2, None, None)
    );
}

/// A panic in a step (here the sim backend's, on purpose) fails the boot at that step with a
/// clear reason; the pool backs off and replaces it like any failure, and the server goes on.
#[tokio::test]
async fn a_panicking_step_is_a_failure_like_any_other() {
    let h = harness(Duration::ZERO, json!([])).await;
    h.pool(json!({"targetSize": 1, "setupCommands": [{"name": "boom", "command": "panic"}]}))
        .await;
    assert_eq!(h.reconcile().await.launched, 1);
    h.settle().await;
    let failed = h.pool_instances(InstanceStatus::Failed).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].failed_step.as_deref(), Some("warm_pool_setup"));
    let reason = failed[0].failure_reason.clone().unwrap();
    assert!(
        reason.starts_with("internal error: the step stopped unexpectedly"),
        "{reason}"
    );
    assert_eq!(h.vms().await, 0, "the failed boot's VM is destroyed");
    let stats = h.app.pool_stats(&Caller::Admin, &h.pid).await.unwrap();
    assert!(stats.next_attempt_at.is_some(), "the pool backs off");
    // Once the backoff is over it is replaced, and a working setup fills the pool.
    h.pool(json!({"setupCommands": [{"name": "fine", "command": "true"}]}))
        .await;
    h.clock.advance(15 * 60_000);
    assert_eq!(h.reconcile().await.launched, 1);
    h.settle().await;
    assert_eq!(h.pool_instances(InstanceStatus::Ready).await.len(), 1);
}

#[tokio::test]
async fn a_successful_test_boot_lifts_the_degraded_stop() {
    // The repository is missing at first: clone_repo fails the same way every time.
    let parent = tempfile::tempdir().unwrap();
    let repo = parent.path().join("repo");
    let h = harness(
        Duration::ZERO,
        json!([{"repoFullName": "acme/repo", "url": repo.display().to_string()}]),
    )
    .await;
    h.pool(json!({"targetSize": 1})).await;
    for _ in 0..3 {
        h.reconcile().await;
        h.settle().await;
        h.clock.advance(11 * MINUTE);
    }
    let stats = h.app.pool_stats(&Caller::Admin, &h.pid).await.unwrap();
    assert_eq!(
        stats
            .degraded
            .as_ref()
            .and_then(|d| d.failed_step.as_deref()),
        Some("clone_repo")
    );
    assert_eq!(h.reconcile().await.launched, 0);

    // The repository appears (same configuration); a test boot proves it works.
    std::fs::create_dir_all(&repo).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["commit", "-q", "--allow-empty", "-m", "x"][..],
    ] {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@e")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@e")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    h.app
        .test_boot(&Caller::Admin, &h.pid, Default::default())
        .await
        .unwrap();
    h.settle().await;
    assert!(h
        .app
        .pool_stats(&Caller::Admin, &h.pid)
        .await
        .unwrap()
        .degraded
        .is_none());
    assert_eq!(h.reconcile().await.launched, 1);
    h.settle().await;
    assert_eq!(h.pool_instances(InstanceStatus::Ready).await.len(), 1);
}

#[tokio::test]
async fn expired_test_instances_and_old_failures_are_cleaned_up() {
    let h = harness(Duration::ZERO, json!([])).await;
    let ok = h
        .app
        .test_boot(&Caller::Admin, &h.pid, Default::default())
        .await
        .unwrap();
    h.settle().await;
    h.clock.advance(14 * MINUTE);
    assert_eq!(h.reconcile().await.expired, 0);
    h.clock.advance(2 * MINUTE);
    assert_eq!(h.reconcile().await.expired, 1);
    let i = h.app.store.get_instance(&ok.id).await.unwrap().unwrap();
    assert_eq!(i.status, InstanceStatus::Destroyed);
    assert_eq!(i.end_reason, Some(EndReason::TestExpired));
    assert_eq!(h.vms().await, 0);
    // Failed pool instances count as failed for 24 hours, then no longer count; their records
    // stay failed and say why they were ended.
    h.pool(json!({"targetSize": 1, "setupCommands": [{"name": "x", "command": "false"}]}))
        .await;
    h.reconcile().await;
    h.settle().await;
    assert_eq!(h.app.store.pool_status(&h.pid).await.unwrap().failed, 1);
    h.pool(json!({"enabled": false})).await;
    h.clock.advance(25 * 60 * MINUTE);
    assert_eq!(h.reconcile().await.expired, 1);
    assert_eq!(h.app.store.pool_status(&h.pid).await.unwrap().failed, 0);
    let failed = h.pool_instances(InstanceStatus::Failed).await;
    assert_eq!(failed.len(), 1, "still listed");
    assert_eq!(failed[0].end_reason, Some(EndReason::Retention));
    assert!(failed[0].failed_step.is_some());
    assert_eq!(h.reconcile().await.expired, 0, "ended once");
}
