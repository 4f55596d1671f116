//! The reconciler's executor: keeps every enabled pool at its target size with fresh instances.
//! A pass reads the store, asks the planner (`crate::reconcile`, where the pool's rules are) what
//! to do with each pool, and does it. It is idempotent: running it twice in a row does nothing the
//! second time. It runs on a timer and whenever something is nudged (a config change, a claim, a
//! boot ending); tests call [`App::reconcile`] directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use warmpool_store::{GoldenRow, InstanceRow, PoolState, ProjectRow};
use warmpool_types::state::{InstanceKind, InstanceStatus};

use super::autoscale::{Demand, BOOT_SAMPLES};
use super::App;
use crate::error::AppResult;
use crate::metrics as m;
use crate::provision::config_hash;
use crate::reconcile as plan;
use crate::tasks::{self, Activation};

/// How often a pass reads every live instance again instead of only what changed: a safety net,
/// so that nothing a change feed could miss stays wrong for long.
const FULL_RELOAD_EVERY: Duration = Duration::from_secs(300);
/// How often this node looks for VMs no live instance of its own owns (ended from another
/// node, or left by a destroy that failed).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a nudged reconciler waits for more nudges before its pass.
const NUDGE_COALESCE: Duration = Duration::from_millis(10);

/// The live instances as the last pass saw them (by id), kept between passes and brought up to
/// date from the rows changed since: at 10,000 VMs, reading every row each pass was most of it.
#[derive(Default)]
pub(crate) struct InstanceCache {
    rev: i64,
    rows: HashMap<String, InstanceRow>,
    loaded_at: Option<Instant>,
    /// The claims and boot times autoscaled pools are sized from.
    demand: Demand,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub launched: usize,
    pub destroyed: usize,
    pub marked_stale: usize,
    pub expired: usize,
    /// Claimed VMs whose lease ran out, destroyed.
    pub leases_expired: usize,
    /// Instances of lost nodes failed (to be replaced).
    pub lost: usize,
}

impl App {
    /// Wakes the reconciler (it runs once more soon, however often it is nudged meanwhile).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Runs passes forever: every `interval` and whenever nudged. Each pass is supervised: one
    /// that fails or panics is recorded (see [`crate::tasks`]) and the next runs as usual.
    pub fn spawn_reconciler(self: &Arc<Self>, interval: Duration) {
        let app = self.clone();
        tasks::spawn("reconciler", async move {
            let mut last_sweep = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {},
                    _ = app.nudge.notified() => {
                        // A burst of claims and finished boots nudges many times: one pass a
                        // moment later serves them all, instead of a pass (and its reads) each,
                        // which competed with the claims themselves for the CPU.
                        tokio::time::sleep(NUDGE_COALESCE).await;
                    },
                }
                if tasks::catch("rate limit tidy", async { app.limits.tidy() })
                    .await
                    .is_err()
                {
                    tasks::record("rate_limit_tidy", Activation::Panicked);
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    match tasks::catch("orphan sweep", app.sweep_orphans()).await {
                        Ok(Ok(n)) => {
                            tasks::record("orphan_sweep", Activation::Done(&[("destroyed", n)]))
                        }
                        Ok(Err(e)) => {
                            tasks::record("orphan_sweep", Activation::Failed(&e.to_string()))
                        }
                        Err(_) => tasks::record("orphan_sweep", Activation::Panicked),
                    }
                }
                match tasks::catch("reconciler pass", app.reconcile()).await {
                    Ok(Ok(r)) => tasks::record(
                        "reconciler",
                        Activation::Done(&[
                            ("launched", r.launched),
                            ("destroyed", r.destroyed),
                            ("marked_stale", r.marked_stale),
                            ("expired", r.expired),
                            ("lost", r.lost),
                        ]),
                    ),
                    Ok(Err(e)) => {
                        metrics::counter!(m::RECONCILE_ERRORS).increment(1);
                        tasks::record("reconciler", Activation::Failed(&e.to_string()));
                    }
                    Err(_) => {
                        metrics::counter!(m::RECONCILE_ERRORS).increment(1);
                        tasks::record("reconciler", Activation::Panicked);
                    }
                }
            }
        });
    }

    /// One pass over every pool.
    pub async fn reconcile(self: &Arc<Self>) -> AppResult<ReconcileReport> {
        let started = Instant::now();
        let now = self.now();
        let mut report = ReconcileReport::default();
        // Passes run one at a time: each brings the instances it keeps up to date.
        let mut cache = self.instance_cache.lock().await;
        report.lost += self.fail_lost_nodes().await?;
        let full = cache
            .loaded_at
            .is_none_or(|t| t.elapsed() >= FULL_RELOAD_EVERY);
        let snap = self
            .store
            .pool_snapshot((!full).then_some(cache.rev))
            .await?;
        if full {
            cache.rows.clear();
            cache.loaded_at = Some(Instant::now());
        } else if snap.rev < cache.rev {
            // The store went back in time (restored from a backup): start over next pass.
            cache.loaded_at = None;
        }
        cache.rev = snap.rev;
        // The pools with autoscale on: their demand is followed. One followed anew (all of them
        // when the reconciler starts) reads its claims of the last half hour, ended ones
        // included, and its latest boot times; from then on the rows each pass reads bring the
        // rest.
        let since = now - plan::autoscale::MEMORY.as_millis() as i64;
        let autoscaled: Vec<&str> = snap
            .autoscale
            .values()
            .filter(|a| a.enabled)
            .map(|a| a.project_id.as_str())
            .collect();
        for project in cache.demand.follow(&autoscaled) {
            let claims = self.store.claims_since(&project, since).await?;
            let boots = self
                .store
                .provisioning_durations(&project, BOOT_SAMPLES as u32)
                .await?;
            cache.demand.load(&project, claims, boots);
        }
        for inst in snap.instances {
            cache.demand.see(&inst);
            if inst.is_ended() {
                cache.rows.remove(&inst.id);
            } else {
                cache.rows.insert(inst.id.clone(), inst);
            }
        }
        // Only when a lease ran out by what this pass knows (a renewal anywhere moves the
        // revision, so the rows are current): the ending itself is a conditional write that
        // each instance passes once, whichever node gets there first.
        if cache
            .rows
            .values()
            .any(|i| i.status == InstanceStatus::Claimed && i.expires_at.is_some_and(|t| t <= now))
        {
            report.leases_expired += self.expire_leases().await?;
        }
        let projects: HashMap<&str, &ProjectRow> =
            snap.projects.iter().map(|p| (p.id.as_str(), p)).collect();
        // A deleted project's instances go with it, without a revision to say so.
        cache
            .rows
            .retain(|_, i| projects.contains_key(i.project_id.as_str()));
        cache.demand.prune(since);
        let mut env: HashMap<&str, Vec<(String, i64)>> = HashMap::new();
        for (project, name, version) in &snap.env_versions {
            env.entry(project)
                .or_default()
                .push((name.clone(), *version));
        }
        let mut all: Vec<&InstanceRow> = cache.rows.values().collect();
        all.sort_unstable_by_key(|i| i.seq);
        let mut by_project: HashMap<&str, Vec<&InstanceRow>> =
            HashMap::with_capacity(snap.configs.len());
        for i in &all {
            by_project.entry(&i.project_id).or_default().push(i);
        }
        for action in plan::expiry(
            &all,
            now,
            self.cfg.test_instance_ttl.as_millis() as i64,
            plan::FAILED_RETENTION.as_millis() as i64,
        ) {
            self.apply(&cache.rows, &action, &mut report).await?;
        }
        let mut provisioning_here = all
            .iter()
            .filter(|i| i.status == InstanceStatus::Provisioning && self.is_mine(i))
            .count();
        // Goldens are only the concern of backends that have them.
        let goldens: Vec<GoldenRow> = if self.backend.supports_goldens() {
            // A golden's files are on its own node: only this node's can be cloned or deleted here.
            snap.goldens
                .into_iter()
                .filter(|g| self.is_my_golden(g))
                .collect()
        } else {
            Vec::new()
        };
        let mut current: HashMap<String, String> = HashMap::new();
        for cfg in &snap.configs {
            let Some(project) = projects.get(cfg.project_id.as_str()).copied() else {
                continue;
            };
            let versions = env
                .get(cfg.project_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let hash = config_hash(
                project,
                versions,
                cfg.branch.as_deref(),
                cfg.setup_commands.as_deref(),
            );
            // With goldens switched off no pool wants one: those left from before go once unused.
            if cfg.enabled && self.goldens_on() {
                current.insert(cfg.project_id.clone(), hash.clone());
            }
            let instances = by_project
                .get(cfg.project_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            self.publish_gauges(&cfg.project_id, instances);
            // Each repo's source key, worked out once per pass rather than once per instance.
            let keys: Vec<String> = project.repos.iter().map(|r| self.source_key(r)).collect();
            let moved = |inst: &InstanceRow| self.head_moved(project, &keys, inst);
            let state = snap
                .states
                .get(&cfg.project_id)
                .cloned()
                .unwrap_or_default();
            let target = match snap
                .autoscale
                .get(&cfg.project_id)
                .filter(|a| a.enabled && cfg.enabled)
            {
                Some(a) => self.autoscaled_target(a, cfg, &cache.demand, now).await?,
                None => cfg.target_size as usize,
            };
            let view = plan::PoolView {
                project_id: &cfg.project_id,
                enabled: cfg.enabled && self.cfg.warm_pool_allowed,
                target,
                max_age_ms: cfg.max_age_minutes as i64 * 60_000,
                hash: &hash,
                state: &state,
                goldens: if !self.goldens_on() {
                    plan::Goldens::Unsupported
                } else if goldens
                    .iter()
                    .any(|g| g.project_id == cfg.project_id && g.config_hash == hash)
                {
                    plan::Goldens::Ready
                } else {
                    plan::Goldens::Missing
                },
                moved: &moved,
            };
            let capacity = plan::Capacity {
                max_parallel: self.cfg.max_parallel_boots,
                provisioning_here,
            };
            for action in plan::plan(&view, instances, now, capacity) {
                let (launched, freed) = self
                    .apply_to_pool(&cache.rows, &view, &action, &mut report)
                    .await?;
                provisioning_here = (provisioning_here + launched).saturating_sub(freed);
            }
        }
        if !goldens.is_empty() {
            report.destroyed += self.collect_goldens(&goldens, &current, &all).await?;
        }
        metrics::counter!(m::RECONCILE_RUNS).increment(1);
        metrics::histogram!(m::RECONCILE_SECONDS).record(started.elapsed().as_secs_f64());
        if report != ReconcileReport::default() {
            tracing::debug!(?report, "reconciler pass");
        }
        Ok(report)
    }

    /// Whether a repo of `inst` has a branch head, seen after the instance was set up, past its
    /// commit (a head seen before may simply be older than it).
    fn head_moved(&self, project: &ProjectRow, keys: &[String], inst: &InstanceRow) -> bool {
        let set_up = inst.provisioned_at.unwrap_or(i64::MAX);
        project
            .repos
            .iter()
            .zip(keys)
            .any(|(r, key)| match inst.commits.get(&r.full_name) {
                Some(c) => self
                    .heads
                    .get(key, &c.branch, || self.repo_source(r).ok())
                    .is_some_and(|(head, seen)| seen > set_up && head != c.commit),
                None => true,
            })
    }

    /// Does one planned action that is not about a particular pool (`rows`: the instances the
    /// plan was made from).
    /// Answers 1 when it stopped a boot of this node (a slot freed), else 0.
    async fn apply(
        &self,
        rows: &HashMap<String, InstanceRow>,
        action: &plan::Action,
        report: &mut ReconcileReport,
    ) -> AppResult<usize> {
        if let plan::Action::Destroy { id, from, why } = action {
            let Some(inst) = rows.get(id) else {
                return Ok(0);
            };
            if self.destroy_instance(inst, from, why.end_reason()).await? {
                tracing::info!(instance = %id, ?why, "instance ended");
                match why {
                    plan::Why::TestExpired | plan::Why::FailedExpired => report.expired += 1,
                    _ => report.destroyed += 1,
                }
                let freed = inst.status == InstanceStatus::Provisioning && self.is_mine(inst);
                return Ok(usize::from(freed));
            }
        }
        Ok(0)
    }

    /// Does one planned action of a pool; answers how many boots it started on this node and
    /// how many of this node's boots it stopped.
    async fn apply_to_pool(
        self: &Arc<Self>,
        rows: &HashMap<String, InstanceRow>,
        view: &plan::PoolView<'_>,
        action: &plan::Action,
        report: &mut ReconcileReport,
    ) -> AppResult<(usize, usize)> {
        let project_id = view.project_id;
        match action {
            plan::Action::MarkStale { id } => {
                if self.store.set_stale(id, self.now()).await? {
                    report.marked_stale += 1;
                    tracing::info!(instance = %id, "instance is stale; it stays claimable until replaced");
                }
            }
            plan::Action::Destroy { .. } => {
                return Ok((0, self.apply(rows, action, report).await?))
            }
            plan::Action::ResetDegraded => {
                self.store
                    .update_pool_state(
                        project_id,
                        self.now(),
                        Box::new(|s: &mut PoolState| *s = PoolState::default()),
                    )
                    .await?;
                tracing::info!(project = %project_id, "the pool's configuration changed; it is no longer degraded");
            }
            plan::Action::BuildGolden => {
                // Placed like the pool's boots: it runs a VM on this node until it is saved.
                let target = view.target as u32;
                let started = self
                    .launch_pool(project_id, InstanceKind::Golden, 1, target)
                    .await?;
                for inst in &started {
                    tracing::info!(project = %project_id, instance = %inst.id, "building the pool's golden");
                }
                report.launched += started.len();
                return Ok((started.len(), 0));
            }
            plan::Action::Boot { n } => {
                let started = self
                    .launch_pool(project_id, InstanceKind::Pool, *n, view.target as u32)
                    .await?;
                for inst in &started {
                    tracing::info!(project = %project_id, instance = %inst.id, "booting a pool instance");
                }
                report.launched += started.len();
                return Ok((started.len(), 0));
            }
        }
        Ok((0, 0))
    }

    /// Deletes the goldens no pool wants and no VM uses.
    async fn collect_goldens(
        &self,
        goldens: &[GoldenRow],
        current: &HashMap<String, String>,
        instances: &[&InstanceRow],
    ) -> AppResult<usize> {
        let mut n = 0;
        for g in plan::unwanted_goldens(goldens, current, instances) {
            if let Err(e) = self.backend.delete_golden(&g.id).await {
                tracing::warn!(golden = %g.id, "cannot delete a golden: {e}");
                continue;
            }
            self.forget_golden(g).await?;
            tracing::info!(golden = %g.id, "deleted a golden no pool or VM uses");
            n += 1;
        }
        Ok(n)
    }

    fn publish_gauges(&self, project_id: &str, instances: &[&InstanceRow]) {
        let count =
            |f: &dyn Fn(&InstanceRow) -> bool| instances.iter().filter(|i| f(i)).count() as f64;
        let pool = |i: &InstanceRow, s| i.kind == InstanceKind::Pool && i.status == s;
        for (state, n) in [
            ("ready", count(&|i| pool(i, InstanceStatus::Ready))),
            (
                "provisioning",
                count(&|i| pool(i, InstanceStatus::Provisioning)),
            ),
            ("failed", count(&|i| pool(i, InstanceStatus::Failed))),
            (
                "stale",
                count(&|i| pool(i, InstanceStatus::Ready) && i.stale_at.is_some()),
            ),
            ("claimed", count(&|i| i.status == InstanceStatus::Claimed)),
        ] {
            metrics::gauge!(m::POOL_INSTANCES, "project" => project_id.to_string(), "state" => state).set(n);
        }
        self.history.record(
            project_id,
            self.now(),
            [
                count(&|i| pool(i, InstanceStatus::Ready)) as u64,
                count(&|i| pool(i, InstanceStatus::Provisioning)) as u64,
                count(&|i| i.status == InstanceStatus::Claimed) as u64,
                count(&|i| pool(i, InstanceStatus::Failed)) as u64,
            ],
        );
    }

    /// Bookkeeping when a pool boot fails: back off, and degrade after repeated identical failures.
    pub(crate) async fn pool_boot_failed(
        &self,
        project_id: &str,
        step: &str,
        config: &str,
        error: &str,
    ) {
        let now = self.now();
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        let (step, config, error) = (step.to_string(), config.to_string(), error.to_string());
        let res = self
            .store
            .update_pool_state(
                project_id,
                now,
                Box::new(move |s: &mut PoolState| {
                    plan::record_failure(s, step, config, error, now, jitter)
                }),
            )
            .await;
        match res {
            Ok(s) if s.degraded_since == Some(now) => tracing::warn!(
                project = %project_id,
                "the pool is degraded: {} identical failures; it stops booting until its configuration changes or a test boot succeeds",
                s.identical_failures
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(project = %project_id, "cannot record a pool failure: {e}"),
        }
    }

    /// A pool boot or a test boot succeeded: the pool is healthy again.
    pub(crate) async fn pool_boot_succeeded(&self, project_id: &str) {
        let Ok(state) = self.store.get_pool_state(project_id).await else {
            return;
        };
        if state == PoolState::default() {
            return;
        }
        let now = self.now();
        if let Err(e) = self
            .store
            .update_pool_state(
                project_id,
                now,
                Box::new(|s: &mut PoolState| *s = PoolState::default()),
            )
            .await
        {
            tracing::error!(project = %project_id, "cannot reset the pool's failure state: {e}");
        }
    }
}
