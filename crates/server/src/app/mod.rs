//! The use cases of warmpool: configure projects and pools, start test boots, read instances, run
//! commands in VMs, clean up. Never talks HTTP and never builds SQL: handlers call in here, and
//! this calls the store, the backend and the provisioner.

mod autoscale;
mod boot;
mod claim;
pub mod clock;
mod devbox;
mod env;
pub mod events;
pub mod heads;
mod history;
mod instances;
mod leases;
pub mod limits;
pub mod nodes;
mod projects;
pub mod reconcile;
mod repos;
mod resources;
mod tokens;
mod validation;
mod warm_pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use warmpool_backend::Backend;
use warmpool_store::{InstanceRow, Store};
use warmpool_types::ids;
use warmpool_types::state::{total_steps, EndReason, InstanceKind, InstanceStatus};

use crate::error::{AppError, AppResult};
use crate::git::mirror::Mirrors;
use crate::git::serve::GitServer;
use crate::provision::{self, BootPlan};
use crate::sealed::Sealer;
use clock::Clock;
use events::EventHub;
use heads::Heads;

pub use instances::{list_item, summary};
pub use validation::*;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Tokens are compared by hash, in constant time.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who is calling: the admin, or a token that may act on one project only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Project(String),
}

impl Caller {
    /// Out-of-scope projects look exactly like missing ones.
    pub fn check_project(&self, project_id: &str) -> AppResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(p) if p == project_id => Ok(()),
            Caller::Project(_) => Err(AppError::not_found("project not found")),
        }
    }

    pub fn require_admin(&self) -> AppResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(_) => Err(AppError::Forbidden(
                "this operation needs the admin token".into(),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Whether warm pools may be used on this server (`allowed` in the API).
    pub warm_pool_allowed: bool,
    /// How long a finished test instance lives.
    pub test_instance_ttl: Duration,
    /// Per setup command.
    pub command_timeout: Duration,
    /// How long `ensure_server` waits for the agent.
    pub server_wait: Duration,
    /// Default timeout of `exec` requests.
    pub exec_default_timeout: Duration,
    /// How often a remote branch head is checked for staleness, at most.
    pub head_check_interval: Duration,
    /// Pool boots this server runs at once, at most (claims are not held back by it).
    pub max_parallel_boots: usize,
    /// Requests per second per token (0: no limit), and the burst allowed.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// VMs booted for claims of one project at once, at most.
    pub max_cold_claims: usize,
    /// This server as a node: its name, lease and capacity.
    pub node: nodes::NodeConfig,
    /// The server's own directories as they may appear in a backend's messages, with what is
    /// shown instead (`<data-dir>/`, `<cache-dir>/`): step logs never name where the server
    /// keeps its data.
    pub host_paths: Vec<(String, String)>,
    /// Whether pools build goldens and make their VMs from them (where the backend can).
    pub goldens: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            warm_pool_allowed: true,
            test_instance_ttl: Duration::from_secs(15 * 60),
            command_timeout: Duration::from_secs(30 * 60),
            server_wait: Duration::from_secs(120),
            exec_default_timeout: Duration::from_secs(600),
            head_check_interval: Duration::from_secs(60),
            max_parallel_boots: 8,
            rate_per_sec: 100,
            rate_burst: 200,
            max_cold_claims: 20,
            goldens: true,
            node: nodes::NodeConfig::default(),
            host_paths: Vec::new(),
        }
    }
}

/// The replacements of [`AppConfig::host_paths`] for `dirs` (each with its label): the path as
/// given and as it really is (symlinks resolved), each followed by `/`, and whole when it is long
/// enough not to hit innocent text.
pub fn host_path_replacements(dirs: &[(&std::path::Path, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (dir, label) in dirs {
        let mut forms = vec![dir.to_path_buf()];
        if let Ok(real) = std::fs::canonicalize(dir) {
            forms.push(real);
        }
        for f in forms {
            let text = f.to_string_lossy().trim_end_matches('/').to_string();
            if text.is_empty() {
                continue;
            }
            out.push((format!("{text}/"), format!("{label}/")));
            if text.len() >= 8 {
                out.push((text, label.to_string()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What an [`App`] is made of.
pub struct AppParts {
    pub admin_token: String,
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    pub cfg: AppConfig,
    pub mirrors: Arc<Mirrors>,
    pub git: Arc<GitServer>,
    pub clock: Arc<dyn Clock>,
    /// Seals secrets before they reach the store.
    pub sealer: Arc<Sealer>,
}

pub struct App {
    /// SHA-256 of the admin token; the token itself is never kept.
    admin_token_hash: [u8; 32],
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    pub cfg: AppConfig,
    pub mirrors: Arc<Mirrors>,
    pub git: Arc<GitServer>,
    pub events: Arc<EventHub>,
    clock: Arc<dyn Clock>,
    sealer: Arc<Sealer>,
    /// What every boot's pipeline is given.
    boot: provision::Services,
    pub limits: limits::Limits,
    heads: Arc<Heads>,
    nudge: Notify,
    instance_cache: tokio::sync::Mutex<reconcile::InstanceCache>,
    /// Pipelines running in this process, by instance id, to stop them when their instance goes.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Since when the store has answered this node's lease renewals without a break (`None`
    /// while it does not): a node judges others lost only after a whole lease of that.
    pub(crate) store_up: std::sync::Mutex<Option<i64>>,
    /// Each pool's size over the last hour.
    pub(crate) history: history::History,
    /// When this node's previous run last renewed its lease: the last moment it was known to be
    /// running, which is when the boots it left unfinished stopped (at the latest).
    pub(crate) previous_run_alive: std::sync::Mutex<Option<i64>>,
}

impl App {
    pub fn new(parts: AppParts) -> Arc<Self> {
        crate::metrics::init();
        let boot = provision::Services {
            backend: parts.backend.clone(),
            repos: Arc::new(boot::MirrorRepos {
                store: parts.store.clone(),
                clock: parts.clock.clone(),
                mirrors: parts.mirrors.clone(),
                git: parts.git.clone(),
                backend: parts.backend.clone(),
            }),
            timeouts: provision::Timeouts {
                command: parts.cfg.command_timeout,
                server_wait: parts.cfg.server_wait,
            },
            // The mirror is the one service of the host a VM may reach.
            host_ports: vec![parts.git.port()],
            host_paths: parts.cfg.host_paths.clone(),
        };
        Arc::new(Self {
            boot,
            admin_token_hash: hash_token(&parts.admin_token),
            heads: Heads::new(parts.cfg.head_check_interval, parts.clock.clone()),
            limits: limits::Limits::new(parts.cfg.rate_per_sec, parts.cfg.rate_burst),
            store: parts.store,
            backend: parts.backend,
            cfg: parts.cfg,
            mirrors: parts.mirrors,
            git: parts.git,
            events: Arc::new(EventHub::default()),
            clock: parts.clock,
            sealer: parts.sealer,
            nudge: Notify::new(),
            instance_cache: Default::default(),
            store_up: std::sync::Mutex::new(None),
            history: Default::default(),
            previous_run_alive: std::sync::Mutex::new(None),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Now, by the app's clock (epoch milliseconds).
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn is_running(&self, instance_id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(instance_id)
    }

    /// Who a bearer token belongs to: the admin (compared in constant time) or a project (found
    /// by the token's hash).
    pub async fn authenticate(&self, token: Option<&str>) -> AppResult<Caller> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(AppError::Unauthorized(
                "missing token: send `Authorization: Bearer <token>`".into(),
            ));
        };
        let hash = hash_token(token);
        let caller = if bool::from(hash.ct_eq(&self.admin_token_hash)) {
            Caller::Admin
        } else if let Some(caller) = self.project_caller(token).await? {
            caller
        } else {
            return Err(AppError::Unauthorized("unknown or revoked token".into()));
        };
        self.limits.check_rate(&hash)?;
        Ok(caller)
    }

    /// Seals a secret for the store.
    pub(crate) fn seal(&self, plain: &str) -> String {
        self.sealer.seal(plain)
    }

    /// The project's environment variables with their values opened.
    pub(crate) async fn env_vars(
        &self,
        project_id: &str,
    ) -> AppResult<Vec<warmpool_store::EnvVarRow>> {
        let mut vars = self.store.list_env_vars(project_id).await?;
        for v in &mut vars {
            v.value = self.sealer.open(&v.value).map_err(AppError::internal)?;
        }
        Ok(vars)
    }

    /// A VM's agent token, opened.
    pub(crate) fn agent_token(&self, inst: &InstanceRow) -> Option<String> {
        let sealed = inst.agent_token.as_deref()?;
        match self.sealer.open(sealed) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(instance = %inst.id, "cannot open the agent token: {e:#}");
                None
            }
        }
    }

    /// Loads what a boot of `project_id` needs, as it is right now.
    async fn plan(&self, project_id: &str) -> AppResult<BootPlan> {
        let project = self
            .store
            .get_project(project_id)
            .await?
            .ok_or_else(|| AppError::not_found("project not found"))?;
        let env = self.env_vars(project_id).await?;
        let pool = self.store.get_pool_config(project_id).await?;
        let sources = project
            .repos
            .iter()
            .map(|r| self.repo_source(r))
            .collect::<AppResult<Vec<_>>>()?;
        Ok(BootPlan {
            project,
            env,
            sources,
            pool_branch: pool.as_ref().and_then(|p| p.branch.clone()),
            pool_commands: pool.and_then(|p| p.setup_commands).unwrap_or_default(),
            golden: None,
        })
    }

    /// A new instance's row and the plan of its boot, as the project is right now.
    async fn prepare(
        &self,
        project_id: &str,
        kind: InstanceKind,
        task_id: Option<String>,
    ) -> AppResult<(InstanceRow, BootPlan)> {
        let mut plan = self.plan(project_id).await?;
        let config_hash = plan.config_hash();
        // Pool VMs — and VMs for claims — are clones of the pool's golden when the backend has
        // goldens and one was built from this very configuration (on this node).
        if matches!(kind, InstanceKind::Pool | InstanceKind::Cold) && self.goldens_on() {
            if let Some(g) = self.golden_for(project_id, &config_hash).await? {
                let steps = self.store.list_steps(&g.id).await?;
                plan.golden = Some(provision::GoldenPlan { golden: g, steps });
            }
        }
        let inst = self.new_row(project_id, kind, task_id, &plan, config_hash);
        Ok((inst, plan))
    }

    fn new_row(
        &self,
        project_id: &str,
        kind: InstanceKind,
        task_id: Option<String>,
        plan: &BootPlan,
        config_hash: String,
    ) -> InstanceRow {
        InstanceRow {
            seq: 0,
            id: ids::new_instance_id(),
            vm_id: ids::new_vm_id(),
            project_id: project_id.to_string(),
            kind,
            status: InstanceStatus::Provisioning,
            total_steps: total_steps(plan.project.repos.len()),
            failed_step: None,
            failure_reason: None,
            backend: self.backend.name().to_string(),
            agent_url: None,
            agent_token: None,
            golden_id: plan.golden.as_ref().map(|g| g.golden.id.clone()),
            config_hash: Some(config_hash),
            task_id,
            created_at: self.now(),
            provisioned_at: None,
            finished_at: None,
            claimed_at: None,
            destroyed_at: None,
            end_reason: None,
            lease_ms: None,
            expires_at: None,
            stale_at: None,
            commits: Default::default(),
            node: Some(self.cfg.node.name.clone()),
        }
    }

    /// Records a new instance and starts its pipeline in the background; `slot` (a boot for a
    /// claim) is held until its steps are over.
    pub(crate) async fn launch(
        self: &Arc<Self>,
        project_id: &str,
        kind: InstanceKind,
        task_id: Option<String>,
        lease_ms: Option<i64>,
        slot: Option<limits::ColdSlot>,
    ) -> AppResult<InstanceRow> {
        let (mut inst, plan) = self.prepare(project_id, kind, task_id).await?;
        inst.lease_ms = lease_ms;
        self.store.insert_instance(&inst).await?;
        self.start(inst.clone(), plan, slot);
        Ok(inst)
    }

    /// Boots up to `n` pool instances (or the pool's golden: `kind`) on this node — as many as
    /// the pool's target (counted over every node) and this node's capacity still allow, decided
    /// by the store in one step so nodes never overshoot together. Returns those started.
    pub(crate) async fn launch_pool(
        self: &Arc<Self>,
        project_id: &str,
        kind: InstanceKind,
        n: usize,
        target: u32,
    ) -> AppResult<Vec<InstanceRow>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let (first, plan) = self.prepare(project_id, kind, None).await?;
        let hash = first.config_hash.clone().unwrap_or_default();
        let mut rows = vec![first];
        for _ in 1..n {
            rows.push(self.new_row(project_id, kind, None, &plan, hash.clone()));
        }
        let placed = self
            .store
            .place_pool_boots(&rows, target, self.cfg.node.capacity)
            .await?;
        rows.truncate(placed);
        for inst in &rows {
            self.start(inst.clone(), plan.clone(), None);
        }
        Ok(rows)
    }

    /// Runs a recorded instance's pipeline in the background.
    fn start(self: &Arc<Self>, inst: InstanceRow, plan: BootPlan, slot: Option<limits::ColdSlot>) {
        let live = self.events.begin(&inst.project_id, &inst.id);
        let cancel = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inst.id.clone(), cancel.clone());
        let app = self.clone();
        tokio::spawn(async move {
            // However the task ends, even by a panic of its own, the boot stops counting as
            // running here.
            let _running = RunningGuard {
                app: app.clone(),
                id: inst.id.clone(),
            };
            let config = plan.config_hash();
            let boot = app
                .clone()
                .run_boot(inst.clone(), plan, cancel, live.clone(), slot);
            // A step's panic is already a failed step; this catches one in the app's own
            // settling, so the instance never stays provisioning for good.
            if let Err(msg) = crate::tasks::catch("boot", boot).await {
                app.boot_panicked(&inst, &config, &msg, &live).await;
            }
        });
    }
}

/// Takes a boot off [`App::running`] when its task ends, however it ends.
struct RunningGuard {
    app: Arc<App>,
    id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.app
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl App {
    /// Whether pools are served from goldens: the backend has them and they are not switched off.
    pub(crate) fn goldens_on(&self) -> bool {
        self.cfg.goldens && self.backend.supports_goldens()
    }

    /// The ready golden built from `config_hash` for the project, if any.
    pub(crate) async fn golden_for(
        &self,
        project_id: &str,
        config_hash: &str,
    ) -> AppResult<Option<warmpool_store::GoldenRow>> {
        Ok(self
            .store
            .ready_goldens()
            .await?
            .into_iter()
            .rev()
            .find(|g| {
                g.project_id == project_id
                    && g.config_hash == config_hash
                    && g.backend == self.backend.name()
                    && self.is_my_golden(g)
            }))
    }

    /// Ends an instance: marks it destroyed (if it is in one of `from`), then stops its pipeline —
    /// which destroys its VM — or destroys the VM directly. False if it was not in `from`.
    pub(crate) async fn destroy_instance(
        &self,
        inst: &InstanceRow,
        from: &[InstanceStatus],
        why: EndReason,
    ) -> AppResult<bool> {
        if !self
            .store
            .mark_destroyed(&inst.id, from, why, self.now())
            .await?
        {
            return Ok(false);
        }
        self.destroy_vm_of(inst).await;
        Ok(true)
    }

    /// The VM of an instance that was just ended: destroyed here if this node hosts it (a boot
    /// still running is cancelled and destroys it as it stops); another node's finds it owned by
    /// no live instance and destroys it.
    pub(crate) async fn destroy_vm_of(&self, inst: &InstanceRow) {
        if !self.is_mine(inst) {
            tracing::info!(instance = %inst.id, node = ?inst.node, "instance destroyed; its node removes the VM");
            return;
        }
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&inst.id)
            .cloned();
        match running {
            // The pipeline owns the VM while it runs; it destroys it as it stops.
            Some(cancel) => cancel.cancel(),
            None => {
                if let Err(e) = self.backend.destroy(&inst.vm_id).await {
                    // The record says destroyed; the VM left behind is an orphan that the next
                    // cleanup pass finds and destroys.
                    tracing::warn!(vm = %inst.vm_id, "destroying a VM failed: {e}");
                }
            }
        }
        tracing::info!(instance = %inst.id, vm = %inst.vm_id, "instance destroyed");
    }

    /// Ends the claimed instances whose lease ran out — any node may, each is ended once — and
    /// destroys their VMs (see [`App::destroy_vm_of`]). A crash in between leaves a VM no live
    /// instance owns, which the orphan sweep destroys.
    pub(crate) async fn expire_leases(&self) -> AppResult<usize> {
        let ended = self.store.expire_leases(self.now()).await?;
        for inst in &ended {
            tracing::info!(instance = %inst.id, task = ?inst.task_id, "a claim's lease ran out");
            self.destroy_vm_of(inst).await;
        }
        Ok(ended.len())
    }

    /// After a start: fails this node's instances a dead server left provisioning, destroys VMs
    /// that no live instance of this node owns, and checks that the ready VMs that survived
    /// still answer (in the background; the ones that do not are destroyed and replaced).
    pub async fn recover(self: &Arc<Self>) -> AppResult<()> {
        let alive = *self
            .previous_run_alive
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for inst in self
            .store
            .instances_in(&[InstanceStatus::Provisioning])
            .await?
        {
            if self.is_mine(&inst)
                && !self.is_running(&inst.id)
                && self
                    .fail_interrupted(&inst, alive, "server restarted during provisioning")
                    .await?
            {
                tracing::warn!(instance = %inst.id, "failed an instance left provisioning by a previous run");
            }
        }
        self.sweep_orphans().await?;
        // A golden's instance is ready while its golden exists, but its VM became the golden.
        let ready: Vec<InstanceRow> = self
            .store
            .instances_in(&[InstanceStatus::Ready])
            .await?
            .into_iter()
            .filter(|i| i.kind != InstanceKind::Golden && self.is_mine(i))
            .collect();
        self.recover_goldens().await?;
        let app = self.clone();
        crate::tasks::spawn("readopt", async move { app.readopt(ready).await });
        Ok(())
    }

    /// Fails a boot whose server stopped running it: the step it was in — the one after those
    /// recorded — is recorded failed, lasting until `stopped` (when its server was last known
    /// alive; now if unknown), so the summary names it and counts the boot's real duration.
    pub(crate) async fn fail_interrupted(
        &self,
        inst: &InstanceRow,
        stopped: Option<i64>,
        reason: &str,
    ) -> AppResult<bool> {
        let now = self.now();
        let steps = self.store.list_steps(&inst.id).await?;
        let Some(name) = provision::step_at(inst.total_steps, steps.len()) else {
            // Every step was recorded: it stopped while being marked ready.
            return Ok(self.store.mark_failed(&inst.id, None, reason, now).await?);
        };
        let began = steps
            .iter()
            .map(|s| s.finished_at)
            .max()
            .unwrap_or(inst.created_at);
        let ended = stopped.unwrap_or(now).clamp(began, now.max(began));
        let step = warmpool_store::StepRow {
            instance_id: inst.id.clone(),
            seq: steps.len() as u32,
            name: name.as_str().to_string(),
            success: false,
            output: Some(format!(
                "{reason}: this step was still running when its server stopped, and the boot \
                 ended with it (the step's output up to then was not kept)\n"
            )),
            error: Some(reason.to_string()),
            duration_ms: (ended - began) as u64,
            finished_at: ended,
            metadata: None,
        };
        Ok(self.store.fail_interrupted(&step, reason, now).await?)
    }

    /// Destroys this node's VMs that no live instance of this node owns: left by a crash, by a
    /// failed destroy, or ended from another node (which only marks the instance destroyed).
    pub async fn sweep_orphans(&self) -> AppResult<usize> {
        // VMs first, rows second: a VM created after the listing is not judged, and one listed
        // is judged by rows at least as new as it.
        let vms = self
            .backend
            .list()
            .await
            .map_err(|e| AppError::Unavailable(format!("cannot list VMs: {e}")))?;
        if vms.is_empty() {
            return Ok(0);
        }
        let live = self
            .store
            .instances_in(&[
                InstanceStatus::Provisioning,
                InstanceStatus::Ready,
                InstanceStatus::Claimed,
            ])
            .await?;
        let orphans =
            crate::reconcile::orphans(&vms, &live, &|i| self.is_mine(i), &|id| self.is_running(id));
        for vm in &orphans {
            tracing::warn!(%vm, "destroying a VM no live instance owns");
            if let Err(e) = self.backend.destroy(vm).await {
                tracing::warn!(%vm, "destroying an orphaned VM failed: {e}");
            }
        }
        let n = orphans.len();
        Ok(n)
    }

    /// Goldens the store and the backend disagree about: the backend's without a record are
    /// deleted, records without a backend golden are marked deleted.
    async fn recover_goldens(&self) -> AppResult<()> {
        let in_backend = self
            .backend
            .list_goldens()
            .await
            .map_err(|e| AppError::Unavailable(format!("cannot list goldens: {e}")))?;
        let known = self.store.ready_goldens().await?;
        for g in &in_backend {
            if !known.iter().any(|k| &k.id == g) {
                tracing::warn!(golden = %g, "deleting a golden no record owns");
                let _ = self.backend.delete_golden(g).await;
            }
        }
        for k in known
            .iter()
            .filter(|k| k.backend == self.backend.name() && self.is_my_golden(k))
        {
            if !in_backend.contains(&k.id) {
                tracing::warn!(golden = %k.id, "a golden is missing from the backend; forgetting it");
                self.forget_golden(k).await?;
            }
        }
        Ok(())
    }

    /// Marks a golden deleted, and its instance (its step log stays readable) destroyed.
    pub(crate) async fn forget_golden(&self, g: &warmpool_store::GoldenRow) -> AppResult<()> {
        self.store.mark_golden_deleted(&g.id, self.now()).await?;
        self.store
            .mark_destroyed(
                &g.id,
                &[InstanceStatus::Ready],
                EndReason::GoldenDeleted,
                self.now(),
            )
            .await?;
        Ok(())
    }

    /// Keeps the ready VMs whose agent still answers with their token; destroys the others.
    async fn readopt(self: Arc<Self>, ready: Vec<InstanceRow>) {
        use futures_util::StreamExt;
        let checks = futures_util::stream::iter(ready).map(|inst| {
            let app = self.clone();
            async move {
                let healthy = match (&inst.agent_url, &app.agent_token(&inst)) {
                    (Some(url), Some(token)) => app
                        .backend
                        .agent(&inst.vm_id, url, token)
                        .health()
                        .await
                        .is_ok(),
                    _ => false,
                };
                if !healthy {
                    tracing::warn!(instance = %inst.id, "a ready VM did not survive the restart; replacing it");
                    let _ = app
                        .destroy_instance(&inst, &[InstanceStatus::Ready], EndReason::Unhealthy)
                        .await;
                }
                healthy
            }
        });
        let results: Vec<bool> = checks.buffer_unordered(32).collect().await;
        let adopted = results.iter().filter(|h| **h).count();
        if !results.is_empty() {
            tracing::info!(
                adopted,
                replaced = results.len() - adopted,
                "re-adopted the ready VMs that survived"
            );
        }
        self.nudge();
    }
}
