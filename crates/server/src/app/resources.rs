//! Resource limits: what each VM of a project may use (memory, CPUs, processes, disk).

use warmpool_types::api::{Resources, UpdateResourcesBody};

use super::{App, Caller};
use crate::error::{AppError, AppResult, Problems};

/// Adds a problem when `value` is outside `(lo, hi)`.
fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    p: &mut Problems,
    field: &str,
    value: Option<T>,
    (lo, hi): (T, T),
    unit: &str,
) {
    if let Some(v) = value {
        if v < lo || v > hi {
            p.add(
                field,
                format!("must be between {lo} and {hi}{unit} (got {v})"),
            );
        }
    }
}

impl App {
    pub async fn get_resources(&self, caller: &Caller, project_id: &str) -> AppResult<Resources> {
        Ok(self.project_for(caller, project_id).await?.resources)
    }

    pub async fn update_resources(
        &self,
        caller: &Caller,
        project_id: &str,
        body: UpdateResourcesBody,
    ) -> AppResult<Resources> {
        // Limits protect the host and the other projects: a project's own token may read them
        // but not raise them.
        self.project_for(caller, project_id).await?;
        caller.require_admin()?;
        let mut p = Problems::default();
        check_range(&mut p, "cpus", body.cpus, Resources::CPUS, "");
        check_range(
            &mut p,
            "memoryMb",
            body.memory_mb,
            Resources::MEMORY_MB,
            " MiB",
        );
        check_range(&mut p, "pidsMax", body.pids_max, Resources::PIDS_MAX, "");
        check_range(&mut p, "diskMb", body.disk_mb, Resources::DISK_MB, " MiB");
        p.into_result()?;
        for _ in 0..5 {
            let mut row = self.project_for(caller, project_id).await?;
            let r = &mut row.resources;
            r.cpus = body.cpus.unwrap_or(r.cpus);
            r.memory_mb = body.memory_mb.unwrap_or(r.memory_mb);
            r.pids_max = body.pids_max.unwrap_or(r.pids_max);
            r.disk_mb = body.disk_mb.unwrap_or(r.disk_mb);
            row.updated_at = self.now().max(row.updated_at);
            if self.store.update_project(&row).await? {
                // Ready VMs built with other limits are now stale: the reconciler replaces them.
                self.nudge();
                return Ok(row.resources);
            }
        }
        Err(AppError::Conflict(
            "the project kept changing while this update was applied; try again".into(),
        ))
    }
}
