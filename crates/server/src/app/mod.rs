//! The use cases of warmpool: configure projects and pools, start test boots, read instances, run
//! commands in VMs, clean up. Never talks HTTP and never builds SQL: handlers call in here, and
//! this calls the store, the backend and the provisioner.

mod devbox;
mod env;
mod instances;
mod projects;
mod validation;
mod warm_pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warmpool_backend::Backend;
use warmpool_store::{InstanceRow, Store};
use warmpool_types::ids;
use warmpool_types::state::{total_steps, InstanceKind, InstanceStatus};
use warmpool_types::time::now_ms;

use crate::error::{AppError, AppResult};
use crate::git::mirror::Mirrors;
use crate::git::serve::GitServer;
use crate::provision::{self, BootPlan};

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
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            warm_pool_allowed: true,
            test_instance_ttl: Duration::from_secs(15 * 60),
            command_timeout: Duration::from_secs(30 * 60),
            server_wait: Duration::from_secs(120),
            exec_default_timeout: Duration::from_secs(600),
        }
    }
}

pub struct App {
    /// SHA-256 of the admin token; the token itself is never kept.
    admin_token_hash: [u8; 32],
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    pub cfg: AppConfig,
    pub mirrors: Arc<Mirrors>,
    pub git: Arc<GitServer>,
    /// Pipelines running in this process, by instance id, to stop them when their instance goes.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl App {
    pub fn new(
        admin_token: &str,
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        cfg: AppConfig,
        mirrors: Arc<Mirrors>,
        git: Arc<GitServer>,
    ) -> Arc<Self> {
        Arc::new(Self {
            admin_token_hash: hash_token(admin_token),
            store,
            backend,
            cfg,
            mirrors,
            git,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Who a bearer token belongs to.
    pub fn authenticate(&self, token: Option<&str>) -> AppResult<Caller> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(AppError::Unauthorized(
                "missing token: send `Authorization: Bearer <token>`".into(),
            ));
        };
        if bool::from(hash_token(token).ct_eq(&self.admin_token_hash)) {
            return Ok(Caller::Admin);
        }
        Err(AppError::Unauthorized("unknown or revoked token".into()))
    }

    /// Loads what a boot of `project_id` needs, as it is right now.
    async fn plan(&self, project_id: &str) -> AppResult<BootPlan> {
        let project = self
            .store
            .get_project(project_id)
            .await?
            .ok_or_else(|| AppError::not_found("project not found"))?;
        let env = self.store.list_env_vars(project_id).await?;
        let pool = self.store.get_pool_config(project_id).await?;
        Ok(BootPlan {
            project,
            env,
            pool_branch: pool.as_ref().and_then(|p| p.branch.clone()),
            pool_commands: pool.and_then(|p| p.setup_commands).unwrap_or_default(),
        })
    }

    /// Records a new instance and starts its pipeline in the background.
    pub(crate) async fn launch(
        self: &Arc<Self>,
        project_id: &str,
        kind: InstanceKind,
    ) -> AppResult<InstanceRow> {
        let plan = self.plan(project_id).await?;
        let inst = InstanceRow {
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
            config_hash: None,
            task_id: None,
            created_at: now_ms(),
            provisioned_at: None,
            finished_at: None,
            claimed_at: None,
            destroyed_at: None,
        };
        self.store.insert_instance(&inst).await?;
        let cancel = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inst.id.clone(), cancel.clone());
        let app = self.clone();
        let row = inst.clone();
        tokio::spawn(async move {
            provision::run(app.clone(), row.clone(), plan, cancel).await;
            app.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&row.id);
        });
        Ok(inst)
    }

    /// Ends an instance: marks it destroyed (if it is in one of `from`), then stops its pipeline —
    /// which destroys its VM — or destroys the VM directly. False if it was not in `from`.
    pub(crate) async fn destroy_instance(
        &self,
        inst: &InstanceRow,
        from: &[InstanceStatus],
    ) -> AppResult<bool> {
        if !self.store.mark_destroyed(&inst.id, from, now_ms()).await? {
            return Ok(false);
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
        Ok(true)
    }

    /// After a start: fails instances a dead server left provisioning and destroys VMs that no
    /// live instance owns.
    pub async fn recover(&self) -> AppResult<()> {
        let now = now_ms();
        for inst in self
            .store
            .instances_in(&[InstanceStatus::Provisioning])
            .await?
        {
            if self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&inst.id)
            {
                continue;
            }
            if self
                .store
                .mark_failed(&inst.id, None, "server restarted during provisioning", now)
                .await?
            {
                tracing::warn!(instance = %inst.id, "failed an instance left provisioning by a previous run");
            }
        }
        let live: std::collections::HashSet<String> = self
            .store
            .instances_in(&[
                InstanceStatus::Provisioning,
                InstanceStatus::Ready,
                InstanceStatus::Claimed,
            ])
            .await?
            .into_iter()
            .filter(|i| {
                i.status != InstanceStatus::Provisioning
                    || self
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&i.id)
            })
            .map(|i| i.vm_id)
            .collect();
        let vms = self
            .backend
            .list()
            .await
            .map_err(|e| AppError::Unavailable(format!("cannot list VMs: {e}")))?;
        for vm in vms {
            if !live.contains(&vm) {
                tracing::warn!(%vm, "destroying a VM no live instance owns");
                if let Err(e) = self.backend.destroy(&vm).await {
                    tracing::warn!(%vm, "destroying an orphaned VM failed: {e}");
                }
            }
        }
        Ok(())
    }

    /// Destroys test instances whose time is up. Returns how many.
    pub async fn expire_test_instances(&self) -> AppResult<usize> {
        let ttl = self.cfg.test_instance_ttl.as_millis() as i64;
        let now = now_ms();
        let mut n = 0;
        for inst in self
            .store
            .instances_in(&[InstanceStatus::Ready, InstanceStatus::Failed])
            .await?
        {
            let due =
                inst.kind == InstanceKind::Test && inst.finished_at.is_some_and(|t| t + ttl <= now);
            if due
                && self
                    .destroy_instance(&inst, &[InstanceStatus::Ready, InstanceStatus::Failed])
                    .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}
