//! The provisioning pipeline (the README's "What a boot does"): eight kinds of step, in order, each a small
//! named method. Every step is recorded when it ends — output redacted and capped, a one-line
//! error a person can act on, metadata — so the instance detail reads as a step-by-step log. A
//! failure at any step, or the instance being destroyed meanwhile, leaves a clean slate: the VM is
//! destroyed and the record says why.

pub mod envfile;
pub mod redact;
pub mod settings;
pub mod steplog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;
use warmpool_backend::{Agent, AgentCallError, VmSpec};

use warmpool_store::{
    EnvVarRow, GoldenRow, InstanceRow, ProjectRow, RepoCommit, RepoSpec, StepRow,
};
use warmpool_types::agent::{AgentExecEvent, AgentExecRequest};
use warmpool_types::api::SetupCommand;
use warmpool_types::ids;
use warmpool_types::state::{InstanceKind, StepName};

use crate::app::events::{DoneEvent, Event, LiveRun, StepEvent};
use crate::app::App;
use crate::git::source::RepoSource;
use crate::metrics as m;
use redact::Redactor;
use steplog::OutputSink;
use steplog::StepLog;

/// Everything a boot needs, read once when the instance is created so later edits never mix
/// into a running boot.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub project: ProjectRow,
    pub env: Vec<EnvVarRow>,
    pub pool_branch: Option<String>,
    pub pool_commands: Vec<SetupCommand>,
    /// Each repo's source (credentials opened), in the order of `project.repos`.
    pub sources: Vec<RepoSource>,
    /// Clone this golden instead of setting the VM up from scratch.
    pub golden: Option<GoldenPlan>,
}

/// A golden to clone, with the step log of the boot that built it.
#[derive(Debug, Clone)]
pub struct GoldenPlan {
    pub golden: GoldenRow,
    pub steps: Vec<StepRow>,
}

impl BootPlan {
    pub fn config_hash(&self) -> String {
        let versions: Vec<(String, i64)> = self
            .env
            .iter()
            .map(|v| (v.name.clone(), v.version))
            .collect();
        config_hash(
            &self.project,
            &versions,
            self.pool_branch.as_deref(),
            Some(&self.pool_commands),
        )
    }
}

/// A digest of everything a boot is built from — repos, branches, devbox settings, resource
/// limits, the pool's setup commands, the *versions* (never the values) of environment
/// variables. Instances built from another digest are stale.
pub fn config_hash(
    project: &ProjectRow,
    env_versions: &[(String, i64)],
    pool_branch: Option<&str>,
    pool_commands: Option<&[SetupCommand]>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut env: Vec<&(String, i64)> = env_versions.iter().collect();
    env.sort();
    // Credentials count by their digest (their sealed form changes with every sealing).
    let repos: Vec<Value> = project
        .repos
        .iter()
        .map(|r| {
            let mut v = json!({"full_name": r.full_name, "url": r.url, "branch": r.branch});
            if let Some(c) = &r.credentials {
                v["credentials"] = json!(c.digest);
            }
            v
        })
        .collect();
    let mut doc = json!({
        "repos": repos,
        "devbox": project.devbox,
        "poolBranch": pool_branch,
        "poolCommands": pool_commands.unwrap_or(&[]),
        "env": env,
    });
    // Only when set: the projects of a version without limits keep their digests (and their
    // ready VMs) across the upgrade.
    if project.resources != Default::default() {
        doc["resources"] = json!(project.resources);
    }
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))[..32].to_string()
}

/// Where a repo's branch is, with the mirror held still.
struct RepoHead {
    mirror: String,
    branch: String,
    commit: String,
    _still: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// One step of a concrete pipeline (repo steps carry the repo's index).
#[derive(Debug, Clone, Copy)]
enum Step {
    CreateVm,
    EnsureServer,
    SetEnvVars,
    CloneRepo(usize),
    InitRepo(usize),
    ProjectSetup,
    RepoSetup(usize),
    WarmPoolSetup,
}

impl Step {
    fn name(self) -> StepName {
        match self {
            Step::CreateVm => StepName::CreateVm,
            Step::EnsureServer => StepName::EnsureServer,
            Step::SetEnvVars => StepName::SetEnvVars,
            Step::CloneRepo(_) => StepName::CloneRepo,
            Step::InitRepo(_) => StepName::InitRepo,
            Step::ProjectSetup => StepName::ProjectSetup,
            Step::RepoSetup(_) => StepName::RepoSetup,
            Step::WarmPoolSetup => StepName::WarmPoolSetup,
        }
    }
}

/// The steps for `repos` repositories, in pipeline order: `5 + 3 × repos` of them.
fn steps_for(repos: usize) -> Vec<Step> {
    let mut s = vec![Step::CreateVm, Step::EnsureServer, Step::SetEnvVars];
    s.extend((0..repos).map(Step::CloneRepo));
    s.extend((0..repos).map(Step::InitRepo));
    s.push(Step::ProjectSetup);
    s.extend((0..repos).map(Step::RepoSetup));
    s.push(Step::WarmPoolSetup);
    s
}

/// The name of the step at position `seq` of a pipeline of `total_steps` steps (`5 + 3R`), to
/// tell which step a boot was in when its server stopped.
pub fn step_at(total_steps: u32, seq: usize) -> Option<StepName> {
    let repos = total_steps.checked_sub(5).filter(|r| r % 3 == 0)? / 3;
    steps_for(repos as usize).get(seq).map(|s| s.name())
}

enum Stop {
    Failed { step: StepName, error: String },
    Cancelled,
}

/// Runs the pipeline of `inst` to its end and settles the instance: `ready` (or `claimed`, for an
/// instance booted for a claim), or `failed` with its VM destroyed, or — when the instance was
/// destroyed meanwhile — just the VM destroyed. Then tells the pool and the event stream.
pub async fn run(
    app: Arc<App>,
    inst: InstanceRow,
    plan: BootPlan,
    cancel: CancellationToken,
    live: Arc<LiveRun>,
) {
    let secrets: Vec<(String, String)> = plan
        .project
        .repos
        .iter()
        .zip(&plan.sources)
        .flat_map(|(r, src)| {
            src.secrets()
                .into_iter()
                .map(|s| (format!("credentials of {}", r.full_name), s))
        })
        .collect();
    let redactor = Arc::new(Redactor::with_literals(
        plan.env
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .chain(secrets.iter().map(|(n, s)| (n.as_str(), s.as_str()))),
        &app.cfg.host_paths,
    ));
    let config = plan.config_hash();
    let mut p = Pipeline {
        app: app.clone(),
        inst: inst.clone(),
        plan,
        redactor,
        agent: None,
        seq: 0,
        background: BTreeMap::new(),
        live,
        commits: BTreeMap::new(),
    };
    let outcome = tokio::select! {
        r = p.run_steps() => r,
        _ = cancel.cancelled() => Err(Stop::Cancelled),
    };
    let kind = inst.kind.as_str();
    // A golden's boot ends by saving its VM as the golden.
    let outcome = match outcome {
        Ok(()) if inst.kind == InstanceKind::Golden => {
            save_golden(&app, &inst, &config, &p.commits).await
        }
        other => other,
    };
    match outcome {
        Ok(()) => {
            let claimed = inst.kind == InstanceKind::Cold;
            // Every step passed: the pool's setup works (recorded first, like failures).
            if matches!(
                inst.kind,
                InstanceKind::Pool | InstanceKind::Test | InstanceKind::Golden
            ) {
                app.pool_boot_succeeded(&inst.project_id).await;
            }
            match app
                .store
                .mark_ready(&inst.id, app.now(), &p.commits, claimed)
                .await
            {
                Ok(true) => {
                    tracing::info!(instance = %inst.id, vm = %inst.vm_id, claimed, "instance ready");
                    metrics::counter!(m::BOOTS, "kind" => kind, "result" => "ready").increment(1);
                }
                // Destroyed while its last step ran.
                Ok(false) => destroy_vm(&app, &inst).await,
                Err(e) => {
                    tracing::error!(instance = %inst.id, "cannot mark the instance ready: {e}");
                    destroy_vm(&app, &inst).await;
                    let _ = app
                        .store
                        .mark_failed(
                            &inst.id,
                            None,
                            "internal error: could not record readiness",
                            app.now(),
                        )
                        .await;
                }
            }
        }
        Err(Stop::Failed { step, error }) => {
            tracing::info!(instance = %inst.id, %step, %error, "instance failed");
            metrics::counter!(m::BOOTS, "kind" => kind, "result" => "failed").increment(1);
            // VM first: once the record says failed, the VM is gone. A crash in between leaves the
            // instance provisioning, which the next start fails.
            destroy_vm(&app, &inst).await;
            // The pool learns of the failure before the instance stops counting as a boot, so
            // the reconciler never sees a free slot without the backoff that goes with it.
            if matches!(inst.kind, InstanceKind::Pool | InstanceKind::Golden) {
                app.pool_boot_failed(&inst.project_id, step.as_str(), &config, &error)
                    .await;
            }
            if let Err(e) = app
                .store
                .mark_failed(&inst.id, Some(step.as_str()), &error, app.now())
                .await
            {
                tracing::error!(instance = %inst.id, "cannot mark the instance failed: {e}");
            }
        }
        Err(Stop::Cancelled) => {
            tracing::info!(instance = %inst.id, "provisioning stopped: the instance was destroyed");
            destroy_vm(&app, &inst).await;
        }
    }
    p.publish_done().await;
    app.events.finish(&inst.id);
    app.nudge();
}

/// Saves a golden boot's VM as the golden its pool's VMs will be cloned from.
async fn save_golden(
    app: &App,
    inst: &InstanceRow,
    config: &str,
    commits: &BTreeMap<String, RepoCommit>,
) -> Result<(), Stop> {
    let started = Instant::now();
    if let Err(e) = app.backend.save_golden(&inst.vm_id, &inst.id).await {
        return Err(Stop::Failed {
            step: StepName::WarmPoolSetup,
            error: format!("could not save the VM as the pool's golden: {}", e.message),
        });
    }
    let row = GoldenRow {
        id: inst.id.clone(),
        project_id: inst.project_id.clone(),
        config_hash: config.to_string(),
        backend: app.backend.name().to_string(),
        commits: commits.clone(),
        ready: true,
        created_at: app.now(),
        node: Some(app.cfg.node.name.clone()),
    };
    if let Err(e) = app.store.insert_golden(&row).await {
        let _ = app.backend.delete_golden(&inst.id).await;
        return Err(Stop::Failed {
            step: StepName::WarmPoolSetup,
            error: format!("internal error: could not record the golden: {e}"),
        });
    }
    tracing::info!(golden = %inst.id, ms = started.elapsed().as_millis() as u64, "saved the pool's golden");
    Ok(())
}

async fn destroy_vm(app: &App, inst: &InstanceRow) {
    if let Err(e) = app.backend.destroy(&inst.vm_id).await {
        tracing::warn!(vm = %inst.vm_id, "destroying the VM failed: {e}");
    }
}

struct Pipeline {
    app: Arc<App>,
    inst: InstanceRow,
    plan: BootPlan,
    redactor: Arc<Redactor>,
    agent: Option<Arc<dyn Agent>>,
    seq: u32,
    live: Arc<LiveRun>,
    /// What each repo was cloned at, recorded with the instance when it is ready.
    commits: BTreeMap<String, RepoCommit>,
    /// The background commands started so far, by log file: how errors name them.
    background: BTreeMap<String, String>,
}

/// One line, at most `max` characters (an ellipsis marks a cut).
fn one_line(s: &str, max: usize) -> String {
    let first = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let multi = s.trim().lines().count() > 1;
    if first.chars().count() > max {
        format!("{}…", first.chars().take(max).collect::<String>())
    } else if multi {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// How a command is called in logs and errors: its name, or its first line.
fn label(c: &SetupCommand) -> String {
    if c.name.trim().is_empty() {
        one_line(&c.command, 80)
    } else {
        one_line(&c.name, 80)
    }
}

/// How long a background command gets from its start to show it cannot start.
const BACKGROUND_SETTLE: Duration = Duration::from_millis(300);

/// A file name for a background command's log.
fn log_name(name: &str, index: usize) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() || s.starts_with('.') || s.chars().all(|c| c == '_') {
        format!("command-{index}")
    } else {
        s
    }
}

impl Pipeline {
    fn step_event(
        &self,
        name: StepName,
        status: &str,
        meta: Map<String, Value>,
        duration_ms: Option<u64>,
        error: Option<String>,
    ) {
        self.live.publish(Event::Step(StepEvent {
            instance_id: self.inst.id.clone(),
            name: name.as_str().to_string(),
            status: status.to_string(),
            metadata: meta,
            duration_ms,
            error,
        }));
    }

    /// The final event, with the summary as the store now has it.
    async fn publish_done(&self) {
        let store = &self.app.store;
        let (Ok(Some(inst)), Ok(steps)) = (
            store.get_instance(&self.inst.id).await,
            store.list_steps(&self.inst.id).await,
        ) else {
            return;
        };
        self.live.publish(Event::Done(DoneEvent {
            instance_id: inst.id.clone(),
            status: inst.status.as_str().to_string(),
            summary: crate::app::summary(&inst, &steps),
        }));
    }

    async fn run_steps(&mut self) -> Result<(), Stop> {
        for step in steps_for(self.plan.project.repos.len()) {
            let name = step.name();
            let started = Instant::now();
            self.step_event(name, "running", Map::new(), None, None);
            let sink = OutputSink {
                live: self.live.clone(),
                instance_id: self.inst.id.clone(),
                step: name.as_str(),
            };
            let mut log = StepLog::new(self.redactor.clone(), Some(sink));
            let mut meta = Map::new();
            let res = self.run_step(step, &mut log, &mut meta).await;
            let error = res.err().map(|e| one_line(&log.redact(&e), 500));
            let duration_ms = started.elapsed().as_millis() as u64;
            let record = StepRow {
                instance_id: self.inst.id.clone(),
                seq: self.seq,
                name: name.as_str().to_string(),
                success: error.is_none(),
                output: Some(log.finish()),
                error: error.clone(),
                duration_ms,
                finished_at: self.app.now(),
                metadata: Some(meta.clone()),
            };
            self.seq += 1;
            let result = if error.is_none() { "success" } else { "error" };
            metrics::histogram!(m::STEP_SECONDS, "step" => name.as_str(), "result" => result)
                .record(duration_ms as f64 / 1000.0);
            if let Err(e) = self.app.store.insert_step(&record).await {
                tracing::error!(instance = %self.inst.id, "cannot record step {}: {e}", record.name);
                return Err(Stop::Failed {
                    step: name,
                    error: "internal error: could not record the step".into(),
                });
            }
            self.step_event(name, result, meta, Some(duration_ms), error.clone());
            if let Some(error) = error {
                metrics::counter!(m::STEP_FAILURES, "step" => name.as_str()).increment(1);
                return Err(Stop::Failed { step: name, error });
            }
        }
        Ok(())
    }

    async fn run_step(
        &mut self,
        step: Step,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        if let Some(g) = self.plan.golden.clone() {
            match step {
                // Done for real: a clone is a VM of its own.
                Step::CreateVm | Step::EnsureServer => {}
                Step::CloneRepo(i) => return self.refresh_repo(i, &g, log, meta).await,
                _ => {
                    self.record_golden_step(&g, log, meta);
                    return Ok(());
                }
            }
        }
        match step {
            Step::CreateVm => self.create_vm(log, meta).await,
            Step::EnsureServer => self.ensure_server(log, meta).await,
            Step::SetEnvVars => self.set_env_vars(log, meta).await,
            Step::CloneRepo(i) => self.clone_repo(i, log, meta).await,
            Step::InitRepo(i) => self.init_repo(i, log, meta).await,
            Step::ProjectSetup => {
                let cmds = self.plan.project.devbox.setup_commands.clone();
                meta.insert("commands".into(), json!(cmds.len()));
                self.run_commands(log, &cmds, "/home", "project setup commands")
                    .await
            }
            Step::RepoSetup(i) => {
                let repo = self.repo(i);
                let cmds = self
                    .plan
                    .project
                    .devbox
                    .repos
                    .get(&repo.full_name)
                    .cloned()
                    .unwrap_or_default();
                meta.insert("repo".into(), json!(repo.full_name));
                meta.insert("commands".into(), json!(cmds.len()));
                let cwd = format!("/home/{}", repo.dir_name());
                self.run_commands(
                    log,
                    &cmds,
                    &cwd,
                    &format!("setup commands for {}", repo.full_name),
                )
                .await
            }
            Step::WarmPoolSetup => {
                let cmds = self.plan.pool_commands.clone();
                meta.insert("commands".into(), json!(cmds.len()));
                self.run_commands(log, &cmds, "/home", "warm pool setup commands")
                    .await?;
                // The last look before the VM is called ready: every background service of the
                // boot, whichever step started it, must still run (or have ended with 0).
                self.check_background(log, meta).await
            }
        }
    }

    fn repo(&self, i: usize) -> RepoSpec {
        self.plan.project.repos[i].clone()
    }

    fn agent(&self) -> Result<Arc<dyn Agent>, String> {
        self.agent
            .clone()
            .ok_or_else(|| "the VM's server is not available".to_string())
    }

    /// Records a step the golden already did: its metadata, marked `fromGolden`.
    fn record_golden_step(&self, g: &GoldenPlan, log: &mut StepLog, meta: &mut Map<String, Value>) {
        if let Some(done) = g.steps.get(self.seq as usize) {
            if let Some(m) = &done.metadata {
                meta.extend(m.clone());
            }
        }
        meta.insert("fromGolden".into(), json!(g.golden.id));
        log.line(&format!(
            "done in golden {} (its own step log has the details); this configuration has not changed since",
            g.golden.id
        ));
    }

    /// A clone's repo: as the golden left it if that is still the branch head, else fetched and
    /// checked out at the head.
    async fn refresh_repo(
        &mut self,
        i: usize,
        g: &GoldenPlan,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let repo = self.repo(i);
        let src = self.plan.sources[i].clone();
        let full = repo.full_name.clone();
        meta.insert("repo".into(), json!(full));
        meta.insert("fromGolden".into(), json!(g.golden.id));
        let fail = |reason: &str| format!("git fetch of {full} failed: {reason}");
        let head = self
            .resolve_repo(&repo, &src, log)
            .await
            .map_err(|r| fail(&r))?;
        meta.insert("branch".into(), json!(head.branch));
        meta.insert("commit".into(), json!(head.commit));
        let had = g.golden.commits.get(&full);
        self.commits.insert(
            full.clone(),
            RepoCommit {
                branch: head.branch.clone(),
                commit: head.commit.clone(),
            },
        );
        if had.is_some_and(|c| c.commit == head.commit && c.branch == head.branch) {
            log.line(&format!(
                "cloned by golden {} at {}; still the head of {}",
                g.golden.id, head.commit, head.branch
            ));
            return Ok(());
        }
        if let Some(c) = had {
            meta.insert("goldenCommit".into(), json!(c.commit));
        }
        let dir = format!("/home/{}", repo.dir_name());
        let grant = self.app.git.grant([head.mirror.clone()]);
        let source = grant.url(self.app.backend.host_address_for_vm(), &head.mirror);
        let refspec = format!("refs/heads/{}", head.branch);
        let cmds: [Vec<String>; 3] = [
            vec![
                "git".into(),
                "-C".into(),
                dir.clone(),
                "fetch".into(),
                "--quiet".into(),
                "--".into(),
                source,
                refspec.clone(),
            ],
            vec![
                "git".into(),
                "-C".into(),
                dir.clone(),
                "checkout".into(),
                "-q".into(),
                "-B".into(),
                head.branch.clone(),
                "FETCH_HEAD".into(),
            ],
            vec![
                "git".into(),
                "-C".into(),
                dir.clone(),
                "update-ref".into(),
                format!("refs/remotes/origin/{}", head.branch),
                "FETCH_HEAD".into(),
            ],
        ];
        log.line(&format!(
            "$ git fetch {} {} (through the server's mirror)",
            src.display(),
            head.branch
        ));
        for argv in cmds {
            let req = AgentExecRequest {
                argv: Some(argv),
                cwd: Some("/home".into()),
                timeout_ms: Some(self.app.cfg.command_timeout.as_millis() as u64),
                ..Default::default()
            };
            let (code, timed_out) = self.exec_logged(log, req, "git").await?;
            if timed_out || code != 0 {
                return Err(fail(&format!("git exited with status {code}")));
            }
        }
        drop(grant);
        log.line(&format!(
            "{full} was at {} in golden {}; now at {} ({})",
            had.map(|c| c.commit.as_str()).unwrap_or("?"),
            g.golden.id,
            head.commit,
            head.branch
        ));
        Ok(())
    }

    async fn create_vm(
        &mut self,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let backend = self.app.backend.clone();
        meta.insert("backend".into(), json!(backend.name()));
        meta.insert("instanceId".into(), json!(self.inst.vm_id));
        let golden = self.plan.golden.as_ref().map(|g| g.golden.id.clone());
        match &golden {
            Some(g) => {
                meta.insert("fromGolden".into(), json!(g));
                log.line(&format!(
                    "cloning golden {g} into a {} VM named {} (memory shared copy-on-write)",
                    backend.name(),
                    self.inst.vm_id
                ));
            }
            None => log.line(&format!(
                "creating a {} VM named {}",
                backend.name(),
                self.inst.vm_id
            )),
        }
        let r = self.plan.project.resources;
        log.line(&format!(
            "limits: {} CPUs, {} MiB of memory, {} processes and threads",
            r.cpus, r.memory_mb, r.pids_max
        ));
        let token = ids::random_secret(40);
        let spec = VmSpec {
            vm_id: self.inst.vm_id.clone(),
            agent_token: token.clone(),
            from_golden: golden.clone(),
            golden_builder: self.inst.kind == InstanceKind::Golden,
            resources: self.plan.project.resources,
            // The mirror is the one service of the host a VM may reach.
            host_ports: vec![self.app.git.port()],
        };
        let handle = backend.create(&spec).await.map_err(|e| {
            if let Some(tail) = &e.log_tail {
                log.line("--- the end of the VM's console log ---");
                log.push(tail);
                log.line("");
            }
            format!("could not create the VM: {}", e.message)
        })?;
        self.app
            .store
            .set_instance_agent(&self.inst.id, &handle.agent_url, &self.app.seal(&token))
            .await
            .map_err(|e| format!("internal error: could not record the VM: {e}"))?;
        self.agent = Some(backend.agent(&self.inst.vm_id, &handle.agent_url, &token));
        if golden.is_some() {
            log.line(
                "the VM is running with its own token, hostname, machine id, clock and entropy",
            );
        } else if handle.started_ahead {
            meta.insert("startedAhead".into(), json!(true));
            log.line(
                "the VM is running: it was started ahead of need and is now this VM, with its own \
                 hostname, machine id, limits and token",
            );
        } else {
            log.line("the VM is running");
        }
        Ok(())
    }

    async fn ensure_server(
        &mut self,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let agent = self.agent()?;
        let started = Instant::now();
        let limit = self.app.cfg.server_wait;
        let mut delay = Duration::from_millis(5);
        let mut last_err;
        loop {
            match agent.health().await {
                Ok(h) => {
                    let waited = started.elapsed().as_millis() as u64;
                    meta.insert("agentVersion".into(), json!(h.version));
                    meta.insert("waitedMs".into(), json!(waited));
                    log.line(&format!(
                        "the VM's server (warmpool-agent {}) answered on {} after {waited} ms",
                        h.version, h.hostname
                    ));
                    // The network may still be attaching; every later step may need it.
                    let t = Instant::now();
                    self.app
                        .backend
                        .wait_network(&self.inst.vm_id)
                        .await
                        .map_err(|e| e.to_string())?;
                    let net = t.elapsed().as_millis() as u64;
                    if net > 0 {
                        log.line(&format!("its network was up {net} ms later"));
                    }
                    return Ok(());
                }
                Err(AgentCallError::Unauthorized) => {
                    return Err("the VM's server refused this VM's token".into());
                }
                Err(e) => last_err = e.to_string(),
            }
            if started.elapsed() >= limit {
                meta.insert(
                    "waitedMs".into(),
                    json!(started.elapsed().as_millis() as u64),
                );
                log.line(&format!("last attempt: {last_err}"));
                if let Some(tail) = self.app.backend.log_tail(&self.inst.vm_id).await {
                    log.line("--- the end of the VM's console log ---");
                    log.push(&tail);
                    log.line("");
                }
                return Err(format!(
                    "the VM's server did not answer within {} s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    async fn set_env_vars(
        &mut self,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let agent = self.agent()?;
        let vars = &self.plan.env;
        meta.insert("count".into(), json!(vars.len()));
        let content = envfile::render(vars.iter().map(|v| (v.name.as_str(), v.value.as_str())));
        agent
            .write_file("/home/.env", content.into_bytes(), 0o600)
            .await
            .map_err(|e| format!("could not write /home/.env: {e}"))?;
        if vars.is_empty() {
            log.line("no environment variables are configured; wrote an empty /home/.env");
        } else {
            let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            log.line(&format!(
                "wrote {} variable{} to /home/.env (mode 0600): {}",
                vars.len(),
                if vars.len() == 1 { "" } else { "s" },
                names.join(", ")
            ));
        }
        Ok(())
    }

    /// Brings the server's mirror of `repo` up to date and finds the branch to use — the pool's,
    /// else the repo's, else the remote's default — and its head. The mirror stays still (no
    /// fetch moves it) while the answer is held.
    async fn resolve_repo(
        &self,
        repo: &RepoSpec,
        src: &RepoSource,
        log: &mut StepLog,
    ) -> Result<RepoHead, String> {
        let synced = self.app.mirrors.sync(src, &mut |l| log.line(l)).await?;
        if let Some(d) = &synced.default_branch {
            let _ = self
                .app
                .store
                .set_default_branch(&src.key, d, self.app.now())
                .await;
        }
        let branch = self
            .plan
            .pool_branch
            .clone()
            .or(repo.branch.clone())
            .or(synced.default_branch.clone())
            .ok_or("the repository has no default branch (is it empty?); set a branch")?;
        let still = self.app.mirrors.read(&synced.id).await;
        let commit = match self.app.mirrors.resolve(&synced.id, &branch).await {
            Some(c) => c,
            None if Some(&branch) == synced.default_branch.as_ref() => {
                return Err("the repository has no commits".into())
            }
            None => return Err(format!("branch `{branch}` not found")),
        };
        Ok(RepoHead {
            mirror: synced.id,
            branch,
            commit,
            _still: still,
        })
    }

    async fn clone_repo(
        &mut self,
        i: usize,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let repo = self.repo(i);
        let src = self.plan.sources[i].clone();
        let full = repo.full_name.clone();
        meta.insert("repo".into(), json!(full));
        let fail = |reason: &str| format!("git clone of {full} failed: {reason}");
        log.line(&format!(
            "$ git clone {} (through the server's mirror)",
            src.display()
        ));
        let head = self
            .resolve_repo(&repo, &src, log)
            .await
            .map_err(|r| fail(&r))?;
        meta.insert("branch".into(), json!(head.branch));
        let (branch, commit) = (head.branch.clone(), head.commit.clone());
        let grant = self.app.git.grant([head.mirror.clone()]);
        let source = grant.url(self.app.backend.host_address_for_vm(), &head.mirror);
        let dir = format!("/home/{}", repo.dir_name());
        let mut steps: Vec<Vec<String>> = vec![
            vec![
                "git".into(),
                "clone".into(),
                "--branch".into(),
                branch.clone(),
                "--".into(),
                source,
                dir.clone(),
            ],
            // `origin` is the real URL, without its credentials: a remote's URL is in
            // `.git/config`, which every user of the VM can read.
            vec![
                "git".into(),
                "-C".into(),
                dir.clone(),
                "remote".into(),
                "set-url".into(),
                "--".into(),
                "origin".into(),
                src.fetch_url().to_string(),
            ],
        ];
        if let Some(secret) = &src.url.secret {
            // The credentials go to a file only root can read, named by the repo's own git
            // configuration: root fetches and pushes as the URL allowed, nobody else sees them.
            let file = format!("/root/.config/git/warmpool/{}.credentials", repo.dir_name());
            let line = format!("{}\n", src.url.with_secret(secret));
            self.agent()?
                .write_file(&file, line.into_bytes(), 0o600)
                .await
                .map_err(|e| {
                    fail(&format!(
                        "could not write the repository's credentials: {e}"
                    ))
                })?;
            steps.push(vec![
                "git".into(),
                "-C".into(),
                dir.clone(),
                "config".into(),
                "credential.helper".into(),
                format!("store --file={file}"),
            ]);
            log.line(&format!(
                "the URL's credentials are in {file} (mode 0600), used by git as root for this repository"
            ));
        }
        for argv in steps {
            let req = AgentExecRequest {
                argv: Some(argv),
                cwd: Some("/home".into()),
                timeout_ms: Some(self.app.cfg.command_timeout.as_millis() as u64),
                ..Default::default()
            };
            let (code, timed_out) = self.exec_logged(log, req, "git clone").await?;
            if timed_out {
                return Err(fail(&format!(
                    "timed out after {} s",
                    self.app.cfg.command_timeout.as_secs()
                )));
            }
            if code != 0 {
                return Err(fail(&format!("git exited with status {code}")));
            }
        }
        drop(grant);
        meta.insert("commit".into(), json!(commit));
        self.commits.insert(
            full.clone(),
            RepoCommit {
                branch: branch.clone(),
                commit: commit.clone(),
            },
        );
        log.line(&format!(
            "cloned {full} into {dir} at {branch} ({commit}); origin is {}",
            src.display()
        ));
        Ok(())
    }

    async fn init_repo(
        &mut self,
        i: usize,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let agent = self.agent()?;
        let repo = self.repo(i);
        let full = repo.full_name.clone();
        meta.insert("repo".into(), json!(full));
        meta.insert("hooks".into(), json!(0));
        let dir = format!("/home/{}", repo.dir_name());
        let path = format!("{dir}/.capy/settings.json");
        let Some(bytes) = agent
            .read_file(&path)
            .await
            .map_err(|e| format!("could not read {path}: {e}"))?
        else {
            log.line(&format!(
                "{full} has no .capy/settings.json; no hooks to run"
            ));
            return Ok(());
        };
        let hooks = match settings::setup_hooks(&bytes) {
            Ok(Some(h)) => h,
            Ok(None) => {
                log.line(&format!(
                    "the .capy/settings.json of {full} has no hooks.setup; no hooks to run"
                ));
                return Ok(());
            }
            Err(e) => return Err(format!("{e} in .capy/settings.json of {full}")),
        };
        meta.insert("hooks".into(), json!(hooks.len()));
        let cmds: Vec<SetupCommand> = hooks
            .into_iter()
            .map(|h| SetupCommand {
                name: String::new(),
                command: h,
                background: None,
            })
            .collect();
        self.run_commands(log, &cmds, &dir, &format!("hooks.setup of {full}"))
            .await
    }

    /// Runs commands in order; the first that fails (or times out) fails the step.
    async fn run_commands(
        &mut self,
        log: &mut StepLog,
        cmds: &[SetupCommand],
        cwd: &str,
        what: &str,
    ) -> Result<(), String> {
        if cmds.is_empty() {
            log.line(&format!("no {what} are configured; nothing to run"));
            return Ok(());
        }
        let agent = self.agent()?;
        let timeout = self.app.cfg.command_timeout;
        let mut started_background = false;
        for (index, c) in cmds.iter().enumerate() {
            let label = label(c);
            log.line(&format!("$ {label}"));
            if c.background == Some(true) {
                let file = format!("/var/log/warmpool/{}.log", log_name(&c.name, index));
                let req = AgentExecRequest {
                    command: Some(c.command.clone()),
                    cwd: Some(cwd.into()),
                    background_log: Some(file.clone()),
                    ..Default::default()
                };
                let res = agent
                    .exec(req)
                    .await
                    .map_err(|e| format!("could not start background command `{label}`: {e}"))?;
                log.push(&res.output);
                self.background.insert(file, label);
                started_background = true;
                continue;
            }
            let req = AgentExecRequest {
                command: Some(c.command.clone()),
                cwd: Some(cwd.into()),
                timeout_ms: Some(timeout.as_millis() as u64),
                ..Default::default()
            };
            let (code, timed_out) = self.exec_logged(log, req, &label).await?;
            if timed_out {
                return Err(format!(
                    "timed out after {} s: `{label}`",
                    timeout.as_secs()
                ));
            }
            if code != 0 {
                return Err(format!("command `{label}` exited with status {code}"));
            }
        }
        if started_background {
            // A service that cannot start (its port taken, say) fails the step that started it.
            self.check_background(log, &mut Map::new()).await?;
        }
        Ok(())
    }

    /// Fails when a background command has ended with a non-zero status, naming it and putting
    /// the end of its log into the step's output. Each gets up to [`BACKGROUND_SETTLE`] from its
    /// start to die: a service that cannot start dies in its first moments.
    async fn check_background(
        &mut self,
        log: &mut StepLog,
        meta: &mut Map<String, Value>,
    ) -> Result<(), String> {
        if self.background.is_empty() {
            return Ok(());
        }
        let agent = self.agent()?;
        let all = agent
            .background(BACKGROUND_SETTLE)
            .await
            .map_err(|e| format!("could not ask the VM about its background commands: {e}"))?;
        meta.insert(
            "backgroundRunning".into(),
            json!(all.iter().filter(|b| b.exit_code.is_none()).count()),
        );
        let Some((b, code)) = all
            .iter()
            .find_map(|b| b.exit_code.filter(|c| *c != 0).map(|c| (b, c)))
        else {
            return Ok(());
        };
        let label = self
            .background
            .get(&b.log)
            .cloned()
            .unwrap_or_else(|| b.log.clone());
        log.line(&format!("--- the end of {} ---", b.log));
        // argv, not a shell line: the log's name came from the command's name.
        let tail = AgentExecRequest {
            argv: Some(
                ["tail", "-n", "40", "--", b.log.as_str()]
                    .map(String::from)
                    .to_vec(),
            ),
            timeout_ms: Some(10_000),
            ..Default::default()
        };
        match agent.exec(tail).await {
            Ok(r) => {
                log.push(&r.output);
                if !r.output.ends_with('\n') {
                    log.line("");
                }
            }
            Err(e) => log.line(&format!("(the log could not be read: {e})")),
        }
        Err(format!(
            "background command `{label}` exited with status {code}"
        ))
    }

    /// Runs one command in the VM with its output going to the step log; answers its exit code and
    /// whether it timed out.
    async fn exec_logged(
        &mut self,
        log: &mut StepLog,
        req: AgentExecRequest,
        label: &str,
    ) -> Result<(i32, bool), String> {
        let agent = self.agent()?;
        // The agent enforces the command's own timeout; this bound is for a VM that goes silent.
        let guard = Duration::from_millis(req.timeout_ms.unwrap_or(0)) + Duration::from_secs(60);
        let mut exit: Option<(i32, bool)> = None;
        let mut spawn_error: Option<String> = None;
        let mut on_event = |ev| match ev {
            AgentExecEvent::Output { data } => log.push(&data),
            AgentExecEvent::Exit {
                exit_code,
                timed_out,
                ..
            } => exit = Some((exit_code, timed_out)),
            AgentExecEvent::SpawnError { message } => spawn_error = Some(message),
            AgentExecEvent::Started { .. } => {}
        };
        let call = agent.exec_stream(req, &mut on_event);
        match tokio::time::timeout(guard, call).await {
            Err(_) => return Err(format!("the VM stopped answering while running `{label}`")),
            Ok(Err(e)) => {
                return Err(format!(
                    "lost contact with the VM's server while running `{label}`: {e}"
                ))
            }
            Ok(Ok(())) => {}
        }
        if let Some(m) = spawn_error {
            log.line(&m);
            return Err(format!("could not start `{label}`: {m}"));
        }
        exit.ok_or_else(|| format!("the VM's server gave no exit status for `{label}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_counts() {
        assert_eq!(steps_for(0).len(), 5);
        assert_eq!(
            steps_for(2).len() as u32,
            warmpool_types::state::total_steps(2)
        );
        let names: Vec<&str> = steps_for(2).iter().map(|s| s.name().as_str()).collect();
        assert_eq!(
            names,
            [
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
                "warm_pool_setup"
            ]
        );
    }

    #[test]
    fn the_step_a_boot_was_in() {
        assert_eq!(step_at(5, 0), Some(StepName::CreateVm));
        assert_eq!(step_at(5, 4), Some(StepName::WarmPoolSetup));
        assert_eq!(step_at(5, 5), None);
        assert_eq!(step_at(8, 3), Some(StepName::CloneRepo));
        assert_eq!(step_at(8, 5), Some(StepName::ProjectSetup));
        assert_eq!(step_at(7, 0), None);
        assert_eq!(step_at(0, 0), None);
    }

    #[test]
    fn labels_are_one_line() {
        assert_eq!(one_line("a\nb", 10), "a …");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(log_name("npm ci / dev", 0), "npm_ci___dev");
        assert_eq!(log_name("../..", 2), "command-2");
    }
}
