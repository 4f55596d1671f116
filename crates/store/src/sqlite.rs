//! The SQLite engine: one file in the data dir, WAL, `synchronous=FULL` so an acknowledged change
//! survives a power cut. All writes go to one writer thread (SQLite allows one writer at a time
//! anyway, and queueing in-process avoids the busy-retry sleeps that wreck tail latency), which
//! commits whatever has queued up *together*: each write runs in a savepoint of its own (it
//! succeeds or fails alone), and the batch shares one transaction and one fsync — group commit.
//! Reads use a few connections of their own on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use warmpool_types::api::PoolStatus;
use warmpool_types::state::InstanceStatus;

use crate::{
    EnvVarRow, GoldenRow, InstanceRow, NodeRow, PoolConfigRow, PoolCounts, PoolSnapshot, PoolState,
    PoolStateChange, ProjectRow, RepoCommit, Result, StepRow, Store, StoreError, TokenRow,
};
use std::collections::BTreeMap;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_pool.sql")),
    (3, include_str!("../migrations/sqlite/0003_goldens.sql")),
    (4, include_str!("../migrations/sqlite/0004_tokens.sql")),
    (
        5,
        include_str!("../migrations/sqlite/0005_instance_rev.sql"),
    ),
    (6, include_str!("../migrations/sqlite/0006_nodes.sql")),
    (
        7,
        include_str!("../migrations/sqlite/0007_repo_sources.sql"),
    ),
    (8, include_str!("../migrations/sqlite/0008_resources.sql")),
];
const READERS: usize = 4;

fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::SystemIoFailure
            | C::CannotOpen
            | C::DiskFull
            | C::OutOfMemory => StoreError::Unavailable(e.to_string()),
            C::ConstraintViolation => StoreError::Duplicate(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        },
        _ => StoreError::Internal(e.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn from_json<T: serde::de::DeserializeOwned>(idx: usize, s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_enum<T: std::str::FromStr<Err = String>>(idx: usize, s: &str) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

/// Statements are prepared once per connection and then reused: parsing and planning the SQL
/// again on every call was a visible share of a write's CPU time on the claim path.
trait Cached {
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// `provisioning → failed`; whether it was provisioning.
fn fail_provisioning(
    c: &Connection,
    id: &str,
    failed_step: Option<&str>,
    reason: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    Ok(c.exec(
        "UPDATE instances SET status = 'failed', failed_step = ?2, failure_reason = ?3,
            finished_at = ?4
         WHERE id = ?1 AND status = 'provisioning'",
        params![id, failed_step, reason, now],
    )? == 1)
}

/// Records a step; one already recorded at its position is kept when `keep_existing`.
fn record_step(c: &Connection, s: &StepRow, keep_existing: bool) -> rusqlite::Result<()> {
    let meta = s
        .metadata
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(json_err)?;
    let sql = if keep_existing {
        "INSERT INTO steps (instance_id, seq, name, status, output, error, duration_ms,
            finished_at, metadata_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (instance_id, seq) DO NOTHING"
    } else {
        "INSERT INTO steps (instance_id, seq, name, status, output, error, duration_ms,
            finished_at, metadata_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    };
    c.exec(
        sql,
        params![
            s.instance_id,
            s.seq,
            s.name,
            if s.success { "success" } else { "error" },
            s.output,
            s.error,
            s.duration_ms as i64,
            s.finished_at,
            meta
        ],
    )?;
    Ok(())
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Room for every statement the store uses, so none is evicted and parsed again.
    conn.set_prepared_statement_cache_capacity(128);
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done: bool = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, warmpool_types::time::now_ms()],
            )?;
            tracing::info!(version, "applied store migration");
        }
        tx.commit()?;
    }
    Ok(())
}

/// A write waiting for the writer thread.
trait WriteJob: Send {
    /// Runs inside the job's own savepoint; answers whether it succeeded, and what to tell its
    /// caller once the batch's commit is known.
    fn run(self: Box<Self>, c: &Connection) -> (bool, Reply);
    /// Tells the caller that the write could not even be tried.
    fn fail(self: Box<Self>, e: StoreError);
}

type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

struct Pending<F, R> {
    f: F,
    tx: tokio::sync::oneshot::Sender<Result<R>>,
}

impl<F, R> WriteJob for Pending<F, R>
where
    F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn run(self: Box<Self>, c: &Connection) -> (bool, Reply) {
        let Pending { f, tx } = *self;
        let res = f(c);
        let ok = res.is_ok();
        let reply: Reply = Box::new(move |commit: Option<StoreError>| {
            let out = match (res, commit) {
                (Err(e), _) => Err(map_err(e)),
                (Ok(_), Some(e)) => Err(e),
                (Ok(v), None) => Ok(v),
            };
            let _ = tx.send(out);
        });
        (ok, reply)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.tx.send(Err(e));
    }
}

type Job = Box<dyn WriteJob>;

/// The most writes committed together.
const MAX_BATCH: usize = 256;

pub struct SqliteStore {
    path: PathBuf,
    jobs: std::sync::mpsc::Sender<Job>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// The reconciler's own connection, so that a pass neither waits behind the API's reads nor
    /// holds one of their connections.
    snapshot_reader: Arc<Mutex<Connection>>,
}

/// The writer thread: takes every write that is waiting, runs each in a savepoint, commits once.
fn writer_loop(mut conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let err = map_err(e);
                for job in batch {
                    job.fail(err.clone());
                }
                continue;
            }
        };
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            let mut sp = match tx.savepoint() {
                Ok(sp) => sp,
                Err(e) => {
                    job.fail(map_err(e));
                    continue;
                }
            };
            let (ok, reply) = job.run(&sp);
            // A failed write takes back only its own changes.
            let settled = if ok {
                sp.commit()
            } else {
                sp.rollback().and_then(|()| sp.commit())
            };
            if let Err(e) = settled {
                tracing::error!("a store savepoint could not be settled: {e}");
            }
            replies.push(reply);
        }
        let err = tx.commit().err().map(map_err);
        for reply in replies {
            reply(err.clone());
        }
    }
}

/// The floor of any durable write: `n` single-row write transactions on a fresh database at
/// `path`, with the same settings as the store (WAL, `synchronous=FULL`). For benchmarks.
pub fn durable_commit_times(path: &Path, n: usize) -> Result<Vec<std::time::Duration>> {
    let conn = open_conn(path).map_err(map_err)?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, v INTEGER)")
        .map_err(map_err)?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; INSERT OR REPLACE INTO floor (id, v) VALUES ({}, {i}); COMMIT;",
            i % 64
        ))
        .map_err(map_err)?;
        times.push(t.elapsed());
    }
    Ok(times)
}

/// Makes the database readable by its owner only (it holds sealed secrets, token hashes and every
/// project's configuration): created 0600, and an older file, its write-ahead log and shared
/// memory file, set to 0600. SQLite gives the files it creates next to the database the
/// database's own mode.
fn owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| {
        StoreError::Internal(format!("cannot restrict {} to its owner: {e}", p.display()))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(path, e)),
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(p.into());
    }
    for f in files {
        match std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&f, e)),
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        owner_only(path)?;
        let mut writer = open_conn(path).map_err(map_err)?;
        migrate(&mut writer).map_err(map_err)?;
        let readers = (0..READERS)
            .map(|_| open_conn(path).map(|c| Arc::new(Mutex::new(c))))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map_err)?;
        let snapshot_reader = Arc::new(Mutex::new(open_conn(path).map_err(map_err)?));
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Internal(format!("cannot start the store writer: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            jobs,
            readers,
            next_reader: AtomicUsize::new(0),
            snapshot_reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn on<R, F>(conn: Arc<Mutex<Connection>>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still usable.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(map_err)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
    }

    /// Runs `f` as one atomic write; it is durable when this returns `Ok`.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R>>();
        let job: Job = Box::new(Pending { f, tx });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Internal("the store writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("the store writer dropped a write".into()))?
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        Self::on(self.readers[i].clone(), f).await
    }
}

const PROJECT_COLS: &str =
    "seq, id, name, description, task_code, repos_json, devbox_json, generation, created_at, updated_at, \
     resources_json";

fn project_row(r: &Row) -> rusqlite::Result<ProjectRow> {
    Ok(ProjectRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        task_code: r.get(4)?,
        repos: from_json(5, &r.get::<_, String>(5)?)?,
        devbox: from_json(6, &r.get::<_, String>(6)?)?,
        generation: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        resources: from_json(10, &r.get::<_, String>(10)?)?,
    })
}

const POOL_COLS: &str = "project_id, enabled, target_size, max_age_minutes, branch, \
     setup_commands_json, generation, created_at, updated_at";

fn pool_row(r: &Row) -> rusqlite::Result<PoolConfigRow> {
    let cmds: Option<String> = r.get(5)?;
    Ok(PoolConfigRow {
        project_id: r.get(0)?,
        enabled: r.get(1)?,
        target_size: r.get(2)?,
        max_age_minutes: r.get(3)?,
        branch: r.get(4)?,
        setup_commands: cmds.map(|c| from_json(5, &c)).transpose()?,
        generation: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

const INSTANCE_COLS: &str = "seq, id, vm_id, project_id, kind, status, total_steps, failed_step, \
     failure_reason, backend, agent_url, agent_token, config_hash, task_id, created_at, \
     provisioned_at, finished_at, claimed_at, destroyed_at, stale_at, commits_json, golden_id, node";

fn instance_row(r: &Row) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        vm_id: r.get(2)?,
        project_id: r.get(3)?,
        kind: parse_enum(4, &r.get::<_, String>(4)?)?,
        status: parse_enum(5, &r.get::<_, String>(5)?)?,
        total_steps: r.get(6)?,
        failed_step: r.get(7)?,
        failure_reason: r.get(8)?,
        backend: r.get(9)?,
        agent_url: r.get(10)?,
        agent_token: r.get(11)?,
        config_hash: r.get(12)?,
        task_id: r.get(13)?,
        created_at: r.get(14)?,
        provisioned_at: r.get(15)?,
        finished_at: r.get(16)?,
        claimed_at: r.get(17)?,
        destroyed_at: r.get(18)?,
        stale_at: r.get(19)?,
        commits: r
            .get::<_, Option<String>>(20)?
            .map(|c| from_json(20, &c))
            .transpose()?
            .unwrap_or_default(),
        golden_id: r.get(21)?,
        node: r.get(22)?,
    })
}

const GOLDEN_COLS: &str =
    "id, project_id, config_hash, backend, commits_json, status, created_at, node";

fn golden_row(r: &Row) -> rusqlite::Result<GoldenRow> {
    Ok(GoldenRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        config_hash: r.get(2)?,
        backend: r.get(3)?,
        commits: from_json(4, &r.get::<_, String>(4)?)?,
        ready: r.get::<_, String>(5)? == "ready",
        created_at: r.get(6)?,
        node: r.get(7)?,
    })
}

const NODE_COLS: &str = "name, node_id, url, capacity, lease_until, started_at, renewed_at";

fn node_row(r: &Row) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        name: r.get(0)?,
        node_id: r.get(1)?,
        url: r.get(2)?,
        capacity: r.get(3)?,
        lease_until: r.get(4)?,
        started_at: r.get(5)?,
        renewed_at: r.get(6)?,
    })
}

/// Inserts one instance row (also inside a larger write).
fn insert_instance_row(c: &Connection, i: &InstanceRow) -> rusqlite::Result<()> {
    c.exec(
        "INSERT INTO instances (id, vm_id, project_id, kind, status, total_steps,
            failed_step, failure_reason, backend, agent_url, agent_token, config_hash,
            task_id, created_at, provisioned_at, finished_at, claimed_at, destroyed_at,
            stale_at, commits_json, golden_id, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20, ?21, ?22)",
        params![
            i.id,
            i.vm_id,
            i.project_id,
            i.kind.as_str(),
            i.status.as_str(),
            i.total_steps,
            i.failed_step,
            i.failure_reason,
            i.backend,
            i.agent_url,
            i.agent_token,
            i.config_hash,
            i.task_id,
            i.created_at,
            i.provisioned_at,
            i.finished_at,
            i.claimed_at,
            i.destroyed_at,
            i.stale_at,
            serde_json::to_string(&i.commits).map_err(json_err)?,
            i.golden_id,
            i.node,
        ],
    )?;
    Ok(())
}

fn step_row(r: &Row) -> rusqlite::Result<StepRow> {
    let meta: Option<String> = r.get(8)?;
    Ok(StepRow {
        instance_id: r.get(0)?,
        seq: r.get(1)?,
        name: r.get(2)?,
        success: r.get::<_, String>(3)? == "success",
        output: r.get(4)?,
        error: r.get(5)?,
        duration_ms: r.get::<_, i64>(6)?.max(0) as u64,
        finished_at: r.get(7)?,
        metadata: meta.map(|m| from_json(8, &m)).transpose()?,
    })
}

const POOL_STATE_COLS: &str = "consecutive_failures, identical_failures, last_failed_step, \
     last_failed_config, last_error, degraded_since, next_attempt_at";

fn pool_state_row(r: &Row, first: usize) -> rusqlite::Result<PoolState> {
    Ok(PoolState {
        consecutive_failures: r.get(first)?,
        identical_failures: r.get(first + 1)?,
        last_failed_step: r.get(first + 2)?,
        last_failed_config: r.get(first + 3)?,
        last_error: r.get(first + 4)?,
        degraded_since: r.get(first + 5)?,
        next_attempt_at: r.get(first + 6)?,
    })
}

fn read_pool_state(c: &Connection, project_id: &str) -> rusqlite::Result<PoolState> {
    Ok(c.prepare_cached(&format!(
        "SELECT {POOL_STATE_COLS} FROM pool_state WHERE project_id = ?1"
    ))?
    .query_row([project_id], |r| pool_state_row(r, 0))
    .optional()?
    .unwrap_or_default())
}

/// `?2, ?3, ...` placeholders for an `IN (...)` list starting at parameter `first`.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn insert_project(&self, p: &ProjectRow) -> Result<()> {
        let p = p.clone();
        self.write(move |c| {
            c.exec(
                "INSERT INTO projects (id, name, description, task_code, repos_json, devbox_json,
                    generation, created_at, updated_at, resources_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    p.id,
                    p.name,
                    p.description,
                    p.task_code,
                    serde_json::to_string(&p.repos).map_err(json_err)?,
                    serde_json::to_string(&p.devbox).map_err(json_err)?,
                    p.generation,
                    p.created_at,
                    p.updated_at,
                    serde_json::to_string(&p.resources).map_err(json_err)?
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_project(&self, id: &str) -> Result<Option<ProjectRow>> {
        let id = id.to_string();
        self.read(move |c| {
            c.row(
                &format!("SELECT {PROJECT_COLS} FROM projects WHERE id = ?1"),
                [id],
                project_row,
            )
            .optional()
        })
        .await
    }

    async fn list_projects(
        &self,
        after_seq: Option<i64>,
        limit: u32,
        only: Option<&str>,
    ) -> Result<Vec<ProjectRow>> {
        let only = only.map(str::to_string);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PROJECT_COLS} FROM projects
                 WHERE seq > ?1 AND (?2 IS NULL OR id = ?2)
                 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![after_seq.unwrap_or(0), only, limit], project_row)?;
            rows.collect()
        })
        .await
    }

    async fn update_project(&self, p: &ProjectRow) -> Result<bool> {
        let p = p.clone();
        self.write(move |c| {
            let n = c.exec(
                "UPDATE projects SET name = ?1, description = ?2, task_code = ?3, repos_json = ?4,
                    devbox_json = ?5, updated_at = ?6, generation = generation + 1,
                    resources_json = ?9
                 WHERE id = ?7 AND generation = ?8",
                params![
                    p.name,
                    p.description,
                    p.task_code,
                    serde_json::to_string(&p.repos).map_err(json_err)?,
                    serde_json::to_string(&p.devbox).map_err(json_err)?,
                    p.updated_at,
                    p.id,
                    p.generation,
                    serde_json::to_string(&p.resources).map_err(json_err)?
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_project(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| Ok(c.exec("DELETE FROM projects WHERE id = ?1", [id])? == 1))
            .await
    }

    async fn get_default_branch(&self, url: &str) -> Result<Option<String>> {
        let url = url.to_string();
        self.read(move |c| {
            Ok(c.row(
                "SELECT default_branch FROM repo_remotes WHERE url = ?1",
                [url],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
        })
        .await
    }

    async fn set_default_branch(&self, url: &str, branch: &str, now: i64) -> Result<()> {
        let (url, branch) = (url.to_string(), branch.to_string());
        self.write(move |c| {
            c.exec(
                "INSERT INTO repo_remotes (url, default_branch, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (url) DO UPDATE SET default_branch = ?2, updated_at = ?3",
                params![url, branch, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn upsert_env_vars(
        &self,
        project_id: &str,
        vars: &[(String, String)],
        now: i64,
    ) -> Result<()> {
        let project_id = project_id.to_string();
        let vars = vars.to_vec();
        self.write(move |c| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO env_vars (project_id, name, value, version, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (project_id, name) DO UPDATE
                    SET value = ?3, version = version + 1, updated_at = ?4",
            )?;
            for (name, value) in &vars {
                stmt.execute(params![project_id, name, value, now])?;
            }
            Ok(())
        })
        .await
    }

    async fn list_env_vars(&self, project_id: &str) -> Result<Vec<EnvVarRow>> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, value, version, updated_at FROM env_vars
                 WHERE project_id = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([project_id], |r| {
                Ok(EnvVarRow {
                    name: r.get(0)?,
                    value: r.get(1)?,
                    version: r.get(2)?,
                    updated_at: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_env_var(&self, project_id: &str, name: &str) -> Result<bool> {
        let (project_id, name) = (project_id.to_string(), name.to_string());
        self.write(move |c| {
            Ok(c.exec(
                "DELETE FROM env_vars WHERE project_id = ?1 AND name = ?2",
                params![project_id, name],
            )? == 1)
        })
        .await
    }

    async fn get_pool_config(&self, project_id: &str) -> Result<Option<PoolConfigRow>> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            c.row(
                &format!("SELECT {POOL_COLS} FROM warm_pools WHERE project_id = ?1"),
                [project_id],
                pool_row,
            )
            .optional()
        })
        .await
    }

    async fn put_pool_config(
        &self,
        cfg: &PoolConfigRow,
        expected_generation: Option<i64>,
    ) -> Result<bool> {
        let cfg = cfg.clone();
        self.write(move |c| {
            let cmds = cfg
                .setup_commands
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(json_err)?;
            let n = match expected_generation {
                None => c.exec(
                    "INSERT INTO warm_pools (project_id, enabled, target_size, max_age_minutes,
                        branch, setup_commands_json, generation, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8)
                     ON CONFLICT (project_id) DO NOTHING",
                    params![
                        cfg.project_id,
                        cfg.enabled,
                        cfg.target_size,
                        cfg.max_age_minutes,
                        cfg.branch,
                        cmds,
                        cfg.created_at,
                        cfg.updated_at
                    ],
                )?,
                Some(generation) => c.exec(
                    "UPDATE warm_pools SET enabled = ?2, target_size = ?3, max_age_minutes = ?4,
                        branch = ?5, setup_commands_json = ?6, updated_at = ?7,
                        generation = generation + 1
                     WHERE project_id = ?1 AND generation = ?8",
                    params![
                        cfg.project_id,
                        cfg.enabled,
                        cfg.target_size,
                        cfg.max_age_minutes,
                        cfg.branch,
                        cmds,
                        cfg.updated_at,
                        generation
                    ],
                )?,
            };
            Ok(n == 1)
        })
        .await
    }

    async fn insert_instance(&self, i: &InstanceRow) -> Result<()> {
        let i = i.clone();
        self.write(move |c| insert_instance_row(c, &i)).await
    }

    async fn get_instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        let id = id.to_string();
        self.read(move |c| {
            c.row(
                &format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = ?1"),
                [id],
                instance_row,
            )
            .optional()
        })
        .await
    }

    async fn list_instances(
        &self,
        project_id: &str,
        status: Option<InstanceStatus>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {INSTANCE_COLS} FROM instances
                 WHERE project_id = ?1 AND status != 'destroyed' AND kind != 'golden'
                   AND (?2 IS NULL OR status = ?2)
                 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![project_id, status.map(|s| s.as_str()), limit],
                instance_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn instances_in(&self, statuses: &[InstanceStatus]) -> Result<Vec<InstanceRow>> {
        let statuses: Vec<&'static str> = statuses.iter().map(|s| s.as_str()).collect();
        self.read(move |c| {
            let sql = format!(
                "SELECT {INSTANCE_COLS} FROM instances WHERE status IN ({}) ORDER BY seq",
                placeholders(1, statuses.len())
            );
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(statuses), instance_row)?;
            rows.collect()
        })
        .await
    }

    async fn set_instance_agent(
        &self,
        id: &str,
        agent_url: &str,
        agent_token: &str,
    ) -> Result<bool> {
        let (id, url, token) = (
            id.to_string(),
            agent_url.to_string(),
            agent_token.to_string(),
        );
        self.write(move |c| {
            Ok(c.exec(
                "UPDATE instances SET agent_url = ?2, agent_token = ?3
                 WHERE id = ?1 AND status = 'provisioning'",
                params![id, url, token],
            )? == 1)
        })
        .await
    }

    async fn mark_ready(
        &self,
        id: &str,
        now: i64,
        commits: &BTreeMap<String, RepoCommit>,
        claimed: bool,
    ) -> Result<bool> {
        let id = id.to_string();
        let commits =
            serde_json::to_string(commits).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.write(move |c| {
            Ok(c.exec(
                "UPDATE instances SET status = ?3, provisioned_at = ?2, finished_at = ?2,
                    claimed_at = CASE WHEN ?3 = 'claimed' THEN ?2 END, commits_json = ?4
                 WHERE id = ?1 AND status = 'provisioning'",
                params![id, now, if claimed { "claimed" } else { "ready" }, commits],
            )? == 1)
        })
        .await
    }

    async fn claim_ready(
        &self,
        project_id: &str,
        task_id: Option<&str>,
        now: i64,
    ) -> Result<Option<InstanceRow>> {
        let (project_id, task_id) = (project_id.to_string(), task_id.map(str::to_string));
        self.write(move |c| {
            c.row(
                &format!(
                    "UPDATE instances SET status = 'claimed', claimed_at = ?2, task_id = ?3
                     WHERE id = (SELECT id FROM instances
                                 WHERE project_id = ?1 AND kind = 'pool' AND status = 'ready'
                                 ORDER BY stale_at IS NOT NULL, provisioned_at DESC LIMIT 1)
                       AND status = 'ready'
                     RETURNING {INSTANCE_COLS}"
                ),
                params![project_id, now, task_id],
                instance_row,
            )
            .optional()
        })
        .await
    }

    async fn set_stale(&self, id: &str, now: i64) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(c.exec(
                "UPDATE instances SET stale_at = ?2
                 WHERE id = ?1 AND status = 'ready' AND stale_at IS NULL",
                params![id, now],
            )? == 1)
        })
        .await
    }

    async fn mark_failed(
        &self,
        id: &str,
        failed_step: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let (id, step, reason) = (
            id.to_string(),
            failed_step.map(str::to_string),
            reason.to_string(),
        );
        self.write(move |c| fail_provisioning(c, &id, step.as_deref(), &reason, now))
            .await
    }

    async fn fail_interrupted(&self, step: &StepRow, reason: &str, now: i64) -> Result<bool> {
        let (s, reason) = (step.clone(), reason.to_string());
        self.write(move |c| {
            if !fail_provisioning(c, &s.instance_id, Some(&s.name), &reason, now)? {
                return Ok(false);
            }
            record_step(c, &s, true)?;
            Ok(true)
        })
        .await
    }

    async fn mark_destroyed(&self, id: &str, from: &[InstanceStatus], now: i64) -> Result<bool> {
        let id = id.to_string();
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        self.write(move |c| {
            let sql = format!(
                "UPDATE instances SET status = 'destroyed', destroyed_at = ?1
                 WHERE id = ?2 AND status IN ({})",
                placeholders(3, from.len())
            );
            let mut values: Vec<rusqlite::types::Value> = vec![now.into(), id.into()];
            values.extend(from.into_iter().map(|s| s.to_string().into()));
            Ok(c.exec(&sql, rusqlite::params_from_iter(values))? == 1)
        })
        .await
    }

    async fn pool_status(&self, project_id: &str) -> Result<PoolStatus> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT status, COUNT(*) FROM instances
                 WHERE project_id = ?1
                   AND ((kind = 'pool' AND status IN ('ready', 'provisioning', 'failed'))
                     OR (kind = 'golden' AND status IN ('provisioning', 'failed')))
                 GROUP BY status",
            )?;
            let mut st = PoolStatus::default();
            let rows = stmt.query_map([project_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (status, n) = row?;
                let n = n.max(0) as u64;
                match status.as_str() {
                    "ready" => st.ready = n,
                    "provisioning" => st.provisioning = n,
                    _ => st.failed = n,
                }
            }
            Ok(st)
        })
        .await
    }

    async fn pool_times(&self, project_id: &str) -> Result<(Option<i64>, Option<i64>)> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            c.row(
                "SELECT MAX(provisioned_at), MAX(claimed_at) FROM instances
                 WHERE project_id = ?1 AND kind != 'test'",
                [project_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    async fn pool_counts(&self, project_id: &str) -> Result<PoolCounts> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            c.row(
                "SELECT
                    COUNT(*) FILTER (WHERE kind = 'pool' AND status = 'ready'),
                    COUNT(*) FILTER (WHERE kind IN ('pool', 'golden') AND status = 'provisioning'),
                    COUNT(*) FILTER (WHERE kind IN ('pool', 'golden') AND status = 'failed'),
                    COUNT(*) FILTER (WHERE status = 'claimed'),
                    COUNT(*) FILTER (WHERE kind = 'pool' AND status = 'ready' AND stale_at IS NOT NULL),
                    COUNT(*) FILTER (WHERE kind = 'pool' AND claimed_at IS NOT NULL),
                    COUNT(*) FILTER (WHERE kind = 'cold' AND claimed_at IS NOT NULL)
                 FROM instances WHERE project_id = ?1",
                [project_id],
                |r| {
                    let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                    Ok(PoolCounts {
                        ready: n(0)?,
                        provisioning: n(1)?,
                        failed: n(2)?,
                        claimed: n(3)?,
                        stale: n(4)?,
                        warm_claims: n(5)?,
                        cold_claims: n(6)?,
                    })
                },
            )
        })
        .await
    }

    async fn provisioning_durations(&self, project_id: &str, limit: u32) -> Result<Vec<i64>> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT provisioned_at - created_at FROM instances
                 WHERE project_id = ?1 AND provisioned_at IS NOT NULL
                 ORDER BY provisioned_at DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![project_id, limit], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn pool_snapshot(&self, changed_since: Option<i64>) -> Result<PoolSnapshot> {
        Self::on(self.snapshot_reader.clone(), move |c| {
            let tx = c.transaction()?;
            let configs = tx
                .prepare_cached(&format!("SELECT {POOL_COLS} FROM warm_pools"))?
                .query_map([], pool_row)?
                .collect::<rusqlite::Result<_>>()?;
            let projects = tx
                .prepare_cached(&format!("SELECT {PROJECT_COLS} FROM projects ORDER BY seq"))?
                .query_map([], project_row)?
                .collect::<rusqlite::Result<_>>()?;
            let env_versions = tx
                .prepare_cached(
                    "SELECT project_id, name, version FROM env_vars ORDER BY project_id, name",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let states = tx
                .prepare_cached(&format!(
                    "SELECT project_id, {POOL_STATE_COLS} FROM pool_state"
                ))?
                .query_map([], |r| Ok((r.get(0)?, pool_state_row(r, 1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let rev: i64 = tx
                .prepare_cached("SELECT n FROM instance_rev WHERE id = 1")?
                .query_row([], |r| r.get(0))?;
            let instances = match changed_since {
                Some(since) => tx
                    .prepare_cached(&format!(
                        "SELECT {INSTANCE_COLS} FROM instances WHERE rev > ?1 ORDER BY rev"
                    ))?
                    .query_map([since], instance_row)?
                    .collect::<rusqlite::Result<_>>()?,
                None => tx
                    .prepare_cached(&format!(
                        "SELECT {INSTANCE_COLS} FROM instances
                         WHERE status IN ('provisioning', 'ready', 'failed', 'claimed')
                         ORDER BY seq"
                    ))?
                    .query_map([], instance_row)?
                    .collect::<rusqlite::Result<_>>()?,
            };
            let goldens = tx
                .prepare_cached(&format!(
                    "SELECT {GOLDEN_COLS} FROM goldens WHERE status = 'ready' ORDER BY created_at"
                ))?
                .query_map([], golden_row)?
                .collect::<rusqlite::Result<_>>()?;
            tx.finish()?;
            Ok(PoolSnapshot {
                configs,
                projects,
                env_versions,
                states,
                rev,
                instances,
                goldens,
            })
        })
        .await
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
        let (project, hash, node) = (
            first.project_id.clone(),
            first.config_hash.clone(),
            first.node.clone(),
        );
        let rows = rows.to_vec();
        // One writer: the counts and the inserts cannot interleave with another write.
        self.write(move |c| {
            // Like PostgreSQL, which locks the pool's row: no pool, no boots.
            let pool: Option<i64> = c
                .row(
                    "SELECT 1 FROM warm_pools WHERE project_id = ?1",
                    params![project],
                    |r| r.get(0),
                )
                .optional()?;
            if pool.is_none() {
                return Ok(0);
            }
            let counted: u32 = c.row(
                "SELECT count(*) FROM instances
                 WHERE project_id = ?1 AND kind = 'pool' AND config_hash IS ?2
                   AND (status = 'provisioning' OR (status = 'ready' AND stale_at IS NULL))",
                params![project, hash],
                |r| r.get(0),
            )?;
            let on_node: u32 = c.row(
                "SELECT count(*) FROM instances
                 WHERE node IS ?1 AND status IN ('provisioning', 'ready', 'claimed')",
                params![node],
                |r| r.get(0),
            )?;
            let k = (rows.len() as u32)
                .min(target.saturating_sub(counted))
                .min(capacity.saturating_sub(on_node)) as usize;
            for r in &rows[..k] {
                insert_instance_row(c, r)?;
            }
            Ok(k)
        })
        .await
    }

    async fn setting(&self, name: &str, value: &str) -> Result<String> {
        let (name, value) = (name.to_string(), value.to_string());
        self.write(move |c| {
            c.exec(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )?;
            c.row(
                "SELECT value FROM settings WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn register_node(&self, n: &NodeRow, now: i64) -> Result<bool> {
        let n = n.clone();
        self.write(move |c| {
            Ok(c.exec(
                "INSERT INTO nodes (name, node_id, url, capacity, lease_until, started_at,
                    renewed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id,
                    url = excluded.url, capacity = excluded.capacity,
                    lease_until = excluded.lease_until, started_at = excluded.started_at,
                    renewed_at = excluded.renewed_at
                 WHERE nodes.node_id = excluded.node_id OR nodes.lease_until < ?8",
                params![
                    n.name,
                    n.node_id,
                    n.url,
                    n.capacity,
                    n.lease_until,
                    n.started_at,
                    n.renewed_at,
                    now
                ],
            )? == 1)
        })
        .await
    }

    async fn renew_node(
        &self,
        name: &str,
        node_id: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool> {
        let (name, node_id) = (name.to_string(), node_id.to_string());
        self.write(move |c| {
            Ok(c.exec(
                "UPDATE nodes SET lease_until = ?3, renewed_at = ?4
                 WHERE name = ?1 AND node_id = ?2",
                params![name, node_id, lease_until, now],
            )? == 1)
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {NODE_COLS} FROM nodes ORDER BY name"))?;
            let rows = stmt.query_map([], node_row)?;
            rows.collect()
        })
        .await
    }

    async fn fail_instances_of_lost_node(
        &self,
        node: &str,
        now: i64,
        reason: &str,
    ) -> Result<Vec<String>> {
        let (node, reason) = (node.to_string(), reason.to_string());
        self.write(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE instances SET status = 'failed', failure_reason = ?3,
                    finished_at = COALESCE(finished_at, ?2)
                 WHERE node = ?1 AND status IN ('provisioning', 'ready', 'claimed')
                   AND EXISTS (SELECT 1 FROM nodes WHERE name = ?1 AND lease_until < ?2)
                 RETURNING id",
            )?;
            let ids = stmt.query_map(params![node, now, reason], |r| r.get(0))?;
            ids.collect()
        })
        .await
    }

    async fn get_pool_state(&self, project_id: &str) -> Result<PoolState> {
        let project_id = project_id.to_string();
        self.read(move |c| read_pool_state(c, &project_id)).await
    }

    async fn update_pool_state(
        &self,
        project_id: &str,
        now: i64,
        change: PoolStateChange,
    ) -> Result<PoolState> {
        let project_id = project_id.to_string();
        self.write(move |c| {
            let mut st = read_pool_state(c, &project_id)?;
            change(&mut st);
            c.exec(
                "INSERT INTO pool_state (project_id, consecutive_failures, identical_failures,
                    last_failed_step, last_failed_config, last_error, degraded_since,
                    next_attempt_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (project_id) DO UPDATE SET
                    consecutive_failures = ?2, identical_failures = ?3, last_failed_step = ?4,
                    last_failed_config = ?5, last_error = ?6, degraded_since = ?7,
                    next_attempt_at = ?8, updated_at = ?9",
                params![
                    project_id,
                    st.consecutive_failures,
                    st.identical_failures,
                    st.last_failed_step,
                    st.last_failed_config,
                    st.last_error,
                    st.degraded_since,
                    st.next_attempt_at,
                    now
                ],
            )?;
            Ok(st)
        })
        .await
    }

    async fn insert_step(&self, s: &StepRow) -> Result<()> {
        let s = s.clone();
        self.write(move |c| record_step(c, &s, false)).await
    }

    async fn list_steps(&self, instance_id: &str) -> Result<Vec<StepRow>> {
        let instance_id = instance_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT instance_id, seq, name, status, output, error, duration_ms, finished_at,
                    metadata_json
                 FROM steps WHERE instance_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([instance_id], step_row)?;
            rows.collect()
        })
        .await
    }

    async fn insert_golden(&self, g: &GoldenRow) -> Result<()> {
        let g = g.clone();
        self.write(move |c| {
            c.exec(
                "INSERT INTO goldens (id, project_id, config_hash, backend, commits_json, status,
                    created_at, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'ready', ?6, ?7)",
                params![
                    g.id,
                    g.project_id,
                    g.config_hash,
                    g.backend,
                    serde_json::to_string(&g.commits).map_err(json_err)?,
                    g.created_at,
                    g.node,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn ready_goldens(&self) -> Result<Vec<GoldenRow>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {GOLDEN_COLS} FROM goldens WHERE status = 'ready' ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([], golden_row)?;
            rows.collect()
        })
        .await
    }

    async fn get_golden(&self, id: &str) -> Result<Option<GoldenRow>> {
        let id = id.to_string();
        self.read(move |c| {
            c.row(
                &format!("SELECT {GOLDEN_COLS} FROM goldens WHERE id = ?1"),
                [id],
                golden_row,
            )
            .optional()
        })
        .await
    }

    async fn mark_golden_deleted(&self, id: &str, now: i64) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(c.exec(
                "UPDATE goldens SET status = 'deleted', deleted_at = ?2
                 WHERE id = ?1 AND status = 'ready'",
                params![id, now],
            )? == 1)
        })
        .await
    }

    async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        let t = t.clone();
        self.write(move |c| {
            c.exec(
                "INSERT INTO tokens (id, project_id, hash, created_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.project_id, t.hash, t.created_at, t.last_used_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let hash = hash.to_string();
        self.read(move |c| {
            c.row(
                "SELECT id, project_id, hash, created_at, last_used_at FROM tokens WHERE hash = ?1",
                [hash],
                token_row,
            )
            .optional()
        })
        .await
    }

    async fn list_tokens(&self, project_id: &str) -> Result<Vec<TokenRow>> {
        let project_id = project_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, project_id, hash, created_at, last_used_at FROM tokens
                 WHERE project_id = ?1 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([project_id], token_row)?;
            rows.collect()
        })
        .await
    }

    async fn delete_token(&self, project_id: &str, id: &str) -> Result<bool> {
        let (project_id, id) = (project_id.to_string(), id.to_string());
        self.write(move |c| {
            Ok(c.exec(
                "DELETE FROM tokens WHERE project_id = ?1 AND id = ?2",
                params![project_id, id],
            )? == 1)
        })
        .await
    }

    async fn touch_token(&self, id: &str, now: i64) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            c.exec(
                "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }
}

fn token_row(r: &Row) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        hash: r.get(2)?,
        created_at: r.get(3)?,
        last_used_at: r.get(4)?,
    })
}
