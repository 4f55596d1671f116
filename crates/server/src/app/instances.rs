//! Reading instances and their step logs; running commands in them; destroying them.

use std::collections::BTreeMap;
use std::time::Duration;

use warmpool_store::{InstanceRow, StepRow};
use warmpool_types::agent::AgentExecRequest;
use warmpool_types::api::{
    ExecBody, ExecResponse, InstanceLifecycle, InstanceListItem, InstanceSummary,
    ListWarmPoolInstancesResponse, StepRecord, WarmPoolInstanceDetail,
};
use warmpool_types::ids;
use warmpool_types::state::{EndReason, InstanceKind, InstanceStatus, StepResult};
use warmpool_types::time::fmt_ms;
use warmpool_types::validate;

use super::{whole_in_range, App, Caller, MAX_COMMAND_BYTES};
use crate::error::{AppError, AppResult, Problems};
use crate::provision::redact::Redactor;

pub fn list_item(i: &InstanceRow) -> InstanceListItem {
    InstanceListItem {
        id: i.id.clone(),
        instance_id: i.vm_id.clone(),
        status: i.status.as_str().to_string(),
        is_test: i.kind == InstanceKind::Test,
        failure_reason: i.failure_reason.clone(),
        provisioned_at: i.provisioned_at.map(fmt_ms),
        created_at: fmt_ms(i.created_at),
    }
}

/// What happened to an instance beyond its boot, from its row.
pub fn lifecycle_of(i: &InstanceRow) -> InstanceLifecycle {
    InstanceLifecycle {
        id: i.id.clone(),
        instance_id: i.vm_id.clone(),
        status: i.status.as_str().to_string(),
        kind: i.kind.as_str().to_string(),
        task_id: i.task_id.clone(),
        created_at: fmt_ms(i.created_at),
        provisioned_at: i.provisioned_at.map(fmt_ms),
        claimed_at: i.claimed_at.map(fmt_ms),
        expires_at: i.expires_at.map(fmt_ms),
        ended_at: i.destroyed_at.map(fmt_ms),
        end_reason: i.end_reason,
    }
}

pub fn step_record(s: &StepRow) -> StepRecord {
    StepRecord {
        name: s.name.clone(),
        status: StepResult::from_success(s.success),
        error: s.error.clone(),
        output: s.output.clone(),
        duration_ms: Some(s.duration_ms),
        timestamp: fmt_ms(s.finished_at),
        metadata: s.metadata.clone(),
    }
}

/// The summary of an instance's boot: `success` (ready or claimed), `totalDurationMs` from its
/// creation to its last finished step, the first failed step and its error, the steps done and
/// the steps in all.
pub fn summary(i: &InstanceRow, steps: &[StepRow]) -> InstanceSummary {
    let failed = steps.iter().find(|s| !s.success);
    let last = steps.iter().map(|s| s.finished_at).max();
    InstanceSummary {
        success: matches!(i.status, InstanceStatus::Ready | InstanceStatus::Claimed),
        total_duration_ms: last.map(|t| (t - i.created_at).max(0) as u64).unwrap_or(0),
        failed_step: failed.map(|s| s.name.clone()),
        // A failure outside any step (the server restarted mid-boot) still says why.
        error: failed
            .and_then(|s| s.error.clone())
            .or_else(|| i.failure_reason.clone()),
        completed_steps: steps.iter().filter(|s| s.success).count() as u32,
        total_steps: i.total_steps,
    }
}

impl App {
    pub(crate) async fn instance_for(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
    ) -> AppResult<InstanceRow> {
        self.project_for(caller, project_id).await?;
        if !ids::is_instance_id(id) {
            return Err(AppError::not_found("instance not found"));
        }
        match self.store.get_instance(id).await? {
            Some(i) if i.project_id == project_id => Ok(i),
            _ => Err(AppError::not_found("instance not found")),
        }
    }

    pub async fn instance_lifecycle(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
    ) -> AppResult<InstanceLifecycle> {
        Ok(lifecycle_of(
            &self.instance_for(caller, project_id, id).await?,
        ))
    }

    pub async fn list_instances(
        &self,
        caller: &Caller,
        project_id: &str,
        limit: Option<f64>,
        status: Option<&str>,
    ) -> AppResult<ListWarmPoolInstancesResponse> {
        self.project_for(caller, project_id).await?;
        let mut p = Problems::default();
        let limit = limit
            .map(|l| whole_in_range(&mut p, "limit", l, 1, 50))
            .unwrap_or(20);
        let status = match status {
            None => None,
            Some(s) => match s.parse::<InstanceStatus>() {
                Ok(st) if InstanceStatus::LISTABLE.contains(&st) => Some(st),
                _ => {
                    p.add(
                        "status",
                        "must be one of ready, provisioning, failed, claimed",
                    );
                    None
                }
            },
        };
        p.into_result()?;
        let rows = self.store.list_instances(project_id, status, limit).await?;
        Ok(ListWarmPoolInstancesResponse {
            items: rows.iter().map(list_item).collect(),
        })
    }

    pub async fn get_instance(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
    ) -> AppResult<WarmPoolInstanceDetail> {
        let i = self.instance_for(caller, project_id, id).await?;
        let steps = self.store.list_steps(&i.id).await?;
        Ok(WarmPoolInstanceDetail {
            summary: summary(&i, &steps),
            id: i.id.clone(),
            instance_id: i.vm_id.clone(),
            status: i.status.as_str().to_string(),
            is_test: i.kind == InstanceKind::Test,
            failure_reason: i.failure_reason.clone(),
            steps: steps.iter().map(step_record).collect(),
            created_at: fmt_ms(i.created_at),
        })
    }

    pub async fn delete_instance(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
    ) -> AppResult<()> {
        let i = self.instance_for(caller, project_id, id).await?;
        let live = [
            InstanceStatus::Provisioning,
            InstanceStatus::Ready,
            InstanceStatus::Claimed,
            InstanceStatus::Failed,
        ];
        if !self.destroy_instance(&i, &live, EndReason::Deleted).await? {
            return Err(AppError::not_found("instance not found"));
        }
        Ok(())
    }

    pub async fn exec(
        &self,
        caller: &Caller,
        project_id: &str,
        id: &str,
        body: ExecBody,
    ) -> AppResult<ExecResponse> {
        let i = self.instance_for(caller, project_id, id).await?;
        let mut p = Problems::default();
        if body.command.trim().is_empty() {
            p.add("command", "must not be empty");
        } else if body.command.len() > MAX_COMMAND_BYTES {
            p.add(
                "command",
                format!("must be at most {MAX_COMMAND_BYTES} bytes"),
            );
        } else if body.command.contains('\0') {
            p.add("command", "must not contain NUL bytes");
        }
        if let Some(cwd) = &body.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                p.add("cwd", "must be an absolute path");
            }
        }
        let env: BTreeMap<String, String> = body.env.unwrap_or_default();
        for (k, v) in &env {
            p.check(format!("env.{k}"), validate::env_name(k));
            if v.contains('\0') {
                p.add(format!("env.{k}"), "must not contain NUL bytes");
            }
        }
        let timeout = body
            .timeout_seconds
            .map(|t| {
                Duration::from_secs(whole_in_range(&mut p, "timeoutSeconds", t, 1, 3600) as u64)
            })
            .unwrap_or(self.cfg.exec_default_timeout);
        p.into_result()?;
        let usable = match i.status {
            InstanceStatus::Claimed => true,
            InstanceStatus::Ready => i.kind == InstanceKind::Test,
            _ => false,
        };
        let (Some(url), Some(token), true) = (&i.agent_url, &self.agent_token(&i), usable) else {
            return Err(AppError::Conflict(format!(
                "cannot run commands on a {} instance: only ready test instances and claimed instances accept commands",
                if i.status == InstanceStatus::Ready { "pool (unclaimed)" } else { i.status.as_str() }
            )));
        };
        let agent = self.backend.agent(&i.vm_id, url, token);
        let req = AgentExecRequest {
            command: Some(body.command),
            cwd: body.cwd,
            env,
            timeout_ms: Some(timeout.as_millis() as u64),
            ..Default::default()
        };
        // The agent enforces the timeout; this bound only covers a VM that stops answering.
        let res = tokio::time::timeout(timeout + Duration::from_secs(30), agent.exec(req))
            .await
            .map_err(|_| AppError::Unavailable("the VM stopped answering".into()))?
            .map_err(|e| AppError::Unavailable(format!("cannot reach the VM: {e}")))?;
        let vars = self.env_vars(project_id).await?;
        let repos = self
            .store
            .get_project(project_id)
            .await?
            .map(|p| p.repos)
            .unwrap_or_default();
        let secrets = self.repo_secrets(&repos);
        let redactor = Redactor::new(
            vars.iter()
                .map(|v| (v.name.as_str(), v.value.as_str()))
                .chain(secrets.iter().map(|(n, s)| (n.as_str(), s.as_str()))),
        );
        Ok(ExecResponse {
            exit_code: res.exit_code,
            output: redactor.redact(&res.output).into_owned(),
            duration_ms: res.duration_ms,
            truncated: res.truncated,
            timed_out: res.timed_out,
        })
    }
}
