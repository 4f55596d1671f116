//! The compatible warm-pool use cases: read and change the pool's configuration, start test boots,
//! clear the pool.

use std::sync::Arc;

use warmpool_store::PoolConfigRow;
use warmpool_types::api::{
    ClearWarmPoolBody, ClearWarmPoolResponse, GetWarmPoolResponse, PoolMetadata,
    TestWarmPoolBootBody, TestWarmPoolBootResponse, UpdateWarmPoolBody, UpdateWarmPoolResponse,
    WarmPoolConfig,
};
use warmpool_types::state::{EndReason, InstanceKind, InstanceStatus};
use warmpool_types::time::fmt_ms;

use super::{check_branch, check_commands, whole_in_range, App, Caller};
use crate::error::{AppError, AppResult, Problems};

pub const DEFAULT_TARGET_SIZE: u32 = 1;
pub const DEFAULT_MAX_AGE_MINUTES: u32 = 60;

fn config_view(c: &PoolConfigRow) -> WarmPoolConfig {
    WarmPoolConfig {
        enabled: c.enabled,
        target_size: c.target_size,
        max_age_minutes: c.max_age_minutes,
        branch: c.branch.clone(),
        setup_commands: c.setup_commands.clone(),
        created_at: fmt_ms(c.created_at),
        updated_at: fmt_ms(c.updated_at),
    }
}

impl App {
    pub(crate) fn require_allowed(&self) -> AppResult<()> {
        if self.cfg.warm_pool_allowed {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "warm pools are not allowed on this server (allowed=false)".into(),
            ))
        }
    }

    pub async fn get_warm_pool(
        &self,
        caller: &Caller,
        project_id: &str,
    ) -> AppResult<GetWarmPoolResponse> {
        self.project_for(caller, project_id).await?;
        let config = self.store.get_pool_config(project_id).await?;
        let status = self.store.pool_status(project_id).await?;
        let metadata = match &config {
            Some(_) => {
                let (provisioned, claimed) = self.store.pool_times(project_id).await?;
                Some(PoolMetadata {
                    last_provisioned_at: provisioned.map(fmt_ms),
                    last_claimed_at: claimed.map(fmt_ms),
                })
            }
            None => None,
        };
        Ok(GetWarmPoolResponse {
            allowed: self.cfg.warm_pool_allowed,
            config: config.as_ref().map(config_view),
            status,
            metadata,
        })
    }

    /// Applies a partial update, creating the configuration with defaults on first use (enabled
    /// as `enable_new` says, unless the update says).
    async fn apply_pool_update(
        &self,
        project_id: &str,
        body: &UpdateWarmPoolBody,
        enable_new: bool,
    ) -> AppResult<PoolConfigRow> {
        let mut p = Problems::default();
        let target = body
            .target_size
            .map(|v| whole_in_range(&mut p, "targetSize", v, 1, 20));
        let max_age = body
            .max_age_minutes
            .map(|v| whole_in_range(&mut p, "maxAgeMinutes", v, 30, 180));
        if let Some(Some(b)) = &body.branch {
            check_branch(&mut p, "branch", b);
        }
        if let Some(Some(c)) = &body.setup_commands {
            check_commands(&mut p, "setupCommands", c);
        }
        p.into_result()?;
        for _ in 0..5 {
            let now = self.now();
            let current = self.store.get_pool_config(project_id).await?;
            let expected = current.as_ref().map(|c| c.generation);
            let mut cfg = current.unwrap_or(PoolConfigRow {
                project_id: project_id.to_string(),
                enabled: enable_new,
                target_size: DEFAULT_TARGET_SIZE,
                max_age_minutes: DEFAULT_MAX_AGE_MINUTES,
                branch: None,
                setup_commands: None,
                generation: 0,
                created_at: now,
                updated_at: now,
            });
            if let Some(e) = body.enabled {
                cfg.enabled = e;
            }
            if let Some(t) = target {
                cfg.target_size = t;
            }
            if let Some(m) = max_age {
                cfg.max_age_minutes = m;
            }
            if let Some(b) = &body.branch {
                cfg.branch = b.clone();
            }
            if let Some(c) = &body.setup_commands {
                cfg.setup_commands = c.clone();
            }
            cfg.updated_at = now.max(cfg.updated_at);
            if self.store.put_pool_config(&cfg, expected).await? {
                cfg.generation = expected.unwrap_or(0) + 1;
                return Ok(cfg);
            }
        }
        Err(AppError::Conflict(
            "the pool configuration kept changing while this update was applied; try again".into(),
        ))
    }

    pub async fn update_warm_pool(
        &self,
        caller: &Caller,
        project_id: &str,
        body: UpdateWarmPoolBody,
    ) -> AppResult<UpdateWarmPoolResponse> {
        self.project_for(caller, project_id).await?;
        self.require_allowed()?;
        let cfg = self.apply_pool_update(project_id, &body, true).await?;
        tracing::info!(project = %project_id, "warm pool configuration updated");
        self.nudge();
        Ok(UpdateWarmPoolResponse {
            config: Some(config_view(&cfg)),
            status: self.store.pool_status(project_id).await?,
        })
    }

    pub async fn test_boot(
        self: &Arc<Self>,
        caller: &Caller,
        project_id: &str,
        body: TestWarmPoolBootBody,
    ) -> AppResult<TestWarmPoolBootResponse> {
        self.project_for(caller, project_id).await?;
        self.require_allowed()?;
        if let Some(cmds) = body.setup_commands {
            let update = UpdateWarmPoolBody {
                setup_commands: Some(cmds),
                ..Default::default()
            };
            // Saving the commands of a test boot enables nothing: a pool configured for the first
            // time this way is created disabled, so no VM boots before the user turns it on.
            self.apply_pool_update(project_id, &update, false).await?;
        }
        let inst = self
            .launch(project_id, InstanceKind::Test, None, None, None)
            .await?;
        tracing::info!(project = %project_id, instance = %inst.id, vm = %inst.vm_id, "test boot started");
        Ok(TestWarmPoolBootResponse { id: inst.id })
    }

    pub async fn clear_warm_pool(
        &self,
        caller: &Caller,
        project_id: &str,
        body: ClearWarmPoolBody,
    ) -> AppResult<ClearWarmPoolResponse> {
        self.project_for(caller, project_id).await?;
        // Disabled first: otherwise the reconciler would refill the pool while it is emptied.
        if !body.replenish.unwrap_or(false) {
            let disable = UpdateWarmPoolBody {
                enabled: Some(false),
                ..Default::default()
            };
            if self.store.get_pool_config(project_id).await?.is_some() {
                self.apply_pool_update(project_id, &disable, false).await?;
            }
        }
        let active = [
            InstanceStatus::Ready,
            InstanceStatus::Provisioning,
            InstanceStatus::Failed,
        ];
        let mut cleared = 0;
        for inst in self.store.instances_in(&active).await? {
            if inst.project_id != project_id || inst.kind != InstanceKind::Pool {
                continue;
            }
            // The reconciler empties a disabled pool too, and may have got there first.
            if self
                .destroy_instance(&inst, &active, EndReason::Cleared)
                .await?
                || self
                    .store
                    .get_instance(&inst.id)
                    .await?
                    .is_some_and(|i| i.is_ended())
            {
                cleared += 1;
            }
        }
        tracing::info!(project = %project_id, cleared, "warm pool cleared");
        self.nudge();
        Ok(ClearWarmPoolResponse {
            cleared,
            status: self.store.pool_status(project_id).await?,
        })
    }
}
