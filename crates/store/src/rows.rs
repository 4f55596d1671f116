//! Rows as both engines return them: the column lists queries select, and one decoder per row type
//! that reads its columns by name through [`Row`], which each engine implements for its own rows.

use std::cell::Cell;
use std::fmt::Display;

use crate::{
    AutoscaleRow, EnvVarRow, GoldenRow, InstanceRow, NodeRow, PoolConfigRow, PoolState, ProjectRow,
    Result, ScaleRecord, StepRow, StoreError, TokenRow,
};

/// A result row of either engine. Each engine reads its own column types; the decoders below
/// need only these three.
pub trait Row {
    /// A text column; `None` for NULL.
    fn opt_str(&self, col: &str) -> Result<Option<String>>;
    /// An integer column; `None` for NULL.
    fn opt_i64(&self, col: &str) -> Result<Option<i64>>;
    /// A boolean column (an integer in SQLite).
    fn bool(&self, col: &str) -> Result<bool>;
}

impl dyn Row + '_ {
    pub fn str(&self, col: &str) -> Result<String> {
        self.opt_str(col)?.ok_or_else(|| unreadable(col, "NULL"))
    }

    pub fn i64(&self, col: &str) -> Result<i64> {
        self.opt_i64(col)?.ok_or_else(|| unreadable(col, "NULL"))
    }

    pub fn u32(&self, col: &str) -> Result<u32> {
        u32::try_from(self.i64(col)?).map_err(|e| unreadable(col, e))
    }

    /// A column holding one of a type's names (`pool`, `ready`, ...).
    pub fn parse<T: std::str::FromStr<Err = String>>(&self, col: &str) -> Result<T> {
        self.str(col)?.parse().map_err(|e| unreadable(col, e))
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T> {
        serde_json::from_str(&self.str(col)?).map_err(|e| unreadable(col, e))
    }

    pub fn opt_json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        self.opt_str(col)?
            .map(|s| serde_json::from_str(&s).map_err(|e| unreadable(col, e)))
            .transpose()
    }
}

pub fn unreadable(col: &str, e: impl Display) -> StoreError {
    StoreError::Internal(format!("unreadable row: column {col}: {e}"))
}

/// Finds columns by name in the rows of one result. Decoders read columns in the order their
/// lists name them, so the one after the last found is tried first: a column is found with one
/// comparison rather than a scan of the names (scanning for each column of each row made reading
/// rows by name several times slower than by position).
#[derive(Default)]
pub struct Columns {
    next: Cell<usize>,
}

impl Columns {
    /// The position of column `col` among `count` columns, `name(i)` being the name of the i-th.
    pub fn index<'a>(
        &self,
        col: &str,
        count: usize,
        name: impl Fn(usize) -> &'a str,
    ) -> Result<usize> {
        let guess = self.next.get();
        let i = if guess < count && name(guess) == col {
            guess
        } else {
            (0..count)
                .find(|&i| name(i) == col)
                .ok_or_else(|| unreadable(col, "not in the result"))?
        };
        // After the last column, the next row's first.
        self.next.set((i + 1) % count);
        Ok(i)
    }
}

/// An engine's row, with where to look for its columns: what each engine implements [`Row`] for.
pub struct Named<'a, R> {
    pub row: &'a R,
    pub columns: &'a Columns,
}

// Column lists are macros so that each statement is one `&'static str`, made at compile time.

/// The columns a row type is read from, by the name of its type.
macro_rules! cols {
    (project) => {
        "seq, id, name, description, task_code, repos_json, devbox_json, generation, created_at, \
         updated_at, resources_json, lease_default_s, lease_max_s"
    };
    (env_var) => {
        "name, value, version, updated_at"
    };
    (pool) => {
        "project_id, enabled, target_size, max_age_minutes, branch, setup_commands_json, \
         generation, created_at, updated_at"
    };
    (instance) => {
        "seq, id, vm_id, project_id, kind, status, total_steps, failed_step, failure_reason, \
         backend, agent_url, agent_token, config_hash, task_id, created_at, provisioned_at, \
         finished_at, claimed_at, destroyed_at, end_reason, stale_at, commits_json, golden_id, \
         node, lease_ms, expires_at"
    };
    (step) => {
        "instance_id, seq, name, status, output, error, duration_ms, finished_at, metadata_json"
    };
    (pool_state) => {
        "consecutive_failures, identical_failures, last_failed_step, last_failed_config, \
         last_error, degraded_since, next_attempt_at"
    };
    (autoscale) => {
        "project_id, enabled, min_size, max_size, generation, target, changed_at, reason, peak, \
         boot_ms, updated_at"
    };
    (golden) => {
        "id, project_id, config_hash, backend, commits_json, status, created_at, node"
    };
    (node) => {
        "name, node_id, url, capacity, lease_until, started_at, renewed_at"
    };
    (token) => {
        "id, project_id, hash, created_at, last_used_at"
    };
}

/// `SELECT` a row type's columns, then the rest of the statement.
macro_rules! select {
    ($row:ident, $rest:expr) => {
        concat!("SELECT ", $crate::rows::cols!($row), " ", $rest)
    };
}

pub(crate) use {cols, select};

// Each decoder reads its columns in its list's order (see `Columns`).

pub fn project_row(r: &dyn Row) -> Result<ProjectRow> {
    Ok(ProjectRow {
        seq: r.i64("seq")?,
        id: r.str("id")?,
        name: r.str("name")?,
        description: r.opt_str("description")?,
        task_code: r.str("task_code")?,
        repos: r.json("repos_json")?,
        devbox: r.json("devbox_json")?,
        generation: r.i64("generation")?,
        created_at: r.i64("created_at")?,
        updated_at: r.i64("updated_at")?,
        resources: r.json("resources_json")?,
        leases: warmpool_types::api::Leases {
            default_ttl_seconds: r.i64("lease_default_s")?.max(0) as u64,
            max_ttl_seconds: r.i64("lease_max_s")?.max(0) as u64,
        },
    })
}

pub fn env_var_row(r: &dyn Row) -> Result<EnvVarRow> {
    Ok(EnvVarRow {
        name: r.str("name")?,
        value: r.str("value")?,
        version: r.i64("version")?,
        updated_at: r.i64("updated_at")?,
    })
}

pub fn pool_row(r: &dyn Row) -> Result<PoolConfigRow> {
    Ok(PoolConfigRow {
        project_id: r.str("project_id")?,
        enabled: r.bool("enabled")?,
        target_size: r.u32("target_size")?,
        max_age_minutes: r.u32("max_age_minutes")?,
        branch: r.opt_str("branch")?,
        setup_commands: r.opt_json("setup_commands_json")?,
        generation: r.i64("generation")?,
        created_at: r.i64("created_at")?,
        updated_at: r.i64("updated_at")?,
    })
}

pub fn instance_row(r: &dyn Row) -> Result<InstanceRow> {
    Ok(InstanceRow {
        seq: r.i64("seq")?,
        id: r.str("id")?,
        vm_id: r.str("vm_id")?,
        project_id: r.str("project_id")?,
        kind: r.parse("kind")?,
        status: r.parse("status")?,
        total_steps: r.u32("total_steps")?,
        failed_step: r.opt_str("failed_step")?,
        failure_reason: r.opt_str("failure_reason")?,
        backend: r.str("backend")?,
        agent_url: r.opt_str("agent_url")?,
        agent_token: r.opt_str("agent_token")?,
        config_hash: r.opt_str("config_hash")?,
        task_id: r.opt_str("task_id")?,
        created_at: r.i64("created_at")?,
        provisioned_at: r.opt_i64("provisioned_at")?,
        finished_at: r.opt_i64("finished_at")?,
        claimed_at: r.opt_i64("claimed_at")?,
        destroyed_at: r.opt_i64("destroyed_at")?,
        end_reason: r
            .opt_str("end_reason")?
            .map(|s| s.parse())
            .transpose()
            .map_err(|e: String| crate::StoreError::Internal(format!("end_reason: {e}")))?,
        stale_at: r.opt_i64("stale_at")?,
        // NULL in rows from before commits were recorded.
        commits: r.opt_json("commits_json")?.unwrap_or_default(),
        golden_id: r.opt_str("golden_id")?,
        node: r.opt_str("node")?,
        lease_ms: r.opt_i64("lease_ms")?,
        expires_at: r.opt_i64("expires_at")?,
    })
}

pub fn step_row(r: &dyn Row) -> Result<StepRow> {
    Ok(StepRow {
        instance_id: r.str("instance_id")?,
        seq: r.u32("seq")?,
        name: r.str("name")?,
        success: r.str("status")? == "success",
        output: r.opt_str("output")?,
        error: r.opt_str("error")?,
        duration_ms: r.i64("duration_ms")?.max(0) as u64,
        finished_at: r.i64("finished_at")?,
        metadata: r.opt_json("metadata_json")?,
    })
}

pub fn pool_state_row(r: &dyn Row) -> Result<PoolState> {
    Ok(PoolState {
        consecutive_failures: r.u32("consecutive_failures")?,
        identical_failures: r.u32("identical_failures")?,
        last_failed_step: r.opt_str("last_failed_step")?,
        last_failed_config: r.opt_str("last_failed_config")?,
        last_error: r.opt_str("last_error")?,
        degraded_since: r.opt_i64("degraded_since")?,
        next_attempt_at: r.opt_i64("next_attempt_at")?,
    })
}

pub fn autoscale_row(r: &dyn Row) -> Result<AutoscaleRow> {
    let project_id = r.str("project_id")?;
    let enabled = r.bool("enabled")?;
    let min_size = r.u32("min_size")?;
    let max_size = r.u32("max_size")?;
    let generation = r.i64("generation")?;
    let target = r.opt_i64("target")?;
    let changed_at = r.opt_i64("changed_at")?;
    let reason = r.opt_str("reason")?;
    let peak = r.opt_i64("peak")?;
    let boot_ms = r.opt_i64("boot_ms")?;
    let scale = match (target, changed_at, reason) {
        (Some(target), Some(changed_at), Some(reason)) => Some(ScaleRecord {
            target: u32::try_from(target).map_err(|e| unreadable("target", e))?,
            changed_at,
            reason: reason.parse().map_err(|e| unreadable("reason", e))?,
            peak: u32::try_from(peak.unwrap_or(0)).map_err(|e| unreadable("peak", e))?,
            boot_ms: boot_ms.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(AutoscaleRow {
        project_id,
        enabled,
        min_size,
        max_size,
        generation,
        scale,
        updated_at: r.i64("updated_at")?,
    })
}

pub fn golden_row(r: &dyn Row) -> Result<GoldenRow> {
    Ok(GoldenRow {
        id: r.str("id")?,
        project_id: r.str("project_id")?,
        config_hash: r.str("config_hash")?,
        backend: r.str("backend")?,
        commits: r.json("commits_json")?,
        ready: r.str("status")? == "ready",
        created_at: r.i64("created_at")?,
        node: r.opt_str("node")?,
    })
}

pub fn node_row(r: &dyn Row) -> Result<NodeRow> {
    Ok(NodeRow {
        name: r.str("name")?,
        node_id: r.str("node_id")?,
        url: r.str("url")?,
        capacity: r.u32("capacity")?,
        lease_until: r.i64("lease_until")?,
        started_at: r.i64("started_at")?,
        renewed_at: r.i64("renewed_at")?,
    })
}

pub fn token_row(r: &dyn Row) -> Result<TokenRow> {
    Ok(TokenRow {
        id: r.str("id")?,
        project_id: r.str("project_id")?,
        hash: r.str("hash")?,
        created_at: r.i64("created_at")?,
        last_used_at: r.opt_i64("last_used_at")?,
    })
}
