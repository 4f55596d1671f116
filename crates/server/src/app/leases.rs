//! Claim leases: how long a project's claimed VMs live unless renewed, and renewals.

use warmpool_types::api::{InstanceLifecycle, Leases, RenewBody, UpdateLeasesBody};
use warmpool_types::state::InstanceStatus;

use super::claim::{lease_within, MAX_LEASE_SECS};
use super::instances::lifecycle_of;
use super::validation::whole_in_range;
use super::{App, Caller};
use crate::error::{AppError, AppResult, Problems};

impl App {
    pub async fn get_leases(&self, caller: &Caller, project_id: &str) -> AppResult<Leases> {
        Ok(self.project_for(caller, project_id).await?.leases)
    }

    pub async fn update_leases(
        &self,
        caller: &Caller,
        project_id: &str,
        body: UpdateLeasesBody,
    ) -> AppResult<Leases> {
        // A lease holds the host's capacity: a project's own token may read them, not raise them.
        self.project_for(caller, project_id).await?;
        caller.require_admin()?;
        for _ in 0..5 {
            let mut row = self.project_for(caller, project_id).await?;
            let l = &mut row.leases;
            l.default_ttl_seconds = body.default_ttl_seconds.unwrap_or(l.default_ttl_seconds);
            l.max_ttl_seconds = body.max_ttl_seconds.unwrap_or(l.max_ttl_seconds);
            let mut p = Problems::default();
            let max = u64::from(MAX_LEASE_SECS);
            if !(1..=max).contains(&l.max_ttl_seconds) {
                p.add(
                    "maxTtlSeconds",
                    format!("must be between 1 and {max} (got {})", l.max_ttl_seconds),
                );
            }
            if !(1..=l.max_ttl_seconds).contains(&l.default_ttl_seconds) {
                p.add(
                    "defaultTtlSeconds",
                    format!(
                        "must be between 1 and maxTtlSeconds, {} (got {})",
                        l.max_ttl_seconds, l.default_ttl_seconds
                    ),
                );
            }
            p.into_result()?;
            row.updated_at = self.now().max(row.updated_at);
            if self.store.update_project(&row).await? {
                return Ok(row.leases);
            }
        }
        Err(AppError::Conflict(
            "the project kept changing while this update was applied; try again".into(),
        ))
    }

    /// A claimed VM's lease, from now: `ttlSeconds`, or the project's default.
    pub async fn renew(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
        body: RenewBody,
    ) -> AppResult<InstanceLifecycle> {
        let mut p = Problems::default();
        let ttl = body
            .ttl_seconds
            .map(|t| u64::from(whole_in_range(&mut p, "ttlSeconds", t, 1, MAX_LEASE_SECS)));
        p.into_result()?;
        // One read of the project (access and its leases), one conditional write: the row it
        // answers is the renewed instance's (the write is scoped to the project).
        let project = self.project_for(caller, project_id).await?;
        let lease_ms = lease_within(&project.leases, ttl)?;
        if let Some(row) = self
            .store
            .renew_lease(id, project_id, lease_ms, self.now())
            .await?
        {
            return Ok(lifecycle_of(&row));
        }
        // Not renewed: say why (not found, not claimed, or its lease ran out).
        let now = self.instance_for(caller, project_id, id).await?;
        Err(AppError::Conflict(match (now.status, now.end_reason) {
            (_, Some(warmpool_types::state::EndReason::Expired)) => {
                "the VM's lease ran out before this renewal: it is destroyed".to_string()
            }
            (InstanceStatus::Claimed, _) => "the VM's lease ran out: it is being destroyed".into(),
            (status, _) => format!("the instance is {status}: only a claimed VM has a lease"),
        }))
    }
}
