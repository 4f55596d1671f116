//! Running a boot for the app: the pipeline reports through [`StoreRecorder`] (the store and the
//! live event stream) and fetches through [`MirrorRepos`] (the server's git mirrors); when it
//! ends, [`App::settle`] alone decides what that means — the instance's new status, the pool's
//! bookkeeping, the golden to save, the VM to destroy.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use warmpool_backend::Backend;
use warmpool_store::{GoldenRow, InstanceRow, StepRow, Store};
use warmpool_types::events::{DoneEvent, Event, OutputEvent, StepEvent};
use warmpool_types::state::{InstanceKind, InstanceStatus, StepName, StepStatus};

use super::clock::Clock;
use super::events::LiveRun;
use super::{summary, App};
use crate::git::mirror::Mirrors;
use crate::git::serve::GitServer;
use crate::git::source::RepoSource;
use crate::metrics as m;
use crate::provision::recorder::{FinishedStep, RunRecorder};
use crate::provision::repos::{RepoAccess, RepoHead};
use crate::provision::{self, BootPlan, BootTarget, Outcome};
use crate::sealed::Sealer;

/// Records one boot: each step into the store, everything into its live stream.
pub(crate) struct StoreRecorder {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub sealer: Arc<Sealer>,
    pub live: Arc<LiveRun>,
    pub instance_id: String,
}

#[async_trait]
impl RunRecorder for StoreRecorder {
    fn step_started(&self, name: StepName) {
        self.live.publish(Event::Step(StepEvent {
            instance_id: self.instance_id.clone(),
            name,
            status: StepStatus::Running,
            metadata: Default::default(),
            duration_ms: None,
            error: None,
        }));
    }

    fn output(&self, step: StepName, text: &str) {
        self.live.publish(Event::Output(OutputEvent {
            instance_id: self.instance_id.clone(),
            step,
            data: text.to_string(),
        }));
    }

    async fn step_finished(&self, s: &FinishedStep) -> Result<(), String> {
        let row = StepRow {
            instance_id: self.instance_id.clone(),
            seq: s.seq,
            name: s.name.as_str().to_string(),
            success: s.error.is_none(),
            output: Some(s.output.clone()),
            error: s.error.clone(),
            duration_ms: s.duration_ms,
            finished_at: self.clock.now_ms(),
            metadata: Some(s.metadata.clone()),
        };
        self.store
            .insert_step(&row)
            .await
            .map_err(|e| e.to_string())?;
        self.live.publish(Event::Step(StepEvent {
            instance_id: self.instance_id.clone(),
            name: s.name,
            status: s.result.into(),
            metadata: s.metadata.clone(),
            duration_ms: Some(s.duration_ms),
            error: s.error.clone(),
        }));
        Ok(())
    }

    async fn vm_created(&self, agent_url: &str, token: &str) -> Result<(), String> {
        self.store
            .set_instance_agent(&self.instance_id, agent_url, &self.sealer.seal(token))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A boot's way to the repositories: the server's mirrors, served to VMs by its git server.
pub(crate) struct MirrorRepos {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub mirrors: Arc<Mirrors>,
    pub git: Arc<GitServer>,
    pub backend: Arc<dyn Backend>,
}

#[async_trait]
impl RepoAccess for MirrorRepos {
    async fn head(
        &self,
        src: &RepoSource,
        branch: Option<&str>,
        since: std::time::Instant,
        log: &mut (dyn for<'l> FnMut(&'l str) + Send),
    ) -> Result<RepoHead, String> {
        let synced = self.mirrors.sync(src, since, log).await?;
        if let Some(d) = &synced.default_branch {
            let _ = self
                .store
                .set_default_branch(&src.key, d, self.clock.now_ms())
                .await;
        }
        let branch = branch
            .map(str::to_string)
            .or(synced.default_branch.clone())
            .ok_or("the repository has no default branch (is it empty?); set a branch")?;
        // The mirror stays still (no fetch moves it) while the VM fetches from it.
        let still = self.mirrors.read(&synced.id).await;
        let commit = match self.mirrors.resolve(&synced.id, &branch).await {
            Some(c) => c,
            None if Some(&branch) == synced.default_branch.as_ref() => {
                return Err("the repository has no commits".into())
            }
            None => return Err(format!("branch `{branch}` not found")),
        };
        let grant = self.git.grant([synced.id.clone()]);
        let url = grant.url(self.backend.host_address_for_vm(), &synced.id);
        Ok(RepoHead {
            branch,
            commit,
            url,
            hold: Box::new((still, grant)),
        })
    }

    fn prefetch(&self, src: &RepoSource) {
        let (mirrors, src) = (self.mirrors.clone(), src.clone());
        // Its failure is the boot's to report: `clone_repo` fetches again and says why.
        crate::tasks::spawn("mirror prefetch", async move {
            let _ = mirrors
                .sync(&src, std::time::Instant::now(), &mut |_| {})
                .await;
        });
    }
}

impl App {
    /// Runs a recorded instance's pipeline to its end (or until `cancel`), then settles it.
    pub(crate) async fn run_boot(
        self: Arc<Self>,
        inst: InstanceRow,
        plan: BootPlan,
        cancel: CancellationToken,
        live: Arc<LiveRun>,
        slot: Option<super::limits::ColdSlot>,
    ) {
        let recorder = Arc::new(StoreRecorder {
            store: self.store.clone(),
            clock: self.clock.clone(),
            sealer: self.sealer.clone(),
            live: live.clone(),
            instance_id: inst.id.clone(),
        });
        let target = BootTarget {
            instance_id: inst.id.clone(),
            vm_id: inst.vm_id.clone(),
            kind: inst.kind,
        };
        let outcome = provision::run(&self.boot, &target, &plan, recorder, &cancel).await;
        // The boot is over: a claim of its project may boot another from now on, before anyone
        // can see the instance settled below.
        drop(slot);
        self.settle(&inst, &plan, outcome).await;
        self.publish_done(&inst.id, &live).await;
        self.events.finish(&inst.id);
        self.nudge();
    }

    /// What a boot's end means: `ready` (or `claimed`, for an instance booted for a claim), or
    /// `failed` with its VM destroyed, or — when it was cancelled because the instance was
    /// destroyed meanwhile — just the VM destroyed. The pool learns of it too.
    async fn settle(&self, inst: &InstanceRow, plan: &BootPlan, outcome: Outcome) {
        let kind = inst.kind.as_str();
        let config = plan.config_hash();
        // A golden's boot ends by saving its VM as the golden.
        let outcome = match outcome {
            Outcome::Ready { commits } if inst.kind == InstanceKind::Golden => {
                match self.save_golden(inst, &config, &commits).await {
                    Ok(()) => Outcome::Ready { commits },
                    Err(error) => Outcome::Failed {
                        step: StepName::WarmPoolSetup,
                        error,
                    },
                }
            }
            other => other,
        };
        match outcome {
            Outcome::Ready { commits } => {
                let claimed = inst.kind == InstanceKind::Cold;
                // Every step passed: the pool's setup works (recorded first, like failures).
                if matches!(
                    inst.kind,
                    InstanceKind::Pool | InstanceKind::Test | InstanceKind::Golden
                ) {
                    self.pool_boot_succeeded(&inst.project_id).await;
                }
                match self
                    .store
                    .mark_ready(&inst.id, self.now(), &commits, claimed)
                    .await
                {
                    Ok(true) => {
                        tracing::info!(instance = %inst.id, vm = %inst.vm_id, claimed, "instance ready");
                        metrics::counter!(m::BOOTS, "kind" => kind, "result" => "ready")
                            .increment(1);
                    }
                    // Destroyed while its last step ran.
                    Ok(false) => self.destroy_vm(inst).await,
                    Err(e) => {
                        tracing::error!(instance = %inst.id, "cannot mark the instance ready: {e}");
                        self.destroy_vm(inst).await;
                        let _ = self
                            .store
                            .mark_failed(
                                &inst.id,
                                None,
                                "internal error: could not record readiness",
                                self.now(),
                            )
                            .await;
                    }
                }
            }
            Outcome::Failed { step, error } => {
                tracing::info!(instance = %inst.id, %step, %error, "instance failed");
                metrics::counter!(m::BOOTS, "kind" => kind, "result" => "failed").increment(1);
                // VM first: once the record says failed, the VM is gone. A crash in between
                // leaves the instance provisioning, which the next start fails.
                self.destroy_vm(inst).await;
                // The pool learns of the failure before the instance stops counting as a boot,
                // so the reconciler never sees a free slot without the backoff that goes with it.
                if matches!(inst.kind, InstanceKind::Pool | InstanceKind::Golden) {
                    self.pool_boot_failed(&inst.project_id, step.as_str(), &config, &error)
                        .await;
                }
                if let Err(e) = self
                    .store
                    .mark_failed(&inst.id, Some(step.as_str()), &error, self.now())
                    .await
                {
                    tracing::error!(instance = %inst.id, "cannot mark the instance failed: {e}");
                }
            }
            Outcome::Cancelled { step } => {
                tracing::info!(instance = %inst.id, %step, "provisioning stopped: the instance was destroyed");
                self.destroy_vm(inst).await;
            }
        }
    }

    /// A boot whose own settling panicked. If its instance is still `provisioning` (or was
    /// destroyed meanwhile), its VM goes; one still provisioning fails with the reason, after the
    /// pool's bookkeeping, so the pool backs off and replaces it like any failure. An instance
    /// already settled (ready, claimed, failed) keeps its VM and its record.
    pub(crate) async fn boot_panicked(
        &self,
        inst: &InstanceRow,
        config: &str,
        msg: &str,
        live: &LiveRun,
    ) {
        let reason = format!("internal error: the boot stopped unexpectedly ({msg})");
        let status = match self.store.get_instance(&inst.id).await {
            Ok(Some(now)) => Some(now.status),
            Ok(None) => Some(InstanceStatus::Destroyed),
            // Unknown: leave it to the next start's recovery rather than guess.
            Err(e) => {
                tracing::error!(instance = %inst.id, "cannot read a panicked boot's instance: {e}");
                None
            }
        };
        match status {
            Some(InstanceStatus::Provisioning) => {
                self.destroy_vm(inst).await;
                if matches!(inst.kind, InstanceKind::Pool | InstanceKind::Golden) {
                    self.pool_boot_failed(&inst.project_id, "internal", config, &reason)
                        .await;
                }
                if let Err(e) = self
                    .store
                    .mark_failed(&inst.id, None, &reason, self.now())
                    .await
                {
                    tracing::error!(instance = %inst.id, "cannot mark the instance failed: {e}");
                }
            }
            Some(InstanceStatus::Destroyed) => self.destroy_vm(inst).await,
            _ => {}
        }
        self.publish_done(&inst.id, live).await;
        self.events.finish(&inst.id);
        self.nudge();
    }

    /// Saves a golden boot's VM as the golden its pool's VMs will be cloned from.
    async fn save_golden(
        &self,
        inst: &InstanceRow,
        config: &str,
        commits: &std::collections::BTreeMap<String, warmpool_store::RepoCommit>,
    ) -> Result<(), String> {
        let started = Instant::now();
        if let Err(e) = self.backend.save_golden(&inst.vm_id, &inst.id).await {
            return Err(format!(
                "could not save the VM as the pool's golden: {}",
                e.message
            ));
        }
        let row = GoldenRow {
            id: inst.id.clone(),
            project_id: inst.project_id.clone(),
            config_hash: config.to_string(),
            backend: self.backend.name().to_string(),
            commits: commits.clone(),
            ready: true,
            created_at: self.now(),
            node: Some(self.cfg.node.name.clone()),
        };
        if let Err(e) = self.store.insert_golden(&row).await {
            let _ = self.backend.delete_golden(&inst.id).await;
            return Err(format!("internal error: could not record the golden: {e}"));
        }
        tracing::info!(golden = %inst.id, ms = started.elapsed().as_millis() as u64, "saved the pool's golden");
        Ok(())
    }

    async fn destroy_vm(&self, inst: &InstanceRow) {
        if let Err(e) = self.backend.destroy(&inst.vm_id).await {
            tracing::warn!(vm = %inst.vm_id, "destroying the VM failed: {e}");
        }
    }

    /// The final event, with the summary as the store now has it.
    async fn publish_done(&self, instance_id: &str, live: &LiveRun) {
        // Side by side: a claim waiting for this boot answers once both are read.
        let (Ok(Some(inst)), Ok(steps)) = tokio::join!(
            self.store.get_instance(instance_id),
            self.store.list_steps(instance_id),
        ) else {
            return;
        };
        live.publish(Event::Done(DoneEvent {
            instance_id: inst.id.clone(),
            status: inst.status,
            summary: summary(&inst, &steps),
        }));
    }
}
