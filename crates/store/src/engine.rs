//! The store core both engines share: statements written once (with PostgreSQL's `$N`
//! placeholders, made SQLite's `?N` at compile time), parameter values either engine binds, and
//! the one implementation of [`Store`] over an [`Engine`] — a few primitives (run a statement,
//! read rows) plus the operations whose engines truly differ, which each engine writes itself.

use std::collections::BTreeMap;

use async_trait::async_trait;
use warmpool_types::api::PoolStatus;
use warmpool_types::state::{EndReason, InstanceStatus};

use crate::rows::*;
use crate::{
    AutoscaleRow, EnvVarRow, GoldenRow, InstanceRow, NodeRow, PoolConfigRow, PoolCounts,
    PoolSnapshot, PoolState, PoolStateChange, ProjectRow, RepoCommit, Result, ScaleRecord, StepRow,
    Store, StoreError, TokenRow,
};

/// One statement, in each engine's dialect.
#[derive(Debug)]
pub struct Sql {
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

/// A statement written once, with `$N` placeholders: PostgreSQL's text as written, SQLite's with
/// `?N`. SQLite does accept `$1`, but as a parameter *named* "$1", and it numbers names in order
/// of first appearance: `SET a = $2 WHERE id = $1` would bind the values swapped (a test in the
/// `sqlite` module shows it). `?N` is bound to value N, as `$N` is on PostgreSQL. The two-text
/// form is for the few statements whose dialects differ.
macro_rules! sql {
    ($text:expr) => {{
        const TEXT: &str = $text;
        const SQLITE: [u8; TEXT.len()] = $crate::engine::question_marks(TEXT);
        const SQL: $crate::engine::Sql = $crate::engine::Sql {
            postgres: TEXT,
            sqlite: match ::std::str::from_utf8(&SQLITE) {
                Ok(s) => s,
                Err(_) => panic!("a statement is not UTF-8"),
            },
        };
        &SQL
    }};
    (postgres: $postgres:expr, sqlite: $sqlite:expr $(,)?) => {{
        const SQL: $crate::engine::Sql = $crate::engine::Sql {
            postgres: $postgres,
            sqlite: $crate::engine::sql!($sqlite).sqlite,
        };
        &SQL
    }};
}
pub(crate) use sql;

/// `text` with each `$` that starts a placeholder (a `$` and a digit) made `?`; the length stays
/// the same, so that it can be done at compile time.
pub const fn question_marks<const N: usize>(text: &str) -> [u8; N] {
    let text = text.as_bytes();
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        let placeholder = text[i] == b'$' && i + 1 < N && text[i + 1].is_ascii_digit();
        out[i] = if placeholder { b'?' } else { text[i] };
        i += 1;
    }
    out
}

/// A statement parameter. Each engine binds it as the type of its column (see its module).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $value:expr),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from($v: $t) -> Self {
                $value
            }
        })*
    };
}

value_from! {
    i64 => |v| Value::Int(v),
    u32 => |v| Value::Int(v.into()),
    bool => |v| Value::Bool(v),
    &str => |v| Value::Text(v.to_string()),
    String => |v| Value::Text(v),
    &String => |v| Value::Text(v.clone()),
    &Option<String> => |v| v.as_deref().into(),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A statement's parameters, `$1` first.
macro_rules! values {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::engine::Value::from($v)),*]
    };
}
pub(crate) use values;

pub fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The one row a statement returns.
pub fn one<T>(rows: Vec<T>) -> Result<T> {
    rows.into_iter()
        .next()
        .ok_or_else(|| StoreError::Internal("a statement returned no row".into()))
}

/// What a query's rows become.
pub type Decode<T> = fn(&dyn Row) -> Result<T>;

/// What an engine provides for the [`Store`] implementation below: running statements, and the
/// operations its engine does its own way (each engine says why), as the [`Store`] methods of
/// the same names.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    const NAME: &'static str;

    /// Runs a statement that changes rows, as one durable write: how many it changed.
    async fn exec(&self, sql: &'static Sql, values: Vec<Value>) -> Result<u64>;
    /// [`Engine::exec`] for a write that may become durable with the next durable write rather
    /// than on its own: a crash of warmpool loses nothing, a power cut (or on PostgreSQL a crash
    /// of the database server) may lose it — and only it, never a durable write made after it.
    /// For the records of a boot in progress, which the boot's final state change, a durable
    /// write, makes durable; the engine saves the flush each would cost.
    async fn exec_relaxed(&self, sql: &'static Sql, values: Vec<Value>) -> Result<u64> {
        self.exec(sql, values).await
    }
    /// Runs a statement that only reads: its rows.
    async fn select<T: Send + 'static>(
        &self,
        sql: &'static Sql,
        values: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>>;
    /// Runs a statement that changes rows and returns some (`RETURNING`), as one durable write.
    async fn exec_returning<T: Send + 'static>(
        &self,
        sql: &'static Sql,
        values: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>>;

    async fn upsert_env_vars(
        &self,
        project_id: &str,
        vars: &[(String, String)],
        now: i64,
    ) -> Result<()>;
    async fn fail_interrupted(&self, step: &StepRow, reason: &str, now: i64) -> Result<bool>;
    async fn pool_snapshot(&self, changed_since: Option<i64>) -> Result<PoolSnapshot>;
    async fn place_pool_boots(
        &self,
        rows: &[InstanceRow],
        target: u32,
        capacity: u32,
    ) -> Result<usize>;
    async fn update_pool_state(
        &self,
        project_id: &str,
        now: i64,
        change: PoolStateChange,
    ) -> Result<PoolState>;
}

/// A set of statuses as the values of one `status IN (...)` list of a slot per status: the
/// status's name when it is in the set, NULL (which matches nothing) when not. Any set then
/// makes the same statement, on both engines (SQLite has no arrays; a list of the set's own
/// length would be a statement per length).
fn status_slots(set: &[InstanceStatus]) -> Vec<Value> {
    use InstanceStatus::*;
    let mut slots = vec![Value::Null; 5];
    for &s in set {
        // A new status fails to compile here: give it a slot, and the statements one more `$`.
        let slot = match s {
            Provisioning => 0,
            Ready => 1,
            Claimed => 2,
            Failed => 3,
            Destroyed => 4,
        };
        slots[slot] = s.as_str().into();
    }
    slots
}

// Statements the engines' own operations share --------------------------------------------------

pub const INSERT_INSTANCE: &Sql = sql!(
    "INSERT INTO instances (id, vm_id, project_id, kind, status, total_steps, failed_step,
        failure_reason, backend, agent_url, agent_token, config_hash, task_id, created_at,
        provisioned_at, finished_at, claimed_at, destroyed_at, end_reason, stale_at, commits_json,
        golden_id, node, lease_ms, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21, $22, $23, $24, $25)"
);

/// [`INSERT_INSTANCE`]'s values.
pub fn instance_values(i: &InstanceRow) -> Result<Vec<Value>> {
    Ok(values![
        &i.id,
        &i.vm_id,
        &i.project_id,
        i.kind.as_str(),
        i.status.as_str(),
        i.total_steps,
        &i.failed_step,
        &i.failure_reason,
        &i.backend,
        &i.agent_url,
        &i.agent_token,
        &i.config_hash,
        &i.task_id,
        i.created_at,
        i.provisioned_at,
        i.finished_at,
        i.claimed_at,
        i.destroyed_at,
        i.end_reason.map(EndReason::as_str),
        i.stale_at,
        json(&i.commits)?,
        &i.golden_id,
        &i.node,
        i.lease_ms,
        i.expires_at,
    ])
}

macro_rules! insert_step {
    () => {
        "INSERT INTO steps (instance_id, seq, name, status, output, error, duration_ms,
            finished_at, metadata_json)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    };
}
pub(crate) use insert_step;

/// `insert_step!`'s values.
pub fn step_values(s: &StepRow) -> Result<Vec<Value>> {
    Ok(values![
        &s.instance_id,
        s.seq,
        &s.name,
        if s.success { "success" } else { "error" },
        &s.output,
        &s.error,
        s.duration_ms as i64,
        s.finished_at,
        s.metadata.as_ref().map(json).transpose()?,
    ])
}

/// `provisioning → failed` (`$1` the instance, `$2` the failed step, `$3` the reason, `$4` now).
pub const FAIL_PROVISIONING: &Sql = sql!(
    "UPDATE instances SET status = 'failed', failed_step = $2, failure_reason = $3,
        finished_at = $4
     WHERE id = $1 AND status = 'provisioning'"
);

pub const UPSERT_ENV_VAR: &Sql = sql!(
    "INSERT INTO env_vars (project_id, name, value, version, updated_at)
     VALUES ($1, $2, $3, 1, $4)
     ON CONFLICT (project_id, name) DO UPDATE
        SET value = $3, version = env_vars.version + 1, updated_at = $4"
);

pub const POOL_STATE: &Sql = sql!(select!(pool_state, "FROM pool_state WHERE project_id = $1"));

/// A pool's state row at the defaults, unless it has one (`$1` the project, `$2` now): a change
/// can lock the row on PostgreSQL only once it exists.
pub const POOL_STATE_DEFAULT: &Sql = sql!(
    "INSERT INTO pool_state (project_id, consecutive_failures, identical_failures, updated_at)
     VALUES ($1, 0, 0, $2)
     ON CONFLICT (project_id) DO NOTHING"
);

/// The state row, locked until the transaction ends on PostgreSQL (SQLite's one writer already
/// runs one change at a time).
pub const POOL_STATE_LOCKED: &Sql = sql!(
    postgres: select!(pool_state, "FROM pool_state WHERE project_id = $1 FOR UPDATE"),
    sqlite: select!(pool_state, "FROM pool_state WHERE project_id = $1"),
);

pub const POOL_STATE_UPDATE: &Sql = sql!(
    "UPDATE pool_state SET consecutive_failures = $2, identical_failures = $3,
        last_failed_step = $4, last_failed_config = $5, last_error = $6, degraded_since = $7,
        next_attempt_at = $8, updated_at = $9
     WHERE project_id = $1"
);

/// [`POOL_STATE_UPDATE`]'s values.
pub fn pool_state_values(project_id: &str, st: &PoolState, now: i64) -> Vec<Value> {
    values![
        project_id,
        st.consecutive_failures,
        st.identical_failures,
        &st.last_failed_step,
        &st.last_failed_config,
        &st.last_error,
        st.degraded_since,
        st.next_attempt_at,
        now,
    ]
}

/// The project's instances that count toward its pool's target: pool instances with the given
/// config hash, provisioning or ready and not stale, on any node (`$1` project, `$2` hash).
pub const COUNT_TOWARD_TARGET: &Sql = sql!(
    "SELECT COUNT(*) AS n FROM instances
     WHERE project_id = $1 AND kind = 'pool' AND config_hash IS NOT DISTINCT FROM $2
       AND (status = 'provisioning' OR (status = 'ready' AND stale_at IS NULL))"
);

/// The `n` of a `COUNT(*) AS n`.
pub fn count(r: &dyn Row) -> Result<i64> {
    r.i64("n")
}

/// The statement counting a node's live instances against its capacity, and its values: those
/// with a VM running — a golden being built counts, a saved one (a snapshot or a filesystem
/// layer) does not. Two statements rather than `IS NOT DISTINCT FROM`, which no PostgreSQL index
/// serves.
pub fn count_live_on(node: &Option<String>) -> (&'static Sql, Vec<Value>) {
    match node {
        Some(node) => (
            sql!(
                "SELECT COUNT(*) AS n FROM instances
                 WHERE node = $1 AND status IN ('provisioning', 'ready', 'claimed')
                   AND NOT (kind = 'golden' AND status = 'ready')"
            ),
            values![node],
        ),
        None => (
            sql!(
                "SELECT COUNT(*) AS n FROM instances
                 WHERE node IS NULL AND status IN ('provisioning', 'ready', 'claimed')
                   AND NOT (kind = 'golden' AND status = 'ready')"
            ),
            vec![],
        ),
    }
}

/// How many of `wanted` boots fit in the pool's target and the node's capacity, given what each
/// already holds.
pub fn boots_that_fit(wanted: usize, target: u32, counted: i64, capacity: u32, live: i64) -> usize {
    let room = |limit: u32, used: i64| {
        usize::try_from((i64::from(limit) - used).max(0)).unwrap_or(usize::MAX)
    };
    wanted.min(room(target, counted)).min(room(capacity, live))
}

/// What a pool snapshot reads alike on both engines, in one consistent snapshot of theirs.
pub mod snapshot {
    use super::Sql;
    use crate::rows::*;

    pub const CONFIGS: &Sql = sql!(select!(pool, "FROM warm_pools"));
    pub const PROJECTS: &Sql = sql!(select!(project, "FROM projects ORDER BY seq"));
    pub const ENV_VERSIONS: &Sql =
        sql!("SELECT project_id, name, version FROM env_vars ORDER BY project_id, name");
    pub const STATES: &Sql = sql!(concat!(
        "SELECT project_id, ",
        cols!(pool_state),
        " FROM pool_state"
    ));
    pub const LIVE_INSTANCES: &Sql = sql!(select!(
        instance,
        "FROM instances
         WHERE status IN ('provisioning', 'ready', 'failed', 'claimed') AND destroyed_at IS NULL
         ORDER BY seq"
    ));
    pub const AUTOSCALE: &Sql = sql!(select!(autoscale, "FROM pool_autoscale"));
    pub const READY_GOLDENS: &Sql = sql!(select!(
        golden,
        "FROM goldens WHERE status = 'ready' ORDER BY created_at"
    ));

    pub fn env_version(r: &dyn Row) -> crate::Result<(String, String, i64)> {
        Ok((r.str("project_id")?, r.str("name")?, r.i64("version")?))
    }

    pub fn state(r: &dyn Row) -> crate::Result<(String, crate::PoolState)> {
        Ok((r.str("project_id")?, pool_state_row(r)?))
    }
}

// The store, once for both engines ---------------------------------------------------------------

#[async_trait]
impl<E: Engine> Store for E {
    fn engine(&self) -> &'static str {
        E::NAME
    }

    async fn ping(&self) -> Result<()> {
        self.select(sql!("SELECT 1"), vec![], |_| Ok(()))
            .await
            .map(drop)
    }

    async fn insert_project(&self, p: &ProjectRow) -> Result<()> {
        let values = values![
            &p.id,
            &p.name,
            &p.description,
            &p.task_code,
            json(&p.repos)?,
            json(&p.devbox)?,
            p.generation,
            p.created_at,
            p.updated_at,
            json(&p.resources)?,
            p.leases.default_ttl_seconds as i64,
            p.leases.max_ttl_seconds as i64,
        ];
        let sql = sql!(
            "INSERT INTO projects (id, name, description, task_code, repos_json, devbox_json,
                generation, created_at, updated_at, resources_json, lease_default_s, lease_max_s)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        self.exec(sql, values).await.map(drop)
    }

    async fn get_project(&self, id: &str) -> Result<Option<ProjectRow>> {
        let sql = sql!(select!(project, "FROM projects WHERE id = $1"));
        Ok(self.select(sql, values![id], project_row).await?.pop())
    }

    async fn list_projects(
        &self,
        after_seq: Option<i64>,
        limit: u32,
        only: Option<&str>,
    ) -> Result<Vec<ProjectRow>> {
        let sql = sql!(select!(
            project,
            "FROM projects
             WHERE seq > $1 AND (CAST($2 AS TEXT) IS NULL OR id = $2)
             ORDER BY seq LIMIT $3"
        ));
        let values = values![after_seq.unwrap_or(0), only, limit];
        self.select(sql, values, project_row).await
    }

    async fn update_project(&self, p: &ProjectRow) -> Result<bool> {
        let values = values![
            &p.name,
            &p.description,
            &p.task_code,
            json(&p.repos)?,
            json(&p.devbox)?,
            p.updated_at,
            &p.id,
            p.generation,
            json(&p.resources)?,
            p.leases.default_ttl_seconds as i64,
            p.leases.max_ttl_seconds as i64,
        ];
        let sql = sql!(
            "UPDATE projects SET name = $1, description = $2, task_code = $3, repos_json = $4,
                devbox_json = $5, updated_at = $6, generation = generation + 1,
                resources_json = $9, lease_default_s = $10, lease_max_s = $11
             WHERE id = $7 AND generation = $8"
        );
        Ok(self.exec(sql, values).await? == 1)
    }

    async fn delete_project(&self, id: &str) -> Result<bool> {
        let sql = sql!("DELETE FROM projects WHERE id = $1");
        Ok(self.exec(sql, values![id]).await? == 1)
    }

    async fn get_default_branch(&self, url: &str) -> Result<Option<String>> {
        let sql = sql!("SELECT default_branch FROM repo_remotes WHERE url = $1");
        let branch = self.select(sql, values![url], |r| r.opt_str("default_branch"));
        Ok(branch.await?.pop().flatten())
    }

    async fn set_default_branch(&self, url: &str, branch: &str, now: i64) -> Result<()> {
        let sql = sql!(
            "INSERT INTO repo_remotes (url, default_branch, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (url) DO UPDATE SET default_branch = $2, updated_at = $3
             WHERE repo_remotes.default_branch IS DISTINCT FROM $2"
        );
        // Every boot says what it saw; only a change is written.
        self.exec(sql, values![url, branch, now]).await.map(drop)
    }

    async fn upsert_env_vars(
        &self,
        project_id: &str,
        vars: &[(String, String)],
        now: i64,
    ) -> Result<()> {
        Engine::upsert_env_vars(self, project_id, vars, now).await
    }

    async fn list_env_vars(&self, project_id: &str) -> Result<Vec<EnvVarRow>> {
        let sql = sql!(select!(
            env_var,
            "FROM env_vars WHERE project_id = $1 ORDER BY name"
        ));
        self.select(sql, values![project_id], env_var_row).await
    }

    async fn delete_env_var(&self, project_id: &str, name: &str) -> Result<bool> {
        let sql = sql!("DELETE FROM env_vars WHERE project_id = $1 AND name = $2");
        Ok(self.exec(sql, values![project_id, name]).await? == 1)
    }

    async fn get_pool_config(&self, project_id: &str) -> Result<Option<PoolConfigRow>> {
        let sql = sql!(select!(pool, "FROM warm_pools WHERE project_id = $1"));
        Ok(self.select(sql, values![project_id], pool_row).await?.pop())
    }

    async fn put_pool_config(
        &self,
        cfg: &PoolConfigRow,
        expected_generation: Option<i64>,
    ) -> Result<bool> {
        let cmds = cfg.setup_commands.as_ref().map(json).transpose()?;
        let mut values = values![
            &cfg.project_id,
            cfg.enabled,
            cfg.target_size,
            cfg.max_age_minutes,
            &cfg.branch,
            cmds,
        ];
        let sql = match expected_generation {
            None => {
                values.extend(values![cfg.created_at, cfg.updated_at]);
                sql!(
                    "INSERT INTO warm_pools (project_id, enabled, target_size, max_age_minutes,
                        branch, setup_commands_json, generation, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)
                     ON CONFLICT (project_id) DO NOTHING"
                )
            }
            Some(generation) => {
                values.extend(values![cfg.updated_at, generation]);
                sql!(
                    "UPDATE warm_pools SET enabled = $2, target_size = $3, max_age_minutes = $4,
                        branch = $5, setup_commands_json = $6, updated_at = $7,
                        generation = generation + 1
                     WHERE project_id = $1 AND generation = $8"
                )
            }
        };
        Ok(self.exec(sql, values).await? == 1)
    }

    async fn insert_instance(&self, i: &InstanceRow) -> Result<()> {
        self.exec(INSERT_INSTANCE, instance_values(i)?)
            .await
            .map(drop)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        let sql = sql!(select!(instance, "FROM instances WHERE id = $1"));
        Ok(self.select(sql, values![id], instance_row).await?.pop())
    }

    async fn list_instances(
        &self,
        project_id: &str,
        status: Option<InstanceStatus>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>> {
        let sql = sql!(select!(
            instance,
            "FROM instances
             WHERE project_id = $1 AND status != 'destroyed' AND kind != 'golden'
               AND (CAST($2 AS TEXT) IS NULL OR status = $2)
             ORDER BY seq DESC LIMIT $3"
        ));
        let values = values![project_id, status.map(|s| s.as_str()), limit];
        self.select(sql, values, instance_row).await
    }

    async fn instances_in(&self, statuses: &[InstanceStatus]) -> Result<Vec<InstanceRow>> {
        let sql = sql!(select!(
            instance,
            "FROM instances WHERE status IN ($1, $2, $3, $4, $5) AND destroyed_at IS NULL
             ORDER BY seq"
        ));
        self.select(sql, status_slots(statuses), instance_row).await
    }

    async fn set_instance_agent(
        &self,
        id: &str,
        agent_url: &str,
        agent_token: &str,
    ) -> Result<bool> {
        let sql = sql!(
            "UPDATE instances SET agent_url = $2, agent_token = $3
             WHERE id = $1 AND status = 'provisioning'"
        );
        let values = values![id, agent_url, agent_token];
        Ok(self.exec_relaxed(sql, values).await? == 1)
    }

    async fn mark_ready(
        &self,
        id: &str,
        now: i64,
        commits: &BTreeMap<String, RepoCommit>,
        claimed: bool,
    ) -> Result<bool> {
        let status = if claimed { "claimed" } else { "ready" };
        // The casts tell PostgreSQL the types of parameters used twice.
        let sql = sql!(
            "UPDATE instances SET status = $3, provisioned_at = $2, finished_at = $2,
                claimed_at = CASE WHEN CAST($3 AS TEXT) = 'claimed' THEN CAST($2 AS BIGINT) END,
                expires_at = CASE WHEN CAST($3 AS TEXT) = 'claimed'
                    THEN CAST($2 AS BIGINT) + lease_ms END,
                commits_json = $4
             WHERE id = $1 AND status = 'provisioning'"
        );
        Ok(self
            .exec(sql, values![id, now, status, json(commits)?])
            .await?
            == 1)
    }

    async fn claim_ready(
        &self,
        project_id: &str,
        task_id: Option<&str>,
        lease_ms: Option<i64>,
        now: i64,
    ) -> Result<Option<InstanceRow>> {
        // Fresh ones first, newest first; the outer `status = 'ready'` is the conditional update
        // itself. On PostgreSQL the inner SELECT locks the instance it picks and passes over any
        // another claim (on this node or another) has locked, so concurrent claims take different
        // instances instead of queueing on the same one; NULLS LAST is SQLite's order for a
        // missing provisioned_at. SQLite's one writer runs claims one at a time.
        let sql = sql!(
            postgres: concat!(
                "UPDATE instances SET status = 'claimed', claimed_at = $2, task_id = $3,
                    lease_ms = COALESCE(CAST($4 AS BIGINT),
                        (SELECT lease_default_s * 1000 FROM projects WHERE id = $1)),
                    expires_at = CAST($2 AS BIGINT) + COALESCE(CAST($4 AS BIGINT),
                        (SELECT lease_default_s * 1000 FROM projects WHERE id = $1))
                 WHERE id = (SELECT id FROM instances
                             WHERE project_id = $1 AND kind = 'pool' AND status = 'ready'
                             ORDER BY stale_at IS NOT NULL, provisioned_at DESC NULLS LAST
                             LIMIT 1 FOR UPDATE SKIP LOCKED)
                   AND status = 'ready'
                   AND COALESCE(CAST($4 AS BIGINT), 0)
                       <= (SELECT lease_max_s * 1000 FROM projects WHERE id = $1)
                 RETURNING ",
                cols!(instance)
            ),
            sqlite: concat!(
                "UPDATE instances SET status = 'claimed', claimed_at = $2, task_id = $3,
                    lease_ms = COALESCE($4, (SELECT lease_default_s * 1000 FROM projects
                                             WHERE id = $1)),
                    expires_at = $2 + COALESCE($4, (SELECT lease_default_s * 1000 FROM projects
                                                    WHERE id = $1))
                 WHERE id = (SELECT id FROM instances
                             WHERE project_id = $1 AND kind = 'pool' AND status = 'ready'
                             ORDER BY stale_at IS NOT NULL, provisioned_at DESC LIMIT 1)
                   AND status = 'ready'
                   AND COALESCE($4, 0) <= (SELECT lease_max_s * 1000 FROM projects WHERE id = $1)
                 RETURNING ",
                cols!(instance)
            ),
        );
        let values = values![project_id, now, task_id, lease_ms];
        Ok(self.exec_returning(sql, values, instance_row).await?.pop())
    }

    async fn renew_lease(
        &self,
        id: &str,
        project_id: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<Option<InstanceRow>> {
        let sql = sql!(concat!(
            "UPDATE instances SET lease_ms = $3, expires_at = CAST($4 AS BIGINT) + $3
             WHERE id = $1 AND project_id = $2 AND status = 'claimed'
               AND (expires_at IS NULL OR expires_at > $4)
             RETURNING ",
            cols!(instance)
        ));
        let values = values![id, project_id, lease_ms, now];
        Ok(self.exec_returning(sql, values, instance_row).await?.pop())
    }

    async fn expire_leases(&self, now: i64) -> Result<Vec<InstanceRow>> {
        let sql = sql!(concat!(
            "UPDATE instances SET status = 'destroyed', destroyed_at = $1, end_reason = 'expired'
             WHERE status = 'claimed' AND expires_at <= $1
             RETURNING ",
            cols!(instance)
        ));
        self.exec_returning(sql, values![now], instance_row).await
    }

    async fn set_stale(&self, id: &str, now: i64) -> Result<bool> {
        let sql = sql!(
            "UPDATE instances SET stale_at = $2
             WHERE id = $1 AND status = 'ready' AND stale_at IS NULL"
        );
        Ok(self.exec(sql, values![id, now]).await? == 1)
    }

    async fn mark_failed(
        &self,
        id: &str,
        failed_step: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let values = values![id, failed_step, reason, now];
        Ok(self.exec(FAIL_PROVISIONING, values).await? == 1)
    }

    async fn fail_interrupted(&self, step: &StepRow, reason: &str, now: i64) -> Result<bool> {
        Engine::fail_interrupted(self, step, reason, now).await
    }

    async fn mark_destroyed(
        &self,
        id: &str,
        from: &[InstanceStatus],
        why: EndReason,
        now: i64,
    ) -> Result<bool> {
        // A failed boot stays failed: its record keeps how the boot ended.
        let sql = sql!(
            "UPDATE instances SET destroyed_at = $1, end_reason = $8,
                status = CASE WHEN status = 'failed' THEN 'failed' ELSE 'destroyed' END
             WHERE id = $2 AND status IN ($3, $4, $5, $6, $7) AND destroyed_at IS NULL"
        );
        let mut values = values![now, id];
        values.extend(status_slots(from));
        values.push(why.as_str().into());
        Ok(self.exec(sql, values).await? == 1)
    }

    async fn pool_status(&self, project_id: &str) -> Result<PoolStatus> {
        let sql = sql!(
            "SELECT status, COUNT(*) AS n FROM instances
             WHERE project_id = $1 AND destroyed_at IS NULL
               AND ((kind = 'pool' AND status IN ('ready', 'provisioning', 'failed'))
                 OR (kind = 'golden' AND status IN ('provisioning', 'failed')))
             GROUP BY status"
        );
        let counts = self.select(sql, values![project_id], |r| {
            Ok((r.str("status")?, r.i64("n")?.max(0) as u64))
        });
        let mut st = PoolStatus::default();
        for (status, n) in counts.await? {
            match status.as_str() {
                "ready" => st.ready = n,
                "provisioning" => st.provisioning = n,
                _ => st.failed = n,
            }
        }
        Ok(st)
    }

    async fn pool_times(&self, project_id: &str) -> Result<(Option<i64>, Option<i64>)> {
        let sql = sql!(
            "SELECT MAX(provisioned_at) AS provisioned, MAX(claimed_at) AS claimed FROM instances
             WHERE project_id = $1 AND kind != 'test'"
        );
        let times = self.select(sql, values![project_id], |r| {
            Ok((r.opt_i64("provisioned")?, r.opt_i64("claimed")?))
        });
        one(times.await?)
    }

    async fn pool_counts(&self, project_id: &str) -> Result<PoolCounts> {
        let sql = sql!(
            "SELECT
                COUNT(*) FILTER (WHERE kind = 'pool' AND status = 'ready') AS ready,
                COUNT(*) FILTER (WHERE kind IN ('pool', 'golden') AND status = 'provisioning')
                    AS provisioning,
                COUNT(*) FILTER (WHERE kind IN ('pool', 'golden') AND status = 'failed'
                    AND destroyed_at IS NULL) AS failed,
                COUNT(*) FILTER (WHERE status = 'claimed') AS claimed,
                COUNT(*) FILTER (WHERE kind = 'pool' AND status = 'ready' AND stale_at IS NOT NULL)
                    AS stale,
                COUNT(*) FILTER (WHERE kind = 'pool' AND claimed_at IS NOT NULL) AS warm_claims,
                COUNT(*) FILTER (WHERE kind = 'cold' AND claimed_at IS NOT NULL) AS cold_claims
             FROM instances WHERE project_id = $1"
        );
        let counts = self.select(sql, values![project_id], |r| {
            let n = |col| r.i64(col).map(|v| v.max(0) as u64);
            Ok(PoolCounts {
                ready: n("ready")?,
                provisioning: n("provisioning")?,
                failed: n("failed")?,
                claimed: n("claimed")?,
                stale: n("stale")?,
                warm_claims: n("warm_claims")?,
                cold_claims: n("cold_claims")?,
            })
        });
        one(counts.await?)
    }

    async fn provisioning_durations(&self, project_id: &str, limit: u32) -> Result<Vec<i64>> {
        let sql = sql!(
            "SELECT provisioned_at - created_at AS took FROM instances
             WHERE project_id = $1 AND provisioned_at IS NOT NULL
             ORDER BY provisioned_at DESC LIMIT $2"
        );
        let values = values![project_id, limit];
        self.select(sql, values, |r| r.i64("took")).await
    }

    async fn pool_snapshot(&self, changed_since: Option<i64>) -> Result<PoolSnapshot> {
        Engine::pool_snapshot(self, changed_since).await
    }

    async fn place_pool_boots(
        &self,
        rows: &[InstanceRow],
        target: u32,
        capacity: u32,
    ) -> Result<usize> {
        Engine::place_pool_boots(self, rows, target, capacity).await
    }

    async fn setting(&self, name: &str, value: &str) -> Result<String> {
        // One statement: the row as it is after this insert-or-keep. Keeping the value by writing
        // it again is what makes the row come back, and on PostgreSQL it also sees a row another
        // server inserted after this statement began (a read in the same statement would not).
        let sql = sql!(
            "INSERT INTO settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = settings.value
             RETURNING value"
        );
        let kept = self.exec_returning(sql, values![name, value], |r| r.str("value"));
        one(kept.await?)
    }

    async fn register_node(&self, n: &NodeRow, now: i64) -> Result<bool> {
        // One statement: the check that the name is free (or already ours) and the write cannot
        // be told apart by another node registering at the same moment.
        let sql = sql!(
            "INSERT INTO nodes (name, node_id, url, capacity, lease_until, started_at, renewed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id,
                url = excluded.url, capacity = excluded.capacity,
                lease_until = excluded.lease_until, started_at = excluded.started_at,
                renewed_at = excluded.renewed_at
             WHERE nodes.node_id = excluded.node_id OR nodes.lease_until < $8"
        );
        let values = values![
            &n.name,
            &n.node_id,
            &n.url,
            n.capacity,
            n.lease_until,
            n.started_at,
            n.renewed_at,
            now,
        ];
        Ok(self.exec(sql, values).await? == 1)
    }

    async fn renew_node(
        &self,
        name: &str,
        node_id: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool> {
        let sql = sql!(
            "UPDATE nodes SET lease_until = $3, renewed_at = $4
             WHERE name = $1 AND node_id = $2"
        );
        Ok(self
            .exec(sql, values![name, node_id, lease_until, now])
            .await?
            == 1)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let sql = sql!(select!(node, "FROM nodes ORDER BY name"));
        self.select(sql, vec![], node_row).await
    }

    async fn fail_instances_of_lost_node(
        &self,
        node: &str,
        now: i64,
        reason: &str,
    ) -> Result<Vec<String>> {
        // The lease is checked by the statement itself: a node renewing meanwhile either renewed
        // first (nothing is failed) or after (its instances were already lost).
        let sql = sql!(
            "UPDATE instances SET status = 'failed', failure_reason = $3,
                finished_at = COALESCE(finished_at, $2)
             WHERE node = $1 AND status IN ('provisioning', 'ready', 'claimed')
               AND EXISTS (SELECT 1 FROM nodes WHERE name = $1 AND lease_until < $2)
             RETURNING id"
        );
        let values = values![node, now, reason];
        self.exec_returning(sql, values, |r| r.str("id")).await
    }

    async fn get_pool_state(&self, project_id: &str) -> Result<PoolState> {
        let state = self.select(POOL_STATE, values![project_id], pool_state_row);
        Ok(state.await?.pop().unwrap_or_default())
    }

    async fn update_pool_state(
        &self,
        project_id: &str,
        now: i64,
        change: PoolStateChange,
    ) -> Result<PoolState> {
        Engine::update_pool_state(self, project_id, now, change).await
    }

    async fn get_autoscale(&self, project_id: &str) -> Result<Option<AutoscaleRow>> {
        let sql = sql!(select!(
            autoscale,
            "FROM pool_autoscale WHERE project_id = $1"
        ));
        Ok(self
            .select(sql, values![project_id], autoscale_row)
            .await?
            .pop())
    }

    async fn put_autoscale(
        &self,
        row: &AutoscaleRow,
        expected_generation: Option<i64>,
    ) -> Result<bool> {
        let mut values = values![
            &row.project_id,
            row.enabled,
            row.min_size,
            row.max_size,
            row.updated_at,
        ];
        let sql = match expected_generation {
            None => sql!(
                "INSERT INTO pool_autoscale (project_id, enabled, min_size, max_size, updated_at,
                    generation)
                 VALUES ($1, $2, $3, $4, $5, 1)
                 ON CONFLICT (project_id) DO NOTHING"
            ),
            Some(generation) => {
                values.extend(values![generation]);
                sql!(
                    "UPDATE pool_autoscale SET enabled = $2, min_size = $3, max_size = $4,
                        updated_at = $5, generation = generation + 1
                     WHERE project_id = $1 AND generation = $6"
                )
            }
        };
        Ok(self.exec(sql, values).await? == 1)
    }

    async fn record_scale(
        &self,
        project_id: &str,
        prev_changed_at: Option<i64>,
        scale: &ScaleRecord,
    ) -> Result<bool> {
        let sql = sql!(
            "UPDATE pool_autoscale SET target = $2, changed_at = $3, reason = $4, peak = $5,
                boot_ms = $6
             WHERE project_id = $1 AND changed_at IS NOT DISTINCT FROM $7"
        );
        let values = values![
            project_id,
            scale.target,
            scale.changed_at,
            scale.reason.as_str(),
            scale.peak,
            scale.boot_ms,
            prev_changed_at,
        ];
        // A decision is advice the next pass makes again: it need not reach the disk first.
        Ok(self.exec_relaxed(sql, values).await? == 1)
    }

    async fn claims_since(&self, project_id: &str, since: i64) -> Result<Vec<(String, i64)>> {
        // Read when a reconciler starts following a pool, not on a hot path: by the project's
        // index, with no index of its own for claim writes to keep up.
        let sql = sql!(
            "SELECT id, asked_at FROM (
                SELECT id, CASE WHEN kind = 'cold' THEN created_at ELSE claimed_at END AS asked_at
                FROM instances
                WHERE project_id = $1
                  AND (claimed_at > $2 OR (kind = 'cold' AND created_at > $2))
             ) AS claims WHERE asked_at > $2 ORDER BY asked_at"
        );
        self.select(sql, values![project_id, since], |r| {
            Ok((r.str("id")?, r.i64("asked_at")?))
        })
        .await
    }

    async fn insert_step(&self, s: &StepRow) -> Result<()> {
        let sql = sql!(insert_step!());
        self.exec_relaxed(sql, step_values(s)?).await.map(drop)
    }

    async fn list_steps(&self, instance_id: &str) -> Result<Vec<StepRow>> {
        let sql = sql!(select!(
            step,
            "FROM steps WHERE instance_id = $1 ORDER BY seq"
        ));
        self.select(sql, values![instance_id], step_row).await
    }

    async fn insert_golden(&self, g: &GoldenRow) -> Result<()> {
        let sql = sql!(
            "INSERT INTO goldens (id, project_id, config_hash, backend, commits_json, status,
                created_at, node)
             VALUES ($1, $2, $3, $4, $5, 'ready', $6, $7)"
        );
        let values = values![
            &g.id,
            &g.project_id,
            &g.config_hash,
            &g.backend,
            json(&g.commits)?,
            g.created_at,
            &g.node,
        ];
        self.exec(sql, values).await.map(drop)
    }

    async fn ready_goldens(&self) -> Result<Vec<GoldenRow>> {
        self.select(snapshot::READY_GOLDENS, vec![], golden_row)
            .await
    }

    async fn get_golden(&self, id: &str) -> Result<Option<GoldenRow>> {
        let sql = sql!(select!(golden, "FROM goldens WHERE id = $1"));
        Ok(self.select(sql, values![id], golden_row).await?.pop())
    }

    async fn mark_golden_deleted(&self, id: &str, now: i64) -> Result<bool> {
        let sql = sql!(
            "UPDATE goldens SET status = 'deleted', deleted_at = $2
             WHERE id = $1 AND status = 'ready'"
        );
        Ok(self.exec(sql, values![id, now]).await? == 1)
    }

    async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        let sql = sql!(
            "INSERT INTO tokens (id, project_id, hash, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5)"
        );
        let values = values![&t.id, &t.project_id, &t.hash, t.created_at, t.last_used_at];
        self.exec(sql, values).await.map(drop)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let sql = sql!(select!(token, "FROM tokens WHERE hash = $1"));
        Ok(self.select(sql, values![hash], token_row).await?.pop())
    }

    async fn list_tokens(&self, project_id: &str) -> Result<Vec<TokenRow>> {
        let sql = sql!(select!(
            token,
            "FROM tokens WHERE project_id = $1 ORDER BY created_at, id"
        ));
        self.select(sql, values![project_id], token_row).await
    }

    async fn delete_token(&self, project_id: &str, id: &str) -> Result<bool> {
        let sql = sql!("DELETE FROM tokens WHERE project_id = $1 AND id = $2");
        Ok(self.exec(sql, values![project_id, id]).await? == 1)
    }

    async fn touch_token(&self, id: &str, now: i64) -> Result<()> {
        let sql = sql!("UPDATE tokens SET last_used_at = $2 WHERE id = $1");
        self.exec(sql, values![id, now]).await.map(drop)
    }
}
