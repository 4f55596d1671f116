//! The provisioning pipeline (the README's "What a boot does"): eight kinds of step, in order,
//! each a unit of its own under [`steps`]. Every step is reported when it ends — output redacted and capped, a
//! one-line error a person can act on, metadata — so the instance detail reads as a step-by-step
//! log. The pipeline only runs steps and says how the boot ended ([`Outcome`]); what that means
//! for the instance, its pool and its VM is the app's to decide.

pub mod envfile;
pub mod recorder;
pub mod redact;
pub mod repos;
pub mod settings;
pub mod steplog;
pub mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use warmpool_backend::Backend;
use warmpool_store::{EnvVarRow, GoldenRow, ProjectRow, RepoCommit, StepRow};
use warmpool_types::api::SetupCommand;
use warmpool_types::state::{InstanceKind, StepName, StepResult};

use crate::git::source::RepoSource;
use crate::metrics as m;
use recorder::{FinishedStep, RunRecorder};
use redact::Redactor;
use repos::RepoAccess;
use steplog::{OutputSink, StepLog};
use steps::{Step, StepCx, VmState};

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

/// What every boot of this server uses: the backend, the repositories, the bounds.
#[derive(Clone)]
pub struct Services {
    pub backend: Arc<dyn Backend>,
    pub repos: Arc<dyn RepoAccess>,
    pub timeouts: Timeouts,
    /// The host's services a VM may reach (the git mirror's port).
    pub host_ports: Vec<u16>,
    /// Host paths shown in output as labels (`(text, replacement)`), not as they are.
    pub host_paths: Vec<(String, String)>,
}

/// How long a boot waits for things.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Each setup command (and each git command).
    pub command: Duration,
    /// The VM's agent to answer after the VM was created.
    pub server_wait: Duration,
}

/// The instance a boot is for.
#[derive(Debug, Clone)]
pub struct BootTarget {
    pub instance_id: String,
    pub vm_id: String,
    pub kind: InstanceKind,
}

/// How a pipeline ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step passed; each repository is at these commits.
    Ready {
        commits: BTreeMap<String, RepoCommit>,
    },
    /// A step failed (its record says how); the VM, if any, is still there.
    Failed { step: StepName, error: String },
    /// Cancelled while this step ran (the instance was destroyed, the server is stopping): the
    /// step has no record; the VM, if any, is still there.
    Cancelled { step: StepName },
}

/// The name of the step at position `seq` of a pipeline of `total_steps` steps (`5 + 3R`), to
/// tell which step a boot was in when its server stopped.
pub fn step_at(total_steps: u32, seq: usize) -> Option<StepName> {
    let repos = total_steps.checked_sub(5).filter(|r| r % 3 == 0)? / 3;
    steps::pipeline(repos as usize).get(seq).map(|s| s.name())
}

/// Runs every step of `plan` for `target`, reporting to `recorder`, and says how it ended. It
/// stops at the first failure; a panic in a step fails that step with an internal error, like
/// any failure; `cancel` stops the step that is running, at once.
pub async fn run(
    svc: &Services,
    target: &BootTarget,
    plan: &BootPlan,
    recorder: Arc<dyn RunRecorder>,
    cancel: &CancellationToken,
) -> Outcome {
    let redactor = Arc::new(redactor_for(plan, &svc.host_paths));
    let mut vm = VmState::default();
    // The mirrors are brought up to date while the VM is made: `clone_repo` then finds them so.
    let began = Instant::now();
    for src in &plan.sources {
        svc.repos.prefetch(src);
    }
    for (seq, step) in steps::pipeline(plan.project.repos.len()).iter().enumerate() {
        let name = step.name();
        let started = Instant::now();
        recorder.step_started(name);
        let sink = OutputSink {
            recorder: recorder.clone(),
            step: name,
        };
        let mut log = StepLog::new(redactor.clone(), Some(sink));
        let mut meta = Map::new();
        let res = {
            let mut cx = StepCx {
                began,
                target,
                plan,
                svc,
                recorder: &*recorder,
                vm: &mut vm,
                log: &mut log,
                meta: &mut meta,
            };
            tokio::select! {
                // A step that finished before the cancel was seen is recorded as it ended.
                biased;
                res = run_one(step.as_ref(), &mut cx, plan.golden.as_ref()) => res,
                () = cancel.cancelled() => return Outcome::Cancelled { step: name },
            }
        };
        let error = res.err().map(|e| steps::one_line(&log.redact(&e), 500));
        let duration_ms = started.elapsed().as_millis() as u64;
        let result = StepResult::from_success(error.is_none());
        metrics::histogram!(m::STEP_SECONDS, "step" => name.as_str(), "result" => result.as_str())
            .record(duration_ms as f64 / 1000.0);
        let record = FinishedStep {
            seq: seq as u32,
            name,
            result,
            output: log.finish(),
            error: error.clone(),
            duration_ms,
            metadata: meta,
        };
        if let Err(e) = recorder.step_finished(&record).await {
            tracing::error!(instance = %target.instance_id, "cannot record step {name}: {e}");
            return Outcome::Failed {
                step: name,
                error: "internal error: could not record the step".into(),
            };
        }
        if let Some(error) = error {
            metrics::counter!(m::STEP_FAILURES, "step" => name.as_str()).increment(1);
            return Outcome::Failed { step: name, error };
        }
    }
    Outcome::Ready {
        commits: vm.commits,
    }
}

/// One step, fresh or on a golden's clone; a panic becomes the step's error.
pub(crate) async fn run_one(
    step: &dyn Step,
    cx: &mut StepCx<'_>,
    golden: Option<&GoldenPlan>,
) -> Result<(), String> {
    let fut = async {
        match golden {
            Some(g) => step.on_clone(cx, g).await,
            None => step.run(cx).await,
        }
    };
    crate::tasks::catch("step", fut)
        .await
        .unwrap_or_else(|what| {
            Err(format!(
                "internal error: the step stopped unexpectedly ({what})"
            ))
        })
}

/// Everything secret a boot may show: the project's variables and the repositories' credentials,
/// each replaced by its name; host paths by their labels.
fn redactor_for(plan: &BootPlan, host_paths: &[(String, String)]) -> Redactor {
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
    Redactor::with_literals(
        plan.env
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .chain(secrets.iter().map(|(n, s)| (n.as_str(), s.as_str()))),
        host_paths,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_counts() {
        assert_eq!(steps::pipeline(0).len(), 5);
        assert_eq!(
            steps::pipeline(2).len() as u32,
            warmpool_types::state::total_steps(2)
        );
        let names: Vec<&str> = steps::pipeline(2)
            .iter()
            .map(|s| s.name().as_str())
            .collect();
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
}
