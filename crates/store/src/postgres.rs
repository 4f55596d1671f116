//! The PostgreSQL engine, for many nodes sharing one database: the same [`Store`](crate::Store)
//! semantics as the SQLite engine, but every guarantee has to hold across processes, so each state
//! change is one conditional statement (or one transaction holding row locks), claims skip rows
//! another node has locked, and migrations run under an advisory lock. Nodes hold leases on rows of
//! their own; placing pool boots locks the pool's row (skipping a pool another node is filling)
//! and then the node's row (its capacity spans pools), so neither a pool's target nor a node's
//! capacity is overshot by nodes placing at once. Statements are prepared once per pooled
//! connection and reused; they are mostly the shared core's (`engine`), and this module writes its
//! own only the operations its row locks and its transaction-id revision make different.

use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSqlOwned, IsNull, ToSql, Type};
use tokio_postgres::{IsolationLevel, NoTls};

use crate::engine::*;
use crate::rows::*;
use crate::{
    migrations, InstanceRow, PoolSnapshot, PoolState, PoolStateChange, Result, StepRow, StoreError,
};

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

/// Each value is bound as the type the statement gives its parameter — BIGINT, BOOLEAN or TEXT
/// — and NULL as any.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql_checked(ty, out)
    }

    /// Only a value knows which types it fits: `to_sql_checked` asks the one at hand.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => v.to_sql_checked(ty, out),
            Value::Bool(v) => v.to_sql_checked(ty, out),
            Value::Text(v) => v.to_sql_checked(ty, out),
        }
    }
}

fn refs(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Named<'_, tokio_postgres::Row> {
    fn get<T: FromSqlOwned>(&self, col: &str) -> Result<T> {
        let names = self.row.columns();
        let i = self.columns.index(col, names.len(), |i| names[i].name())?;
        self.row
            .try_get(i)
            .map_err(|e| unreadable(col, describe(&e)))
    }
}

impl Row for Named<'_, tokio_postgres::Row> {
    fn opt_str(&self, col: &str) -> Result<Option<String>> {
        self.get(col)
    }

    fn opt_i64(&self, col: &str) -> Result<Option<i64>> {
        self.get(col)
    }

    fn bool(&self, col: &str) -> Result<bool> {
        self.get(col)
    }
}

/// Runs a statement that changes rows, on a connection or in a transaction: how many it changed.
/// Statements are prepared once per pooled connection and reused.
async fn run(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64> {
    let st = c.prepare_cached(sql).await.map_err(map_err)?;
    c.execute(&st, params).await.map_err(map_err)
}

/// The rows a statement returns, decoded.
async fn fetch<T>(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    decode: Decode<T>,
) -> Result<Vec<T>> {
    let st = c.prepare_cached(sql).await.map_err(map_err)?;
    let rows = c.query(&st, params).await.map_err(map_err)?;
    let columns = Columns::default();
    rows.iter()
        .map(|row| {
            decode(&Named {
                row,
                columns: &columns,
            })
        })
        .collect()
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
        for (version, sql) in migrations::POSTGRES {
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
}

#[async_trait]
impl Engine for PgStore {
    const NAME: &'static str = "postgres";

    async fn exec(&self, sql: &'static Sql, values: Vec<Value>) -> Result<u64> {
        run(&self.conn().await?, sql.postgres, &refs(&values)).await
    }

    async fn exec_relaxed(&self, sql: &'static Sql, values: Vec<Value>) -> Result<u64> {
        // An asynchronous commit: the server answers before its log reaches the disk, and a
        // later synchronous commit flushes the log up to itself, this one included.
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
            .await
            .map_err(map_err)?;
        let n = run(&tx, sql.postgres, &refs(&values)).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }

    async fn select<T: Send + 'static>(
        &self,
        sql: &'static Sql,
        values: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>> {
        fetch(&self.conn().await?, sql.postgres, &refs(&values), decode).await
    }

    async fn exec_returning<T: Send + 'static>(
        &self,
        sql: &'static Sql,
        values: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>> {
        Engine::select(self, sql, values, decode).await
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
        for (name, value) in vars {
            run(
                &tx,
                UPSERT_ENV_VAR.postgres,
                &[&project_id, name, value, &now],
            )
            .await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn fail_interrupted(&self, s: &StepRow, reason: &str, now: i64) -> Result<bool> {
        let meta = s.metadata.as_ref().map(json).transpose()?;
        // One statement: the step is recorded exactly when the instance was still provisioning.
        let sql = "WITH failed AS (
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
             SELECT count(*) AS n FROM failed";
        let params: Params = &[
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
        ];
        Ok(one(fetch(&self.conn().await?, sql, params, count).await?)? == 1)
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
        let rev = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS rev";
        let rev = one(fetch(&tx, rev, &[], |r| r.i64("rev")).await?)?;
        let changed = select!(instance, "FROM instances WHERE rev >= $1 ORDER BY rev, seq");
        let snapshot = PoolSnapshot {
            configs: fetch(&tx, snapshot::CONFIGS.postgres, &[], pool_row).await?,
            projects: fetch(&tx, snapshot::PROJECTS.postgres, &[], project_row).await?,
            env_versions: fetch(
                &tx,
                snapshot::ENV_VERSIONS.postgres,
                &[],
                snapshot::env_version,
            )
            .await?,
            states: fetch(&tx, snapshot::STATES.postgres, &[], snapshot::state)
                .await?
                .into_iter()
                .collect(),
            autoscale: fetch(&tx, snapshot::AUTOSCALE.postgres, &[], autoscale_row)
                .await?
                .into_iter()
                .map(|a| (a.project_id.clone(), a))
                .collect(),
            rev,
            instances: match changed_since {
                Some(since) => fetch(&tx, changed, &[&since], instance_row).await?,
                None => fetch(&tx, snapshot::LIVE_INSTANCES.postgres, &[], instance_row).await?,
            },
            goldens: fetch(&tx, snapshot::READY_GOLDENS.postgres, &[], golden_row).await?,
        };
        tx.commit().await.map_err(map_err)?;
        Ok(snapshot)
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
        let pool = "SELECT 1 FROM warm_pools WHERE project_id = $1 FOR UPDATE SKIP LOCKED";
        if fetch(&tx, pool, &[&first.project_id], |_| Ok(()))
            .await?
            .is_empty()
        {
            return Ok(0);
        }
        // A node's capacity spans projects, so placements of different pools on one node queue on
        // the node's row too (waiting this time: they are for other pools). Always after the pool's
        // row, and only one of each, so two placements never wait on each other in a cycle.
        if let Some(node) = &first.node {
            let sql = "SELECT 1 FROM nodes WHERE name = $1 FOR UPDATE";
            fetch(&tx, sql, &[node], |_| Ok(())).await?;
        }
        // Read committed: each statement sees what placements committed before the locks were ours.
        let counted = [&first.project_id as &(dyn ToSql + Sync), &first.config_hash];
        let counted = one(fetch(&tx, COUNT_TOWARD_TARGET.postgres, &counted, count).await?)?;
        let (live_sql, live) = count_live_on(&first.node);
        let live = one(fetch(&tx, live_sql.postgres, &refs(&live), count).await?)?;
        let k = boots_that_fit(rows.len(), target, counted, capacity, live);
        for i in &rows[..k] {
            run(&tx, INSERT_INSTANCE.postgres, &refs(&instance_values(i)?)).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(k)
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
        run(&tx, POOL_STATE_DEFAULT.postgres, &[&project_id, &now]).await?;
        // No row only if the project was deleted meanwhile (its pool state went with it).
        let locked = fetch(
            &tx,
            POOL_STATE_LOCKED.postgres,
            &[&project_id],
            pool_state_row,
        )
        .await;
        let mut st = one(locked?)?;
        change(&mut st);
        let values = pool_state_values(project_id, &st, now);
        run(&tx, POOL_STATE_UPDATE.postgres, &refs(&values)).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(st)
    }
}
