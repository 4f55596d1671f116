//! The eight kinds of provisioning step, one file each. A step is a small type with a stable
//! name that says what it does on a fresh VM ([`Step::run`]) and on a VM cloned from the pool's
//! golden ([`Step::on_clone`]); it sees only a [`StepCx`]: the boot's plan, the VM, the backend,
//! the repositories and where to log.

mod clone_repo;
mod commands;
mod create_vm;
mod ensure_server;
mod init_repo;
mod project_setup;
mod repo_setup;
mod set_env_vars;
mod warm_pool_setup;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use warmpool_backend::Agent;
use warmpool_store::{RepoCommit, RepoSpec};
use warmpool_types::state::StepName;

use super::recorder::RunRecorder;
use super::steplog::StepLog;
use super::{BootPlan, BootTarget, GoldenPlan, Services};

pub use clone_repo::CloneRepo;
pub(crate) use commands::one_line;
pub use create_vm::CreateVm;
pub use ensure_server::EnsureServer;
pub use init_repo::InitRepo;
pub use project_setup::ProjectSetup;
pub use repo_setup::RepoSetup;
pub use set_env_vars::SetEnvVars;
pub use warm_pool_setup::WarmPoolSetup;

/// What the steps of one boot build up as they go.
#[derive(Default)]
pub struct VmState {
    /// The VM's agent, once `create_vm` made the VM.
    pub agent: Option<Arc<dyn Agent>>,
    /// What each repo was cloned at, recorded with the instance when it is ready.
    pub commits: BTreeMap<String, RepoCommit>,
    /// The background commands started so far, by log file: how errors name them.
    pub background: BTreeMap<String, String>,
}

/// What a step may use and where it reports.
pub struct StepCx<'a> {
    /// When the pipeline began: a repository as it was then, or newer, will do.
    pub began: std::time::Instant,
    pub target: &'a BootTarget,
    pub plan: &'a BootPlan,
    pub svc: &'a Services,
    pub recorder: &'a dyn RunRecorder,
    pub vm: &'a mut VmState,
    pub log: &'a mut StepLog,
    pub meta: &'a mut Map<String, Value>,
}

impl StepCx<'_> {
    pub fn agent(&self) -> Result<Arc<dyn Agent>, String> {
        self.vm
            .agent
            .clone()
            .ok_or_else(|| "the VM's server is not available".to_string())
    }

    pub fn repo(&self, i: usize) -> Result<&RepoSpec, String> {
        self.plan
            .project
            .repos
            .get(i)
            .ok_or_else(|| format!("internal error: the project has no repository #{i}"))
    }
}

#[async_trait]
pub trait Step: Send + Sync {
    fn name(&self) -> StepName;

    /// Does the step on a VM being set up from scratch.
    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String>;

    /// Does the step on a clone of the pool's golden. By default the golden did it: its record
    /// is repeated, marked `fromGolden`.
    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        from_golden(self.name(), None, cx, golden);
        Ok(())
    }
}

/// The steps for a project of `repos` repositories, in pipeline order: `5 + 3 × repos` of them.
pub fn pipeline(repos: usize) -> Vec<Box<dyn Step>> {
    let mut s: Vec<Box<dyn Step>> = vec![
        Box::new(CreateVm),
        Box::new(EnsureServer),
        Box::new(SetEnvVars),
    ];
    s.extend((0..repos).map(|i| Box::new(CloneRepo(i)) as Box<dyn Step>));
    s.extend((0..repos).map(|i| Box::new(InitRepo(i)) as Box<dyn Step>));
    s.push(Box::new(ProjectSetup));
    s.extend((0..repos).map(|i| Box::new(RepoSetup(i)) as Box<dyn Step>));
    s.push(Box::new(WarmPoolSetup));
    s
}

/// Records a step the golden already did: the golden's own record of it — found by name and, for
/// a repository's step, by repository — lends its metadata, and the log says where it ran.
pub(crate) fn from_golden(
    name: StepName,
    repo: Option<&str>,
    cx: &mut StepCx<'_>,
    golden: &GoldenPlan,
) {
    let done = golden.steps.iter().find(|s| {
        s.name == name.as_str()
            && repo.is_none_or(|r| {
                s.metadata
                    .as_ref()
                    .and_then(|m| m.get("repo"))
                    .and_then(Value::as_str)
                    == Some(r)
            })
    });
    if let Some(m) = done.and_then(|d| d.metadata.as_ref()) {
        cx.meta.extend(m.clone());
    }
    cx.meta.insert("fromGolden".into(), json!(golden.golden.id));
    cx.log.line(&format!(
        "done in golden {} (its own step log has the details); this configuration has not changed since",
        golden.golden.id
    ));
}

#[cfg(test)]
pub(crate) mod testing;
