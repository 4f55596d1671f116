//! The PostgreSQL engine, for many nodes sharing one database: the same [`Store`] semantics as the
//! SQLite engine, but every guarantee has to hold across processes, so each state change is one
//! conditional statement (or one transaction holding row locks), claims skip rows another node has
//! locked, and migrations run under an advisory lock. Nodes hold leases on rows of their own;
//! placing pool boots locks the pool's row (skipping a pool another node is filling) and then the
//! node's row (its capacity spans pools), so neither a pool's target nor a node's capacity is
//! overshot by nodes placing at once. Statements are prepared once per pooled connection and
//! reused.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{IsolationLevel, NoTls, Row};
use warmpool_types::api::PoolStatus;
use warmpool_types::state::InstanceStatus;

use crate::{
    EnvVarRow, GoldenRow, InstanceRow, NodeRow, PoolConfigRow, PoolCounts, PoolSnapshot, PoolState,
    PoolStateChange, ProjectRow, RepoCommit, Result, StepRow, Store, StoreError, TokenRow,
};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_nodes.sql")),
    (
        3,
        include_str!("../migrations/postgres/0003_repo_sources.sql"),
    ),
    (4, include_str!("../migrations/postgres/0004_resources.sql")),
];

/// The advisory lock every node takes to migrate, so that nodes starting together apply each
/// migration once ("warmpool" in ASCII).
const MIGRATION_LOCK: i64 = 0x7761_726d_706f_6f6c;

/// Connections per store (per node): enough for the API's concurrent requests and the reconciler,
/// few enough that many nodes stay under the server's `max_connections`.
const DEFAULT_POOL_SIZE: usize = 16;

/// How long to wait for a connection (from the pool or a new one) before answering
/// [`StoreError::Unavailable`]; the SQLite engine's busy timeout is the same.
const WAIT: Duration = Duration::from_secs(5);

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The error and each of its causes, so that the one string a [`StoreError`] keeps says what the
/// server said (tokio-postgres shows only "db error" on its own).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    // The server's DETAIL and HINT come on lines of their own; a log line keeps them.
    out.replace('\n', " ")
}

fn map_err(e: tokio_postgres::Error) -> StoreError {
    let msg = describe(&e);
    let Some(code) = e.code() else {
        // Not an answer from the server: the connection failed, broke or timed out — unless it is
        // our own mistake (a type that does not convert, a missing column).
        let transport = e.is_closed()
            || matches!(
                e.to_string().as_str(),
                "error communicating with the server"
                    | "error connecting to server"
                    | "timeout waiting for server"
                    | "error performing TLS handshake"
            );
        return if transport {
            StoreError::Unavailable(msg)
        } else {
            StoreError::Internal(msg)
        };
    };
    match code.code() {
        // Integrity rules, as SQLite's constraint violations: the caller chose the ids.
        c if c.starts_with("23") => StoreError::Duplicate(msg),
        // Connection exceptions, and the server shutting down, starting up, full (too many
        // connections, disk, memory), or another transaction in the way: all pass.
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
            StoreError::Unavailable(msg)
        }
        _ if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            StoreError::Unavailable(msg)
        }
        _ => StoreError::Internal(msg),
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map_err(e),
        PoolError::Timeout(t) => {
            StoreError::Unavailable(format!("no database connection within {WAIT:?} ({t:?})"))
        }
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
        e => StoreError::Internal(format!("cannot get a database connection: {e}")),
    }
}

fn decode_err(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable row: {what}"))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

fn get<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i).map_err(|e| decode_err(describe(&e)))
}

fn get_u32(r: &Row, i: usize) -> Result<u32> {
    u32::try_from(get::<i64>(r, i)?).map_err(|e| decode_err(format!("column {i}: {e}")))
}

fn get_json<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> Result<T> {
    serde_json::from_str(get::<&str>(r, i)?).map_err(|e| decode_err(format!("column {i}: {e}")))
}

fn get_enum<T: std::str::FromStr<Err = String>>(r: &Row, i: usize) -> Result<T> {
    get::<&str>(r, i)?
        .parse()
        .map_err(|e: String| decode_err(format!("column {i}: {e}")))
}

// Column lists as macros, so that every statement is one `&'static str` built at compile time.
macro_rules! project_cols {
    () => {
        "seq, id, name, description, task_code, repos_json, devbox_json, generation, created_at, \
         updated_at, resources_json"
    };
}

fn project_row(r: &Row) -> Result<ProjectRow> {
    Ok(ProjectRow {
        seq: get(r, 0)?,
        id: get(r, 1)?,
        name: get(r, 2)?,
        description: get(r, 3)?,
        task_code: get(r, 4)?,
        repos: get_json(r, 5)?,
        devbox: get_json(r, 6)?,
        generation: get(r, 7)?,
        created_at: get(r, 8)?,
        updated_at: get(r, 9)?,
        resources: get_json(r, 10)?,
    })
}

macro_rules! pool_cols {
    () => {
        "project_id, enabled, target_size, max_age_minutes, branch, setup_commands_json, \
         generation, created_at, updated_at"
    };
}

fn pool_row(r: &Row) -> Result<PoolConfigRow> {
    let cmds: Option<&str> = get(r, 5)?;
    Ok(PoolConfigRow {
        project_id: get(r, 0)?,
        enabled: get(r, 1)?,
        target_size: get_u32(r, 2)?,
        max_age_minutes: get_u32(r, 3)?,
        branch: get(r, 4)?,
        setup_commands: cmds
            .map(|c| serde_json::from_str(c).map_err(|e| decode_err(format!("column 5: {e}"))))
            .transpose()?,
        generation: get(r, 6)?,
        created_at: get(r, 7)?,
        updated_at: get(r, 8)?,
    })
}

macro_rules! instance_cols {
    () => {
        "seq, id, vm_id, project_id, kind, status, total_steps, failed_step, failure_reason, \
         backend, agent_url, agent_token, config_hash, task_id, created_at, provisioned_at, \
         finished_at, claimed_at, destroyed_at, stale_at, commits_json, golden_id, node"
    };
}

fn instance_row(r: &Row) -> Result<InstanceRow> {
    let commits: Option<&str> = get(r, 20)?;
    Ok(InstanceRow {
        seq: get(r, 0)?,
        id: get(r, 1)?,
        vm_id: get(r, 2)?,
        project_id: get(r, 3)?,
        kind: get_enum(r, 4)?,
        status: get_enum(r, 5)?,
        total_steps: get_u32(r, 6)?,
        failed_step: get(r, 7)?,
        failure_reason: get(r, 8)?,
        backend: get(r, 9)?,
        agent_url: get(r, 10)?,
        agent_token: get(r, 11)?,
        config_hash: get(r, 12)?,
        task_id: get(r, 13)?,
        created_at: get(r, 14)?,
        provisioned_at: get(r, 15)?,
        finished_at: get(r, 16)?,
        claimed_at: get(r, 17)?,
        destroyed_at: get(r, 18)?,
        stale_at: get(r, 19)?,
        commits: commits
            .map(|c| serde_json::from_str(c).map_err(|e| decode_err(format!("column 20: {e}"))))
            .transpose()?
            .unwrap_or_default(),
        golden_id: get(r, 21)?,
        node: get(r, 22)?,
    })
}

macro_rules! golden_cols {
    () => {
        "id, project_id, config_hash, backend, commits_json, status, created_at, node"
    };
}

fn golden_row(r: &Row) -> Result<GoldenRow> {
    Ok(GoldenRow {
        id: get(r, 0)?,
        project_id: get(r, 1)?,
        config_hash: get(r, 2)?,
        backend: get(r, 3)?,
        commits: get_json(r, 4)?,
        ready: get::<&str>(r, 5)? == "ready",
        created_at: get(r, 6)?,
        node: get(r, 7)?,
    })
}

macro_rules! node_cols {
    () => {
        "name, node_id, url, capacity, lease_until, started_at, renewed_at"
    };
}

fn node_row(r: &Row) -> Result<NodeRow> {
    Ok(NodeRow {
        name: get(r, 0)?,
        node_id: get(r, 1)?,
        url: get(r, 2)?,
        capacity: get_u32(r, 3)?,
        lease_until: get(r, 4)?,
        started_at: get(r, 5)?,
        renewed_at: get(r, 6)?,
    })
}

fn step_row(r: &Row) -> Result<StepRow> {
    let meta: Option<&str> = get(r, 8)?;
    Ok(StepRow {
        instance_id: get(r, 0)?,
        seq: get_u32(r, 1)?,
        name: get(r, 2)?,
        success: get::<&str>(r, 3)? == "success",
        output: get(r, 4)?,
        error: get(r, 5)?,
        duration_ms: get::<i64>(r, 6)?.max(0) as u64,
        finished_at: get(r, 7)?,
        metadata: meta
            .map(|m| serde_json::from_str(m).map_err(|e| decode_err(format!("column 8: {e}"))))
            .transpose()?,
    })
}

macro_rules! pool_state_cols {
    () => {
        "consecutive_failures, identical_failures, last_failed_step, last_failed_config, \
         last_error, degraded_since, next_attempt_at"
    };
}

fn pool_state_row(r: &Row, first: usize) -> Result<PoolState> {
    Ok(PoolState {
        consecutive_failures: get_u32(r, first)?,
        identical_failures: get_u32(r, first + 1)?,
        last_failed_step: get(r, first + 2)?,
        last_failed_config: get(r, first + 3)?,
        last_error: get(r, first + 4)?,
        degraded_since: get(r, first + 5)?,
        next_attempt_at: get(r, first + 6)?,
    })
}

fn token_row(r: &Row) -> Result<TokenRow> {
    Ok(TokenRow {
        id: get(r, 0)?,
        project_id: get(r, 1)?,
        hash: get(r, 2)?,
        created_at: get(r, 3)?,
        last_used_at: get(r, 4)?,
    })
}

/// The row a statement that returns exactly one row returned.
fn one(rows: Vec<Row>) -> Result<Row> {
    rows.into_iter()
        .next()
        .ok_or_else(|| StoreError::Internal("a statement returned no row".into()))
}

fn rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host:port/db`, or the
    /// `key=value` form) and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, DEFAULT_POOL_SIZE).await
    }

    /// [`PgStore::connect`] with at most `max_connections` connections.
    pub async fn connect_with(url: &str, max_connections: usize) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("invalid database URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("warmpool");
        }
        config.connect_timeout(WAIT);
        // A node whose database host vanished (no reset, no FIN) learns it within half a minute
        // instead of the system's two hours, and answers Unavailable.
        config
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection the server closed (restart, failover) is known closed without a
                // round trip; a query on one that broke silently fails once, as Unavailable.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not yet recorded, all in one transaction under an advisory lock:
    /// nodes starting at once wait for each other, and a failed migration leaves nothing behind.
    async fn migrate(&self) -> Result<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(map_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(map_err)?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await
                .map_err(map_err)?
                .is_some();
            if !done {
                tx.batch_execute(sql).await.map_err(map_err)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    &[version, &warmpool_types::time::now_ms()],
                )
                .await
                .map_err(map_err)?;
                tracing::info!(version, "applied store migration");
            }
        }
        tx.commit().await.map_err(map_err)
    }

    async fn conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn exec(&self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let c = self.conn().await?;
        let st = c.prepare_cached(sql).await.map_err(map_err)?;
        c.execute(&st, params).await.map_err(map_err)
    }

    async fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(sql).await.map_err(map_err)?;
        c.query(&st, params).await.map_err(map_err)
    }

    async fn query_opt(&self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(sql).await.map_err(map_err)?;
        c.query_opt(&st, params).await.map_err(map_err)
    }

    async fn query_one(&self, sql: &'static str, params: Params<'_>) -> Result<Row> {
        let c = self.conn().await?;
        let st = c.prepare_cached(sql).await.map_err(map_err)?;
        c.query_one(&st, params).await.map_err(map_err)
    }
}

/// Runs `sql` in a transaction, its statement prepared once per connection.
async fn tx_query(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &'static str,
    params: Params<'_>,
) -> Result<Vec<Row>> {
    let st = tx.prepare_cached(sql).await.map_err(map_err)?;
    tx.query(&st, params).await.map_err(map_err)
}

/// Inserts one instance, on a connection or in a transaction (placement inserts its boots in the
/// transaction holding its locks).
async fn insert_instance_in(c: &impl GenericClient, i: &InstanceRow) -> Result<()> {
    let commits = json(&i.commits)?;
    let st = c
        .prepare_cached(
            "INSERT INTO instances (id, vm_id, project_id, kind, status, total_steps,
                failed_step, failure_reason, backend, agent_url, agent_token, config_hash,
                task_id, created_at, provisioned_at, finished_at, claimed_at, destroyed_at,
                stale_at, commits_json, golden_id, node)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                $17, $18, $19, $20, $21, $22)",
        )
        .await
        .map_err(map_err)?;
    c.execute(
        &st,
        &[
            &i.id,
            &i.vm_id,
            &i.project_id,
            &i.kind.as_str(),
            &i.status.as_str(),
            &i64::from(i.total_steps),
            &i.failed_step,
            &i.failure_reason,
            &i.backend,
            &i.agent_url,
            &i.agent_token,
            &i.config_hash,
            &i.task_id,
            &i.created_at,
            &i.provisioned_at,
            &i.finished_at,
            &i.claimed_at,
            &i.destroyed_at,
            &i.stale_at,
            &commits,
            &i.golden_id,
            &i.node,
        ],
    )
    .await
    .map(drop)
    .map_err(map_err)
}

#[async_trait]
impl Store for PgStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        self.query_one("SELECT 1", &[]).await.map(drop)
    }

    async fn insert_project(&self, p: &ProjectRow) -> Result<()> {
        let (repos, devbox) = (json(&p.repos)?, json(&p.devbox)?);
        let resources = json(&p.resources)?;
        self.exec(
            "INSERT INTO projects (id, name, description, task_code, repos_json, devbox_json,
                generation, created_at, updated_at, resources_json)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &p.id,
                &p.name,
                &p.description,
                &p.task_code,
                &repos,
                &devbox,
                &p.generation,
                &p.created_at,
                &p.updated_at,
                &resources,
            ],
        )
        .await
        .map(drop)
    }

    async fn get_project(&self, id: &str) -> Result<Option<ProjectRow>> {
        self.query_opt(
            concat!("SELECT ", project_cols!(), " FROM projects WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(project_row)
        .transpose()
    }

    async fn list_projects(
        &self,
        after_seq: Option<i64>,
        limit: u32,
        only: Option<&str>,
    ) -> Result<Vec<ProjectRow>> {
        let rs = self
            .query(
                concat!(
                    "SELECT ",
                    project_cols!(),
                    " FROM projects
                     WHERE seq > $1 AND ($2::text IS NULL OR id = $2)
                     ORDER BY seq LIMIT $3"
                ),
                &[&after_seq.unwrap_or(0), &only, &i64::from(limit)],
            )
            .await?;
        rows(rs, project_row)
    }

    async fn update_project(&self, p: &ProjectRow) -> Result<bool> {
        let (repos, devbox) = (json(&p.repos)?, json(&p.devbox)?);
        let resources = json(&p.resources)?;
        let n = self
            .exec(
                "UPDATE projects SET name = $1, description = $2, task_code = $3, repos_json = $4,
                    devbox_json = $5, updated_at = $6, generation = generation + 1,
                    resources_json = $9
                 WHERE id = $7 AND generation = $8",
                &[
                    &p.name,
                    &p.description,
                    &p.task_code,
                    &repos,
                    &devbox,
                    &p.updated_at,
                    &p.id,
                    &p.generation,
                    &resources,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn delete_project(&self, id: &str) -> Result<bool> {
        Ok(self
            .exec("DELETE FROM projects WHERE id = $1", &[&id])
            .await?
            == 1)
    }

    async fn get_default_branch(&self, url: &str) -> Result<Option<String>> {
        match self
            .query_opt(
                "SELECT default_branch FROM repo_remotes WHERE url = $1",
                &[&url],
            )
            .await?
        {
            Some(r) => get(&r, 0),
            None => Ok(None),
        }
    }

    async fn set_default_branch(&self, url: &str, branch: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO repo_remotes (url, default_branch, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (url) DO UPDATE SET default_branch = $2, updated_at = $3",
            &[&url, &branch, &now],
        )
        .await
        .map(drop)
    }

    async fn upsert_env_vars(
        &self,
        project_id: &str,
        vars: &[(String, String)],
        now: i64,
    ) -> Result<()> {
        // One statement per variable, in one transaction: a name given twice is bumped twice, as
        // in SQLite (a single multi-row upsert would refuse to touch a row twice).
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let st = tx
            .prepare_cached(
                "INSERT INTO env_vars (project_id, name, value, version, updated_at)
                 VALUES ($1, $2, $3, 1, $4)
                 ON CONFLICT (project_id, name) DO UPDATE
                    SET value = $3, version = env_vars.version + 1, updated_at = $4",
            )
            .await
            .map_err(map_err)?;
        for (name, value) in vars {
            tx.execute(&st, &[&project_id, name, value, &now])
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn list_env_vars(&self, project_id: &str) -> Result<Vec<EnvVarRow>> {
        let rs = self
            .query(
                "SELECT name, value, version, updated_at FROM env_vars
                 WHERE project_id = $1 ORDER BY name",
                &[&project_id],
            )
            .await?;
        rows(rs, |r| {
            Ok(EnvVarRow {
                name: get(r, 0)?,
                value: get(r, 1)?,
                version: get(r, 2)?,
                updated_at: get(r, 3)?,
            })
        })
    }

    async fn delete_env_var(&self, project_id: &str, name: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM env_vars WHERE project_id = $1 AND name = $2",
                &[&project_id, &name],
            )
            .await?
            == 1)
    }

    async fn get_pool_config(&self, project_id: &str) -> Result<Option<PoolConfigRow>> {
        self.query_opt(
            concat!(
                "SELECT ",
                pool_cols!(),
                " FROM warm_pools WHERE project_id = $1"
            ),
            &[&project_id],
        )
        .await?
        .as_ref()
        .map(pool_row)
        .transpose()
    }

    async fn put_pool_config(
        &self,
        cfg: &PoolConfigRow,
        expected_generation: Option<i64>,
    ) -> Result<bool> {
        let cmds = cfg.setup_commands.as_ref().map(json).transpose()?;
        let (target, max_age) = (i64::from(cfg.target_size), i64::from(cfg.max_age_minutes));
        let n = match expected_generation {
            None => {
                self.exec(
                    "INSERT INTO warm_pools (project_id, enabled, target_size, max_age_minutes,
                        branch, setup_commands_json, generation, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)
                     ON CONFLICT (project_id) DO NOTHING",
                    &[
                        &cfg.project_id,
                        &cfg.enabled,
                        &target,
                        &max_age,
                        &cfg.branch,
                        &cmds,
                        &cfg.created_at,
                        &cfg.updated_at,
                    ],
                )
                .await?
            }
            Some(generation) => {
                self.exec(
                    "UPDATE warm_pools SET enabled = $2, target_size = $3, max_age_minutes = $4,
                        branch = $5, setup_commands_json = $6, updated_at = $7,
                        generation = generation + 1
                     WHERE project_id = $1 AND generation = $8",
                    &[
                        &cfg.project_id,
                        &cfg.enabled,
                        &target,
                        &max_age,
                        &cfg.branch,
                        &cmds,
                        &cfg.updated_at,
                        &generation,
                    ],
                )
                .await?
            }
        };
        Ok(n == 1)
    }

    async fn insert_instance(&self, i: &InstanceRow) -> Result<()> {
        insert_instance_in(&self.conn().await?, i).await
    }

    async fn get_instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        self.query_opt(
            concat!("SELECT ", instance_cols!(), " FROM instances WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(instance_row)
        .transpose()
    }

    async fn list_instances(
        &self,
        project_id: &str,
        status: Option<InstanceStatus>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>> {
        let rs = self
            .query(
                concat!(
                    "SELECT ",
                    instance_cols!(),
                    " FROM instances
                     WHERE project_id = $1 AND status != 'destroyed' AND kind != 'golden'
                       AND ($2::text IS NULL OR status = $2)
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[&project_id, &status.map(|s| s.as_str()), &i64::from(limit)],
            )
            .await?;
        rows(rs, instance_row)
    }

    async fn instances_in(&self, statuses: &[InstanceStatus]) -> Result<Vec<InstanceRow>> {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let rs = self
            .query(
                concat!(
                    "SELECT ",
                    instance_cols!(),
                    " FROM instances WHERE status = ANY($1) ORDER BY seq"
                ),
                &[&statuses],
            )
            .await?;
        rows(rs, instance_row)
    }

    async fn set_instance_agent(
        &self,
        id: &str,
        agent_url: &str,
        agent_token: &str,
    ) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE instances SET agent_url = $2, agent_token = $3
                 WHERE id = $1 AND status = 'provisioning'",
                &[&id, &agent_url, &agent_token],
            )
            .await?
            == 1)
    }

    async fn mark_ready(
        &self,
        id: &str,
        now: i64,
        commits: &BTreeMap<String, RepoCommit>,
        claimed: bool,
    ) -> Result<bool> {
        let commits = json(commits)?;
        let status = if claimed { "claimed" } else { "ready" };
        Ok(self
            .exec(
                "UPDATE instances SET status = $3, provisioned_at = $2, finished_at = $2,
                    claimed_at = CASE WHEN $3::text = 'claimed' THEN $2::bigint END,
                    commits_json = $4
                 WHERE id = $1 AND status = 'provisioning'",
                &[&id, &now, &status, &commits],
            )
            .await?
            == 1)
    }

    async fn claim_ready(
        &self,
        project_id: &str,
        task_id: Option<&str>,
        now: i64,
    ) -> Result<Option<InstanceRow>> {
        // The inner SELECT locks the instance it picks and passes over any another claim (on this
        // node or another) has locked, so concurrent claims take different instances instead of
        // queueing on the same one; the outer `status = 'ready'` is the conditional update itself.
        // NULLS LAST: SQLite sorts a missing provisioned_at last in descending order.
        self.query_opt(
            concat!(
                "UPDATE instances SET status = 'claimed', claimed_at = $2, task_id = $3
                 WHERE id = (SELECT id FROM instances
                             WHERE project_id = $1 AND kind = 'pool' AND status = 'ready'
                             ORDER BY stale_at IS NOT NULL, provisioned_at DESC NULLS LAST
                             LIMIT 1 FOR UPDATE SKIP LOCKED)
                   AND status = 'ready'
                 RETURNING ",
                instance_cols!()
            ),
            &[&project_id, &now, &task_id],
        )
        .await?
        .as_ref()
        .map(instance_row)
        .transpose()
    }

    async fn set_stale(&self, id: &str, now: i64) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE instances SET stale_at = $2
                 WHERE id = $1 AND status = 'ready' AND stale_at IS NULL",
                &[&id, &now],
            )
            .await?
            == 1)
    }

    async fn mark_failed(
        &self,
        id: &str,
        failed_step: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE instances SET status = 'failed', failed_step = $2, failure_reason = $3,
                    finished_at = $4
                 WHERE id = $1 AND status = 'provisioning'",
                &[&id, &failed_step, &reason, &now],
            )
            .await?
            == 1)
    }

    async fn fail_interrupted(&self, s: &StepRow, reason: &str, now: i64) -> Result<bool> {
        let meta = s.metadata.as_ref().map(json).transpose()?;
        // One statement: the step is recorded exactly when the instance was still provisioning.
        let row = self
            .query_one(
                "WITH failed AS (
                    UPDATE instances SET status = 'failed', failed_step = $3, failure_reason = $9,
                        finished_at = $10
                    WHERE id = $1 AND status = 'provisioning'
                    RETURNING id
                 ), recorded AS (
                    INSERT INTO steps (instance_id, seq, name, status, output, error, duration_ms,
                        finished_at, metadata_json)
                    SELECT id, $2, $3, 'error', $4, $5, $6, $7, $8 FROM failed
                    ON CONFLICT (instance_id, seq) DO NOTHING
                 )
                 SELECT count(*) FROM failed",
                &[
                    &s.instance_id,
                    &i64::from(s.seq),
                    &s.name,
                    &s.output,
                    &s.error,
                    &(s.duration_ms as i64),
                    &s.finished_at,
                    &meta,
                    &reason,
                    &now,
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    async fn mark_destroyed(&self, id: &str, from: &[InstanceStatus], now: i64) -> Result<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        Ok(self
            .exec(
                "UPDATE instances SET status = 'destroyed', destroyed_at = $1
                 WHERE id = $2 AND status = ANY($3)",
                &[&now, &id, &from],
            )
            .await?
            == 1)
    }

    async fn pool_status(&self, project_id: &str) -> Result<PoolStatus> {
        let rs = self
            .query(
                "SELECT status, COUNT(*) FROM instances
                 WHERE project_id = $1
                   AND ((kind = 'pool' AND status IN ('ready', 'provisioning', 'failed'))
                     OR (kind = 'golden' AND status IN ('provisioning', 'failed')))
                 GROUP BY status",
                &[&project_id],
            )
            .await?;
        let mut st = PoolStatus::default();
        for r in &rs {
            let n = get::<i64>(r, 1)?.max(0) as u64;
            match get::<&str>(r, 0)? {
                "ready" => st.ready = n,
                "provisioning" => st.provisioning = n,
                _ => st.failed = n,
            }
        }
        Ok(st)
    }

    async fn pool_times(&self, project_id: &str) -> Result<(Option<i64>, Option<i64>)> {
        let r = self
            .query_one(
                "SELECT MAX(provisioned_at), MAX(claimed_at) FROM instances
                 WHERE project_id = $1 AND kind != 'test'",
                &[&project_id],
            )
            .await?;
        Ok((get(&r, 0)?, get(&r, 1)?))
    }

    async fn pool_counts(&self, project_id: &str) -> Result<PoolCounts> {
        let r = self
            .query_one(
                "SELECT
                    COUNT(*) FILTER (WHERE kind = 'pool' AND status = 'ready'),
                    COUNT(*) FILTER (WHERE kind IN ('pool', 'golden') AND status = 'provisioning'),
                    COUNT(*) FILTER (WHERE kind IN ('pool', 'golden') AND status = 'failed'),
                    COUNT(*) FILTER (WHERE status = 'claimed'),
                    COUNT(*) FILTER (WHERE kind = 'pool' AND status = 'ready' AND stale_at IS NOT NULL),
                    COUNT(*) FILTER (WHERE kind = 'pool' AND claimed_at IS NOT NULL),
                    COUNT(*) FILTER (WHERE kind = 'cold' AND claimed_at IS NOT NULL)
                 FROM instances WHERE project_id = $1",
                &[&project_id],
            )
            .await?;
        let n = |i: usize| get::<i64>(&r, i).map(|v| v.max(0) as u64);
        Ok(PoolCounts {
            ready: n(0)?,
            provisioning: n(1)?,
            failed: n(2)?,
            claimed: n(3)?,
            stale: n(4)?,
            warm_claims: n(5)?,
            cold_claims: n(6)?,
        })
    }

    async fn provisioning_durations(&self, project_id: &str, limit: u32) -> Result<Vec<i64>> {
        let rs = self
            .query(
                "SELECT provisioned_at - created_at FROM instances
                 WHERE project_id = $1 AND provisioned_at IS NOT NULL
                 ORDER BY provisioned_at DESC LIMIT $2",
                &[&project_id, &i64::from(limit)],
            )
            .await?;
        rows(rs, |r| get(r, 0))
    }

    async fn pool_snapshot(&self, changed_since: Option<i64>) -> Result<PoolSnapshot> {
        let mut c = self.conn().await?;
        // One snapshot for every read below, and it only reads.
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(map_err)?;
        // The first statement takes the transaction's snapshot; its xmin is the revision: every
        // row this snapshot does not show was written by a transaction at or above it (see the
        // instances_stamp_rev trigger), so the next `rev >= xmin` read misses nothing. Rows
        // written by such transactions that did commit in time come back twice, unchanged.
        let rev: i64 = get(
            &one(tx_query(
                &tx,
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await?)?,
            0,
        )?;
        let configs = rows(
            tx_query(
                &tx,
                concat!("SELECT ", pool_cols!(), " FROM warm_pools"),
                &[],
            )
            .await?,
            pool_row,
        )?;
        let projects = rows(
            tx_query(
                &tx,
                concat!("SELECT ", project_cols!(), " FROM projects ORDER BY seq"),
                &[],
            )
            .await?,
            project_row,
        )?;
        let env_versions = rows(
            tx_query(
                &tx,
                "SELECT project_id, name, version FROM env_vars ORDER BY project_id, name",
                &[],
            )
            .await?,
            |r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)),
        )?;
        let states = tx_query(
            &tx,
            concat!(
                "SELECT project_id, ",
                pool_state_cols!(),
                " FROM pool_state"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, pool_state_row(r, 1)?)))
        .collect::<Result<HashMap<_, _>>>()?;
        let instances = match changed_since {
            Some(since) => rows(
                tx_query(
                    &tx,
                    concat!(
                        "SELECT ",
                        instance_cols!(),
                        " FROM instances WHERE rev >= $1 ORDER BY rev, seq"
                    ),
                    &[&since],
                )
                .await?,
                instance_row,
            )?,
            None => rows(
                tx_query(
                    &tx,
                    concat!(
                        "SELECT ",
                        instance_cols!(),
                        " FROM instances
                         WHERE status IN ('provisioning', 'ready', 'failed', 'claimed')
                         ORDER BY seq"
                    ),
                    &[],
                )
                .await?,
                instance_row,
            )?,
        };
        let goldens = rows(
            tx_query(
                &tx,
                concat!(
                    "SELECT ",
                    golden_cols!(),
                    " FROM goldens WHERE status = 'ready' ORDER BY created_at"
                ),
                &[],
            )
            .await?,
            golden_row,
        )?;
        tx.commit().await.map_err(map_err)?;
        Ok(PoolSnapshot {
            configs,
            projects,
            env_versions,
            states,
            rev,
            instances,
            goldens,
        })
    }

    async fn place_pool_boots(
        &self,
        rows: &[InstanceRow],
        target: u32,
        capacity: u32,
    ) -> Result<usize> {
        let Some(first) = rows.first() else {
            return Ok(0);
        };
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        // Placements for one pool, from any node, queue on its row: the count below then sees
        // every boot placed before. A placement finding the row taken gives up rather than wait:
        // the node holding it is filling this pool right now, and waiting would only stall this
        // node's pass on a placement that will most likely find the pool full.
        let pool = tx_query(
            &tx,
            "SELECT 1 FROM warm_pools WHERE project_id = $1 FOR UPDATE SKIP LOCKED",
            &[&first.project_id],
        )
        .await?;
        if pool.is_empty() {
            return Ok(0);
        }
        // A node's capacity spans projects, so placements of different pools on one node queue on
        // the node's row too (waiting this time: they are for other pools). Always after the pool's
        // row, and only one of each, so two placements never wait on each other in a cycle.
        if let Some(node) = &first.node {
            tx_query(
                &tx,
                "SELECT 1 FROM nodes WHERE name = $1 FOR UPDATE",
                &[node],
            )
            .await?;
        }
        // Read committed: each statement sees what placements committed before the locks were ours.
        let counted: i64 = get(
            &one(tx_query(
                &tx,
                "SELECT COUNT(*) FROM instances
                 WHERE project_id = $1 AND kind = 'pool'
                   AND config_hash IS NOT DISTINCT FROM $2
                   AND (status = 'provisioning' OR (status = 'ready' AND stale_at IS NULL))",
                &[&first.project_id, &first.config_hash],
            )
            .await?)?,
            0,
        )?;
        // Two statements rather than `IS NOT DISTINCT FROM`, which no index serves.
        let live = match &first.node {
            Some(node) => {
                tx_query(
                    &tx,
                    "SELECT COUNT(*) FROM instances
                     WHERE node = $1 AND status IN ('provisioning', 'ready', 'claimed')",
                    &[node],
                )
                .await?
            }
            None => {
                tx_query(
                    &tx,
                    "SELECT COUNT(*) FROM instances
                     WHERE node IS NULL AND status IN ('provisioning', 'ready', 'claimed')",
                    &[],
                )
                .await?
            }
        };
        let live: i64 = get(&one(live)?, 0)?;
        let room = |limit: u32, used: i64| {
            usize::try_from((i64::from(limit) - used).max(0)).unwrap_or(usize::MAX)
        };
        let k = rows
            .len()
            .min(room(target, counted))
            .min(room(capacity, live));
        for i in &rows[..k] {
            insert_instance_in(&tx, i).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(k)
    }

    async fn setting(&self, name: &str, value: &str) -> Result<String> {
        // One statement: the row as it is after this insert-or-keep.
        let row = self
            .query_one(
                "WITH ins AS (
                    INSERT INTO settings (name, value) VALUES ($1, $2)
                    ON CONFLICT (name) DO NOTHING RETURNING value)
                 SELECT value FROM ins
                 UNION ALL SELECT value FROM settings WHERE name = $1
                 LIMIT 1",
                &[&name, &value],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn register_node(&self, n: &NodeRow, now: i64) -> Result<bool> {
        // One statement: the check that the name is free (or already ours) and the write cannot
        // be told apart by another node registering at the same moment.
        Ok(self
            .exec(
                "INSERT INTO nodes (name, node_id, url, capacity, lease_until, started_at,
                    renewed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (name) DO UPDATE SET node_id = EXCLUDED.node_id,
                    url = EXCLUDED.url, capacity = EXCLUDED.capacity,
                    lease_until = EXCLUDED.lease_until, started_at = EXCLUDED.started_at,
                    renewed_at = EXCLUDED.renewed_at
                 WHERE nodes.node_id = EXCLUDED.node_id OR nodes.lease_until < $8",
                &[
                    &n.name,
                    &n.node_id,
                    &n.url,
                    &i64::from(n.capacity),
                    &n.lease_until,
                    &n.started_at,
                    &n.renewed_at,
                    &now,
                ],
            )
            .await?
            == 1)
    }

    async fn renew_node(
        &self,
        name: &str,
        node_id: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE nodes SET lease_until = $3, renewed_at = $4
                 WHERE name = $1 AND node_id = $2",
                &[&name, &node_id, &lease_until, &now],
            )
            .await?
            == 1)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let rs = self
            .query(
                concat!("SELECT ", node_cols!(), " FROM nodes ORDER BY name"),
                &[],
            )
            .await?;
        rows(rs, node_row)
    }

    async fn fail_instances_of_lost_node(
        &self,
        node: &str,
        now: i64,
        reason: &str,
    ) -> Result<Vec<String>> {
        // The lease is checked by the statement itself: a node renewing meanwhile either renewed
        // first (nothing is failed) or after (its instances were already lost).
        let rs = self
            .query(
                "UPDATE instances SET status = 'failed', failure_reason = $3,
                    finished_at = COALESCE(finished_at, $2)
                 WHERE node = $1 AND status IN ('provisioning', 'ready', 'claimed')
                   AND EXISTS (SELECT 1 FROM nodes WHERE name = $1 AND lease_until < $2)
                 RETURNING id",
                &[&node, &now, &reason],
            )
            .await?;
        rows(rs, |r| get(r, 0))
    }

    async fn get_pool_state(&self, project_id: &str) -> Result<PoolState> {
        Ok(self
            .query_opt(
                concat!(
                    "SELECT ",
                    pool_state_cols!(),
                    " FROM pool_state WHERE project_id = $1"
                ),
                &[&project_id],
            )
            .await?
            .map(|r| pool_state_row(&r, 0))
            .transpose()?
            .unwrap_or_default())
    }

    async fn update_pool_state(
        &self,
        project_id: &str,
        now: i64,
        change: PoolStateChange,
    ) -> Result<PoolState> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        // The row must exist to be locked: concurrent changes (on any node) then queue on it and
        // each reads what the previous one wrote.
        tx_query(
            &tx,
            "INSERT INTO pool_state (project_id, consecutive_failures, identical_failures,
                updated_at)
             VALUES ($1, 0, 0, $2)
             ON CONFLICT (project_id) DO NOTHING",
            &[&project_id, &now],
        )
        .await?;
        // No row only if the project was deleted meanwhile (its pool state went with it).
        let mut st = pool_state_row(
            &one(tx_query(
                &tx,
                concat!(
                    "SELECT ",
                    pool_state_cols!(),
                    " FROM pool_state WHERE project_id = $1 FOR UPDATE"
                ),
                &[&project_id],
            )
            .await?)?,
            0,
        )?;
        change(&mut st);
        tx_query(
            &tx,
            "UPDATE pool_state SET consecutive_failures = $2, identical_failures = $3,
                last_failed_step = $4, last_failed_config = $5, last_error = $6,
                degraded_since = $7, next_attempt_at = $8, updated_at = $9
             WHERE project_id = $1",
            &[
                &project_id,
                &i64::from(st.consecutive_failures),
                &i64::from(st.identical_failures),
                &st.last_failed_step,
                &st.last_failed_config,
                &st.last_error,
                &st.degraded_since,
                &st.next_attempt_at,
                &now,
            ],
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(st)
    }

    async fn insert_step(&self, s: &StepRow) -> Result<()> {
        let meta = s.metadata.as_ref().map(json).transpose()?;
        self.exec(
            "INSERT INTO steps (instance_id, seq, name, status, output, error, duration_ms,
                finished_at, metadata_json)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &s.instance_id,
                &i64::from(s.seq),
                &s.name,
                &if s.success { "success" } else { "error" },
                &s.output,
                &s.error,
                &(s.duration_ms as i64),
                &s.finished_at,
                &meta,
            ],
        )
        .await
        .map(drop)
    }

    async fn list_steps(&self, instance_id: &str) -> Result<Vec<StepRow>> {
        let rs = self
            .query(
                "SELECT instance_id, seq, name, status, output, error, duration_ms, finished_at,
                    metadata_json
                 FROM steps WHERE instance_id = $1 ORDER BY seq",
                &[&instance_id],
            )
            .await?;
        rows(rs, step_row)
    }

    async fn insert_golden(&self, g: &GoldenRow) -> Result<()> {
        let commits = json(&g.commits)?;
        self.exec(
            "INSERT INTO goldens (id, project_id, config_hash, backend, commits_json, status,
                created_at, node)
             VALUES ($1, $2, $3, $4, $5, 'ready', $6, $7)",
            &[
                &g.id,
                &g.project_id,
                &g.config_hash,
                &g.backend,
                &commits,
                &g.created_at,
                &g.node,
            ],
        )
        .await
        .map(drop)
    }

    async fn ready_goldens(&self) -> Result<Vec<GoldenRow>> {
        let rs = self
            .query(
                concat!(
                    "SELECT ",
                    golden_cols!(),
                    " FROM goldens WHERE status = 'ready' ORDER BY created_at"
                ),
                &[],
            )
            .await?;
        rows(rs, golden_row)
    }

    async fn get_golden(&self, id: &str) -> Result<Option<GoldenRow>> {
        self.query_opt(
            concat!("SELECT ", golden_cols!(), " FROM goldens WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(golden_row)
        .transpose()
    }

    async fn mark_golden_deleted(&self, id: &str, now: i64) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE goldens SET status = 'deleted', deleted_at = $2
                 WHERE id = $1 AND status = 'ready'",
                &[&id, &now],
            )
            .await?
            == 1)
    }

    async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        self.exec(
            "INSERT INTO tokens (id, project_id, hash, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &t.id,
                &t.project_id,
                &t.hash,
                &t.created_at,
                &t.last_used_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        self.query_opt(
            "SELECT id, project_id, hash, created_at, last_used_at FROM tokens WHERE hash = $1",
            &[&hash],
        )
        .await?
        .as_ref()
        .map(token_row)
        .transpose()
    }

    async fn list_tokens(&self, project_id: &str) -> Result<Vec<TokenRow>> {
        let rs = self
            .query(
                "SELECT id, project_id, hash, created_at, last_used_at FROM tokens
                 WHERE project_id = $1 ORDER BY created_at, id",
                &[&project_id],
            )
            .await?;
        rows(rs, token_row)
    }

    async fn delete_token(&self, project_id: &str, id: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM tokens WHERE project_id = $1 AND id = $2",
                &[&project_id, &id],
            )
            .await?
            == 1)
    }

    async fn touch_token(&self, id: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE tokens SET last_used_at = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await
        .map(drop)
    }
}
