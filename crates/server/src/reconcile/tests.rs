//! Table tests of the planner: each case is a pool and its instances, and the actions expected.

use super::*;

const NOW: i64 = 10_000_000;
const HASH: &str = "current";

/// An instance of project `p` for tests (also those of the executor's side, `app::autoscale`).
pub(crate) fn inst(id: &str, kind: InstanceKind, status: InstanceStatus) -> InstanceRow {
    InstanceRow {
        seq: 0,
        id: id.into(),
        vm_id: format!("vm-{id}"),
        project_id: "p".into(),
        kind,
        status,
        total_steps: 5,
        failed_step: None,
        failure_reason: None,
        backend: "sim".into(),
        agent_url: None,
        agent_token: None,
        config_hash: Some(HASH.into()),
        task_id: None,
        created_at: NOW - 1000,
        provisioned_at: (status == InstanceStatus::Ready).then_some(NOW - 500),
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

fn ready(id: &str) -> InstanceRow {
    inst(id, InstanceKind::Pool, InstanceStatus::Ready)
}
fn booting(id: &str) -> InstanceRow {
    inst(id, InstanceKind::Pool, InstanceStatus::Provisioning)
}
fn with(mut i: InstanceRow, f: impl FnOnce(&mut InstanceRow)) -> InstanceRow {
    f(&mut i);
    i
}

/// A pool case: its view's settings, its instances, the capacity left, the expected actions.
struct Case {
    name: &'static str,
    target: usize,
    enabled: bool,
    state: PoolState,
    goldens: Goldens,
    moved: &'static [&'static str],
    instances: Vec<InstanceRow>,
    /// Boots this node may start (its limit, with none of its own running).
    capacity: usize,
    /// Boots of its own running beyond the pool's (boots for claims, other pools).
    busy: usize,
    expect: Vec<Action>,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            target: 2,
            enabled: true,
            state: PoolState::default(),
            goldens: Goldens::Unsupported,
            moved: &[],
            instances: Vec::new(),
            capacity: 8,
            busy: 0,
            expect: Vec::new(),
        }
    }
}

fn stale(id: &str) -> Action {
    Action::MarkStale { id: id.into() }
}
fn gone(id: &str, from: &'static [InstanceStatus], why: Why) -> Action {
    Action::Destroy {
        id: id.into(),
        from,
        why,
    }
}

fn run(case: &Case) -> Vec<Action> {
    let moved = |i: &InstanceRow| case.moved.contains(&i.id.as_str());
    let view = PoolView {
        project_id: "p",
        enabled: case.enabled,
        target: case.target,
        max_age_ms: 60 * 60_000,
        hash: HASH,
        state: &case.state,
        goldens: case.goldens,
        moved: &moved,
    };
    let refs: Vec<&InstanceRow> = case.instances.iter().collect();
    let own = case
        .instances
        .iter()
        .filter(|i| i.status == InstanceStatus::Provisioning)
        .count();
    plan(
        &view,
        &refs,
        NOW,
        Capacity {
            max_parallel: case.capacity,
            provisioning_here: own + case.busy,
        },
    )
}

#[test]
fn pools_are_planned_by_their_rules() {
    let failed_once = PoolState {
        consecutive_failures: 1,
        ..Default::default()
    };
    let cases = vec![
        Case {
            name: "an empty pool boots its target",
            expect: vec![Action::Boot { n: 2 }],
            ..Default::default()
        },
        Case {
            name: "a full pool does nothing",
            instances: vec![ready("a"), ready("b")],
            ..Default::default()
        },
        Case {
            name: "boots in flight count toward the target",
            instances: vec![ready("a"), booting("b")],
            ..Default::default()
        },
        Case {
            name: "claimed, failed and test instances are not the pool's",
            instances: vec![
                inst("c", InstanceKind::Pool, InstanceStatus::Claimed),
                inst("f", InstanceKind::Pool, InstanceStatus::Failed),
                inst("t", InstanceKind::Test, InstanceStatus::Ready),
                inst("k", InstanceKind::Cold, InstanceStatus::Provisioning),
            ],
            expect: vec![Action::Boot { n: 2 }],
            ..Default::default()
        },
        Case {
            name: "a disabled pool ends its ready and booting instances, not claimed ones",
            enabled: false,
            instances: vec![
                ready("a"),
                booting("b"),
                inst("c", InstanceKind::Pool, InstanceStatus::Claimed),
            ],
            expect: vec![
                gone("a", LIVE, Why::PoolDisabled),
                gone("b", LIVE, Why::PoolDisabled),
            ],
            ..Default::default()
        },
        Case {
            name: "scale down ends the oldest fresh instances",
            target: 1,
            instances: vec![
                with(ready("new"), |i| i.provisioned_at = Some(NOW - 10)),
                with(ready("old"), |i| i.provisioned_at = Some(NOW - 900)),
            ],
            expect: vec![gone("old", READY, Why::ScaledDown)],
            ..Default::default()
        },
        Case {
            name: "a changed configuration makes ready instances stale; they stay until replaced",
            instances: vec![
                with(ready("a"), |i| i.config_hash = Some("old".into())),
                ready("b"),
            ],
            expect: vec![stale("a"), Action::Boot { n: 1 }],
            ..Default::default()
        },
        Case {
            name: "a stale instance goes once a fresh one can take its place",
            target: 1,
            instances: vec![with(ready("a"), |i| i.stale_at = Some(NOW - 1)), ready("b")],
            expect: vec![gone("a", READY, Why::Replaced)],
            ..Default::default()
        },
        Case {
            name: "too old is stale",
            instances: vec![
                with(ready("a"), |i| i.provisioned_at = Some(NOW - 60 * 60_000)),
                ready("b"),
            ],
            expect: vec![stale("a"), Action::Boot { n: 1 }],
            ..Default::default()
        },
        Case {
            name: "a branch that moved makes its instance stale",
            moved: &["b"],
            instances: vec![ready("a"), ready("b")],
            expect: vec![stale("b"), Action::Boot { n: 1 }],
            ..Default::default()
        },
        Case {
            name: "boots of an outdated configuration stop and free their capacity",
            capacity: 1,
            instances: vec![with(booting("a"), |i| i.config_hash = Some("old".into()))],
            expect: vec![
                gone("a", PROVISIONING, Why::Outdated),
                Action::Boot { n: 1 },
            ],
            ..Default::default()
        },
        Case {
            name: "a node over its limit boots nothing, even after freeing one",
            capacity: 4,
            busy: 5,
            instances: vec![with(booting("a"), |i| i.config_hash = Some("old".into()))],
            expect: vec![gone("a", PROVISIONING, Why::Outdated)],
            ..Default::default()
        },
        Case {
            name: "backing off: no boot before the next attempt",
            state: PoolState {
                consecutive_failures: 2,
                next_attempt_at: Some(NOW + 1),
                ..Default::default()
            },
            ..Default::default()
        },
        Case {
            name: "after a failure, one probing boot at a time",
            state: failed_once.clone(),
            expect: vec![Action::Boot { n: 1 }],
            ..Default::default()
        },
        Case {
            name: "after a failure, none while a probe runs",
            state: failed_once,
            instances: vec![booting("a")],
            ..Default::default()
        },
        Case {
            name: "degraded on this configuration: no boot",
            state: PoolState {
                degraded_since: Some(NOW - 5),
                last_failed_config: Some(HASH.into()),
                ..Default::default()
            },
            ..Default::default()
        },
        Case {
            name: "degraded on another configuration: reset and boot",
            state: PoolState {
                consecutive_failures: 3,
                degraded_since: Some(NOW - 5),
                last_failed_config: Some("old".into()),
                next_attempt_at: Some(NOW + 1000),
                ..Default::default()
            },
            expect: vec![Action::ResetDegraded, Action::Boot { n: 2 }],
            ..Default::default()
        },
        Case {
            name: "no more boots than the node's capacity",
            target: 5,
            capacity: 3,
            expect: vec![Action::Boot { n: 3 }],
            ..Default::default()
        },
        Case {
            name: "other boots of the node count against its capacity",
            target: 5,
            capacity: 3,
            busy: 2,
            expect: vec![Action::Boot { n: 1 }],
            ..Default::default()
        },
        Case {
            name: "a full node boots nothing",
            capacity: 0,
            ..Default::default()
        },
        Case {
            name: "with goldens, the golden comes first",
            goldens: Goldens::Missing,
            expect: vec![Action::BuildGolden],
            ..Default::default()
        },
        Case {
            name: "one golden build at a time",
            goldens: Goldens::Missing,
            instances: vec![inst(
                "g",
                InstanceKind::Golden,
                InstanceStatus::Provisioning,
            )],
            ..Default::default()
        },
        Case {
            name: "a golden build of an old configuration stops",
            goldens: Goldens::Missing,
            instances: vec![with(
                inst("g", InstanceKind::Golden, InstanceStatus::Provisioning),
                |i| i.config_hash = Some("old".into()),
            )],
            expect: vec![gone("g", PROVISIONING, Why::Outdated), Action::BuildGolden],
            ..Default::default()
        },
        Case {
            name: "with a golden ready, clones boot",
            goldens: Goldens::Ready,
            instances: vec![ready("a")],
            expect: vec![Action::Boot { n: 1 }],
            ..Default::default()
        },
    ];
    for case in &cases {
        assert_eq!(run(case), case.expect, "{}", case.name);
    }
}

#[test]
fn planning_twice_asks_for_nothing_new() {
    // After the first plan's actions are done, the same pool needs nothing more.
    let case = Case {
        instances: vec![ready("a"), booting("b")],
        ..Default::default()
    };
    assert!(run(&case).is_empty());
}

#[test]
fn test_and_failed_instances_expire() {
    let rows = [
        with(inst("t1", InstanceKind::Test, InstanceStatus::Ready), |i| {
            i.finished_at = Some(NOW - 100)
        }),
        with(
            inst("t2", InstanceKind::Test, InstanceStatus::Failed),
            |i| i.finished_at = Some(NOW - 10),
        ),
        with(
            inst("t3", InstanceKind::Test, InstanceStatus::Provisioning),
            |i| i.created_at = 0,
        ),
        with(
            inst("f1", InstanceKind::Pool, InstanceStatus::Failed),
            |i| i.finished_at = Some(NOW - 1000),
        ),
        with(
            inst("f2", InstanceKind::Pool, InstanceStatus::Failed),
            |i| i.finished_at = Some(NOW - 10),
        ),
        with(
            inst("c", InstanceKind::Pool, InstanceStatus::Claimed),
            |i| i.finished_at = Some(0),
        ),
    ];
    let refs: Vec<&InstanceRow> = rows.iter().collect();
    assert_eq!(
        expiry(&refs, NOW, 50, 500),
        vec![
            gone("t1", ENDED, Why::TestExpired),
            gone("f1", ENDED, Why::FailedExpired)
        ]
    );
}

#[test]
fn goldens_go_when_unwanted_and_unused() {
    let golden = |id: &str, project: &str, hash: &str| GoldenRow {
        id: id.into(),
        project_id: project.into(),
        config_hash: hash.into(),
        backend: "qemu".into(),
        commits: Default::default(),
        ready: true,
        created_at: 0,
        node: None,
    };
    let goldens = [
        golden("old", "p", "h1"),
        golden("used", "p", "h0"),
        golden("dup", "p", "h2"),
        golden("cur", "p", "h2"),
        golden("off", "q", "h9"),
    ];
    let current: HashMap<String, String> = [("p".to_string(), "h2".to_string())].into();
    let clone = with(ready("x"), |i| i.golden_id = Some("used".into()));
    let ended = with(inst("y", InstanceKind::Pool, InstanceStatus::Failed), |i| {
        i.golden_id = Some("old".into())
    });
    let ids: Vec<&str> = unwanted_goldens(&goldens, &current, &[&clone, &ended])
        .iter()
        .map(|g| g.id.as_str())
        .collect();
    assert_eq!(ids, ["old", "dup", "off"]);
}

#[test]
fn orphans_are_vms_no_live_instance_of_this_node_owns() {
    let vms: Vec<String> = ["vm-a", "vm-b", "vm-c", "vm-d", "vm-e", "vm-x"]
        .map(String::from)
        .to_vec();
    let live = [
        ready("a"),
        // A boot still running here owns its VM; one whose boot stopped does not.
        booting("b"),
        booting("c"),
        inst("d", InstanceKind::Pool, InstanceStatus::Claimed),
        with(ready("e"), |i| i.node = Some("other".into())),
    ];
    let mine = |i: &InstanceRow| i.node.is_none();
    let running = |id: &str| id == "b";
    assert_eq!(
        orphans(&vms, &live, &mine, &running),
        ["vm-c", "vm-e", "vm-x"]
    );
}

#[test]
fn backoff_doubles_and_caps() {
    use std::time::Duration;
    assert_eq!(backoff(1, 1.0), Duration::from_secs(5));
    assert_eq!(backoff(2, 1.0), Duration::from_secs(10));
    assert_eq!(backoff(4, 1.0), Duration::from_secs(40));
    assert_eq!(backoff(30, 1.0), Duration::from_secs(600));
    assert!(backoff(1, 1.2) > backoff(1, 0.8));
}

#[test]
fn identical_failures_degrade_the_pool_and_others_do_not() {
    let mut s = PoolState::default();
    let fail = |s: &mut PoolState, step: &str, config: &str, now: i64| {
        record_failure(s, step.into(), config.into(), "e".into(), now, 1.0)
    };
    fail(&mut s, "clone_repo", "h1", 0);
    assert_eq!((s.consecutive_failures, s.identical_failures), (1, 1));
    assert_eq!(s.next_attempt_at, Some(5_000));
    // Another step: identical failures start over, backoff keeps growing.
    fail(&mut s, "warm_pool_setup", "h1", 10_000);
    fail(&mut s, "warm_pool_setup", "h1", 20_000);
    assert_eq!((s.consecutive_failures, s.identical_failures), (3, 2));
    assert_eq!(s.next_attempt_at, Some(20_000 + 20_000));
    assert_eq!(s.degraded_since, None);
    fail(&mut s, "warm_pool_setup", "h1", 30_000);
    assert_eq!(s.degraded_since, Some(30_000));
    // Degraded since the first time it happened, not the last.
    fail(&mut s, "warm_pool_setup", "h1", 40_000);
    assert_eq!(s.degraded_since, Some(30_000));
    // The same step of another configuration is another failure.
    fail(&mut s, "warm_pool_setup", "h2", 50_000);
    assert_eq!(s.identical_failures, 1);
}
