//! Claiming VMs for tasks, and the pool's stats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warmpool_store::InstanceRow;
use warmpool_types::api::{ClaimBody, ClaimResponse, DegradedInfo, Leases, PoolStats, VmAccess};
use warmpool_types::state::{InstanceKind, InstanceStatus};
use warmpool_types::time::fmt_ms;
use warmpool_types::{ids, validate};

use super::events::{Event, Sequenced};
use super::{list_item, whole_in_range, App, Caller};
use crate::error::{AppError, AppResult, Problems};
use crate::metrics as m;

const DEFAULT_WAIT: Duration = Duration::from_secs(60);

impl App {
    fn vm_access_of(&self, i: &InstanceRow) -> Option<VmAccess> {
        Some(VmAccess {
            instance_id: i.vm_id.clone(),
            agent_url: i.agent_url.clone()?,
            agent_token: self.agent_token(i)?,
        })
    }
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].max(0) as u64)
}

impl App {
    /// Hands a ready pool VM over at once, or boots one for this claim and waits for it.
    /// Answers whether the VM is the caller's now (200) or still coming (202).
    pub async fn claim(
        self: &Arc<Self>,
        caller: &Caller,
        project_id: &str,
        body: ClaimBody,
    ) -> AppResult<(bool, ClaimResponse)> {
        let started = Instant::now();
        // The warm path reads nothing before its one conditional write: an instance of the
        // project can only be claimed if the project exists, so the project is looked up only
        // when none was ready (a read on every claim was a visible share of its time).
        caller.check_project(project_id)?;
        if !ids::is_project_id(project_id) {
            return Err(AppError::not_found("project not found"));
        }
        let mut p = Problems::default();
        let wait = body
            .wait_seconds
            .map(|w| Duration::from_secs(whole_in_range(&mut p, "waitSeconds", w, 0, 600) as u64))
            .unwrap_or(DEFAULT_WAIT);
        if let Some(t) = &body.task_id {
            p.check("taskId", validate::display_text(t, 200));
        }
        // Bounded here by the longest any project allows; the project's own maximum is kept by
        // the claim's statement (a longer lease claims nothing) and told below.
        let ttl = body
            .ttl_seconds
            .map(|t| u64::from(whole_in_range(&mut p, "ttlSeconds", t, 1, MAX_LEASE_SECS)));
        p.into_result()?;
        self.require_allowed()?;
        let lease_ms = ttl.map(|t| t as i64 * 1000);
        if let Some(inst) = self
            .store
            .claim_ready(project_id, body.task_id.as_deref(), lease_ms, self.now())
            .await?
        {
            // A replacement starts at once.
            self.nudge();
            metrics::counter!(m::CLAIMS, "project" => project_id.to_string(), "kind" => "warm")
                .increment(1);
            metrics::histogram!(m::CLAIM_SECONDS, "kind" => "warm")
                .record(started.elapsed().as_secs_f64());
            tracing::info!(project = %project_id, instance = %inst.id, "warm claim");
            return Ok((
                true,
                ClaimResponse {
                    vm: self.vm_access_of(&inst),
                    instance: list_item(&inst),
                    warm: true,
                    expires_at: inst.expires_at.map(fmt_ms),
                },
            ));
        }
        let project = self.project_for(caller, project_id).await?;
        let lease_ms = lease_within(&project.leases, ttl)?;
        // The slot counts this boot against the project's cap until its steps are over.
        let slot = self
            .limits
            .cold_slot(project_id, self.cfg.max_cold_claims)?;
        let inst = self
            .launch(
                project_id,
                InstanceKind::Cold,
                body.task_id.clone(),
                Some(lease_ms),
                Some(slot),
            )
            .await?;
        metrics::counter!(m::CLAIMS, "project" => project_id.to_string(), "kind" => "cold")
            .increment(1);
        tracing::info!(project = %project_id, instance = %inst.id, "no ready VM: booting one for the claim");
        let inst = self.wait_settled(&inst.id, wait).await?;
        metrics::histogram!(m::CLAIM_SECONDS, "kind" => "cold")
            .record(started.elapsed().as_secs_f64());
        let done = inst.status == InstanceStatus::Claimed;
        Ok((
            done,
            ClaimResponse {
                vm: if done { self.vm_access_of(&inst) } else { None },
                instance: list_item(&inst),
                warm: false,
                expires_at: inst.expires_at.map(fmt_ms),
            },
        ))
    }

    /// The instance once it is no longer provisioning, or as it is when `wait` ends.
    async fn wait_settled(&self, id: &str, wait: Duration) -> AppResult<InstanceRow> {
        use tokio::sync::broadcast::error::RecvError;
        let deadline = tokio::time::Instant::now() + wait;
        let is_done = |e: &Sequenced| matches!(e.event, Event::Done(_));
        if let Some((history, mut rx)) = self.events.subscribe(id) {
            // `done` is published after the store has the final status.
            let mut done = history.iter().any(|e| is_done(e));
            while !done {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(e)) => done = is_done(&e),
                    Ok(Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) | Err(_) => break,
                }
            }
        } else {
            while tokio::time::Instant::now() < deadline {
                match self.store.get_instance(id).await? {
                    Some(i) if i.status == InstanceStatus::Provisioning => {}
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.store
            .get_instance(id)
            .await?
            .ok_or_else(|| AppError::not_found("instance not found"))
    }

    /// How to reach a claimed VM directly.
    pub async fn vm_access(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
    ) -> AppResult<VmAccess> {
        let i = self.instance_for(caller, project_id, id).await?;
        let usable = i.status == InstanceStatus::Claimed
            || (i.status == InstanceStatus::Ready && i.kind == InstanceKind::Test);
        match (usable, self.vm_access_of(&i)) {
            (true, Some(v)) => Ok(v),
            _ => Err(AppError::Conflict(format!(
                "the instance is {}: only claimed instances (and ready test instances) can be reached",
                i.status
            ))),
        }
    }

    pub async fn pool_stats(&self, caller: &Caller, project_id: &str) -> AppResult<PoolStats> {
        self.project_for(caller, project_id).await?;
        let counts = self.store.pool_counts(project_id).await?;
        let cfg = self.store.get_pool_config(project_id).await?;
        let state = self.store.get_pool_state(project_id).await?;
        let mut durations = self.store.provisioning_durations(project_id, 200).await?;
        durations.sort_unstable();
        let now = self.now();
        let (effective_target, autoscale) = self.autoscale_status(project_id, cfg.as_ref()).await?;
        Ok(PoolStats {
            ready: counts.ready,
            provisioning: counts.provisioning,
            failed: counts.failed,
            claimed: counts.claimed,
            stale: counts.stale,
            target_size: cfg.map(|c| c.target_size),
            effective_target,
            autoscale,
            degraded: state.degraded_since.map(|since| DegradedInfo {
                failed_step: state.last_failed_step.clone(),
                error: state.last_error.clone(),
                since: fmt_ms(since),
            }),
            next_attempt_at: state.next_attempt_at.filter(|t| *t > now).map(fmt_ms),
            warm_claims: counts.warm_claims,
            cold_claims: counts.cold_claims,
            provisioning_p50_ms: quantile(&durations, 0.5),
            provisioning_p95_ms: quantile(&durations, 0.95),
        })
    }
}

/// No project may allow leases longer than this (a year): bounds `ttlSeconds` before any read.
pub const MAX_LEASE_SECS: u32 = 366 * 24 * 3600;

/// The lease a claim or renewal gets, in ms: `ttl` seconds if the project allows that long,
/// else its default.
pub(crate) fn lease_within(leases: &Leases, ttl: Option<u64>) -> AppResult<i64> {
    let secs = ttl.unwrap_or(leases.default_ttl_seconds);
    if secs > leases.max_ttl_seconds {
        let mut p = Problems::default();
        p.add(
            "ttlSeconds",
            format!(
                "must be at most {} (the project's maxTtlSeconds)",
                leases.max_ttl_seconds
            ),
        );
        p.into_result()?;
    }
    Ok(secs as i64 * 1000)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.95), Some(7));
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.95), Some(95));
    }
}
