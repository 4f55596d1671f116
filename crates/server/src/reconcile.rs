//! The reconciler's planner: from a pool's configuration and state and its instances as they
//! are, what should happen — pure, no I/O, no clock of its own — as a list of [`Action`]s that
//! the app's executor applies (`app/reconcile.rs`). Every rule of the pool lives here:
//! - a ready instance is *stale* when the configuration it was built from changed, a repo's branch
//!   moved past its commit, or it is older than `maxAgeMinutes`;
//! - stale instances stay claimable until fresh replacements are ready (replace-before-destroy);
//! - boots of an outdated configuration are stopped (they would only come up stale);
//! - failures back off (the pool state's `next_attempt_at`), and after repeated identical
//!   failures the pool is *degraded* and stops booting until its configuration changes or a test
//!   boot succeeds; after a failure the pool probes with one boot at a time;
//! - a node boots at most its parallel-boot capacity at once;
//! - with a backend that has goldens, a pool first builds its golden, then boots clones of it;
//! - test instances end after their TTL, failed ones after the retention;
//! - claimed instances are never touched.

pub mod autoscale;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use warmpool_store::{GoldenRow, InstanceRow, PoolState};
use warmpool_types::state::{EndReason, InstanceKind, InstanceStatus};

/// Failures before a pool with the same failing step and configuration stops trying.
pub const DEGRADED_AFTER: u32 = 3;
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Failed pool instances are kept (and counted) this long, then hidden.
pub const FAILED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The delay before the next attempt after `failures` consecutive failures: 5 s doubling up to
/// 10 min, times `jitter` (the caller draws it from 0.8–1.2) so pools that failed together do
/// not retry together.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    let capped = base.min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64((capped * jitter).min(BACKOFF_MAX.as_secs_f64() * 1.2))
}

/// A pool boot failed at `step` of configuration `config` at `now`: count it, back off, and
/// degrade the pool after [`DEGRADED_AFTER`] identical failures (same step, same configuration).
pub fn record_failure(
    s: &mut PoolState,
    step: String,
    config: String,
    error: String,
    now: i64,
    jitter: f64,
) {
    let same = s.last_failed_step.as_deref() == Some(step.as_str())
        && s.last_failed_config.as_deref() == Some(config.as_str());
    s.consecutive_failures += 1;
    s.identical_failures = if same { s.identical_failures + 1 } else { 1 };
    s.last_failed_step = Some(step);
    s.last_failed_config = Some(config);
    s.last_error = Some(error);
    s.next_attempt_at = Some(now + backoff(s.consecutive_failures, jitter).as_millis() as i64);
    if s.identical_failures >= DEGRADED_AFTER && s.degraded_since.is_none() {
        s.degraded_since = Some(now);
    }
}

/// What the planner knows of one pool.
pub struct PoolView<'a> {
    pub project_id: &'a str,
    /// The pool is enabled (and this server allows pools).
    pub enabled: bool,
    pub target: usize,
    pub max_age_ms: i64,
    /// The digest of the configuration a fresh instance is built from now.
    pub hash: &'a str,
    pub state: &'a PoolState,
    pub goldens: Goldens,
    /// Whether one of a ready instance's repos has a branch head, seen after the instance was
    /// set up, past the commit it has (asked only of instances otherwise fresh).
    pub moved: &'a (dyn Fn(&InstanceRow) -> bool + Sync),
}

/// Whether the pool's VMs are clones of a golden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goldens {
    /// The backend has no goldens: every VM is set up from scratch.
    Unsupported,
    /// None of this configuration yet: one must be built first.
    Missing,
    /// One of this configuration is ready to clone.
    Ready,
}

/// Why an instance is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its pool was disabled.
    PoolDisabled,
    /// A boot (or golden build) of a configuration that is no longer the pool's.
    Outdated,
    /// A stale instance whose fresh replacement is ready.
    Replaced,
    /// More fresh instances than the target.
    ScaledDown,
    /// A test instance past its TTL.
    TestExpired,
    /// A failed instance past the retention.
    FailedExpired,
}

impl Why {
    /// What the instance's record says it was ended for.
    pub fn end_reason(self) -> EndReason {
        match self {
            Why::PoolDisabled => EndReason::PoolDisabled,
            Why::Outdated => EndReason::Outdated,
            Why::Replaced => EndReason::Replaced,
            Why::ScaledDown => EndReason::ScaledDown,
            Why::TestExpired => EndReason::TestExpired,
            Why::FailedExpired => EndReason::Retention,
        }
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record that a ready instance is stale (it stays claimable until replaced).
    MarkStale { id: String },
    /// End an instance if it is still in one of `from`.
    Destroy {
        id: String,
        from: &'static [InstanceStatus],
        why: Why,
    },
    /// The configuration changed since the pool degraded: clear its failure state.
    ResetDegraded,
    /// Set one VM up fully and save it as the pool's golden.
    BuildGolden,
    /// Boot this many pool instances.
    Boot { n: usize },
}

const READY: &[InstanceStatus] = &[InstanceStatus::Ready];
const PROVISIONING: &[InstanceStatus] = &[InstanceStatus::Provisioning];
const LIVE: &[InstanceStatus] = &[InstanceStatus::Ready, InstanceStatus::Provisioning];
const ENDED: &[InstanceStatus] = &[InstanceStatus::Ready, InstanceStatus::Failed];

fn destroy(inst: &InstanceRow, from: &'static [InstanceStatus], why: Why) -> Action {
    Action::Destroy {
        id: inst.id.clone(),
        from,
        why,
    }
}

/// Whether a ready instance no longer matches its pool.
pub fn is_stale(view: &PoolView<'_>, inst: &InstanceRow, now: i64) -> bool {
    inst.config_hash.as_deref() != Some(view.hash)
        || inst
            .provisioned_at
            .is_some_and(|t| t + view.max_age_ms <= now)
        || (view.moved)(inst)
}

/// How many boots a node may run at once, and how many of its own run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub max_parallel: usize,
    pub provisioning_here: usize,
}

/// What to do with one pool. `instances` are the pool's project's live instances (any kind).
pub fn plan(
    view: &PoolView<'_>,
    instances: &[&InstanceRow],
    now: i64,
    capacity: Capacity,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let pool = || {
        instances
            .iter()
            .copied()
            .filter(|i| i.kind == InstanceKind::Pool)
    };
    if !view.enabled {
        for inst in pool().filter(|i| LIVE.contains(&i.status)) {
            actions.push(destroy(inst, LIVE, Why::PoolDisabled));
        }
        return actions;
    }
    let target = view.target;

    // Which ready instances are fresh, which stale.
    let mut fresh = Vec::new();
    let mut stale = Vec::new();
    for inst in pool().filter(|i| i.status == InstanceStatus::Ready) {
        if inst.stale_at.is_some() {
            stale.push(inst);
        } else if is_stale(view, inst, now) {
            actions.push(Action::MarkStale {
                id: inst.id.clone(),
            });
            stale.push(inst);
        } else {
            fresh.push(inst);
        }
    }
    // A boot of an outdated configuration would only come up stale: stop it now.
    let mut booting = 0;
    let mut building_golden = false;
    let mut freed = 0;
    for inst in instances
        .iter()
        .filter(|i| matches!(i.kind, InstanceKind::Pool | InstanceKind::Golden))
        .filter(|i| i.status == InstanceStatus::Provisioning)
    {
        if inst.config_hash.as_deref() != Some(view.hash) {
            actions.push(destroy(inst, PROVISIONING, Why::Outdated));
            freed += 1;
        } else if inst.kind == InstanceKind::Golden {
            building_golden = true;
        } else {
            booting += 1;
        }
    }

    // Boot what is missing, unless backing off or degraded.
    let mut state = view.state.clone();
    if state.degraded_since.is_some() && state.last_failed_config.as_deref() != Some(view.hash) {
        actions.push(Action::ResetDegraded);
        state = PoolState::default();
    }
    let waiting = state.next_attempt_at.is_some_and(|t| now < t);
    let missing = target.saturating_sub(fresh.len() + booting);
    if missing > 0 && state.degraded_since.is_none() && !waiting {
        // After a failure, probe with one boot at a time instead of a burst.
        let n = if state.consecutive_failures > 0 {
            usize::from(booting == 0)
        } else {
            missing
        }
        .min(
            capacity
                .max_parallel
                .saturating_sub(capacity.provisioning_here.saturating_sub(freed)),
        );
        match view.goldens {
            Goldens::Missing if !building_golden && n > 0 => actions.push(Action::BuildGolden),
            Goldens::Missing => {}
            Goldens::Unsupported | Goldens::Ready if n > 0 => actions.push(Action::Boot { n }),
            Goldens::Unsupported | Goldens::Ready => {}
        }
    }

    // Replace before destroy: stale instances go once fresh ones can take their place.
    stale.sort_by_key(|i| std::cmp::Reverse(i.provisioned_at));
    let keep = target.saturating_sub(fresh.len());
    for inst in stale.iter().skip(keep) {
        actions.push(destroy(inst, READY, Why::Replaced));
    }
    // Scale down: the oldest fresh instances beyond the target.
    if fresh.len() > target {
        fresh.sort_by_key(|i| i.provisioned_at);
        for inst in &fresh[..fresh.len() - target] {
            actions.push(destroy(inst, READY, Why::ScaledDown));
        }
    }
    actions
}

/// Test instances past their TTL and failed instances past the retention (times in ms).
pub fn expiry(
    instances: &[&InstanceRow],
    now: i64,
    test_ttl_ms: i64,
    failed_retention_ms: i64,
) -> Vec<Action> {
    instances
        .iter()
        .filter_map(|inst| {
            let finished = inst.finished_at.unwrap_or(inst.created_at);
            let why = match (inst.kind, inst.status) {
                (InstanceKind::Test, InstanceStatus::Ready | InstanceStatus::Failed)
                    if finished + test_ttl_ms <= now =>
                {
                    Why::TestExpired
                }
                (InstanceKind::Test, _) => return None,
                (_, InstanceStatus::Failed) if finished + failed_retention_ms <= now => {
                    Why::FailedExpired
                }
                _ => return None,
            };
            Some(destroy(inst, ENDED, why))
        })
        .collect()
}

/// The goldens to delete: those no pool wants any more (its configuration moved on, or it was
/// disabled: `current` holds each enabled pool's configuration) and no live VM uses (clones read
/// their golden's files for as long as they live). Of several goldens of one configuration, the
/// newest (last) is kept.
pub fn unwanted_goldens<'g>(
    goldens: &'g [GoldenRow],
    current: &HashMap<String, String>,
    instances: &[&InstanceRow],
) -> Vec<&'g GoldenRow> {
    let in_use: HashSet<&str> = instances
        .iter()
        .filter(|i| {
            matches!(
                i.status,
                InstanceStatus::Provisioning | InstanceStatus::Ready | InstanceStatus::Claimed
            )
        })
        .filter_map(|i| i.golden_id.as_deref())
        .collect();
    goldens
        .iter()
        .enumerate()
        .filter(|(idx, g)| {
            let wanted = current.get(&g.project_id) == Some(&g.config_hash);
            let newest = !goldens[idx + 1..]
                .iter()
                .any(|h| h.project_id == g.project_id && h.config_hash == g.config_hash);
            !((wanted && newest) || in_use.contains(g.id.as_str()))
        })
        .map(|(_, g)| g)
        .collect()
}

/// The VMs of `vms` (this node's backend's) that no live instance of this node owns: left by a
/// crash, by a failed destroy, or ended from another node. A provisioning instance owns its VM
/// only while its boot runs here (`running_here`); one whose boot stopped owns nothing.
pub fn orphans<'v>(
    vms: &'v [String],
    live: &[InstanceRow],
    mine: &dyn Fn(&InstanceRow) -> bool,
    running_here: &dyn Fn(&str) -> bool,
) -> Vec<&'v str> {
    let owned: HashSet<&str> = live
        .iter()
        .filter(|i| {
            matches!(
                i.status,
                InstanceStatus::Provisioning | InstanceStatus::Ready | InstanceStatus::Claimed
            )
        })
        .filter(|i| mine(i))
        .filter(|i| i.status != InstanceStatus::Provisioning || running_here(&i.id))
        .map(|i| i.vm_id.as_str())
        .collect();
    vms.iter()
        .map(String::as_str)
        .filter(|v| !owned.contains(v))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
