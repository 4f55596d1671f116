//! The SQLite engine: one file in the data dir, WAL, `synchronous=FULL` so an acknowledged change
//! survives a power cut. All writes go to one writer thread (SQLite allows one writer at a time
//! anyway, and queueing in-process avoids the busy-retry sleeps that wreck tail latency), which
//! commits whatever has queued up *together*: each write runs in a savepoint of its own (it
//! succeeds or fails alone), and the batch shares one transaction and one fsync — group commit.
//! Reads use a few connections of their own on tokio's blocking pool. The statements are mostly
//! the shared core's (`engine`); this module runs them, and writes its own only the operations
//! that one writer and SQLite's counter revision make different.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::{FromSql, ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use crate::engine::*;
use crate::rows::*;
use crate::{
    migrations, InstanceRow, PoolSnapshot, PoolState, PoolStateChange, Result, StepRow, StoreError,
};

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

/// Integers, text and NULL as SQLite keeps them; a boolean is an integer (0 or 1).
impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Bool(v) => ValueRef::Integer((*v).into()),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
        }))
    }
}

impl Named<'_, rusqlite::Row<'_>> {
    fn get<T: FromSql>(&self, col: &str) -> Result<T> {
        let st = self.row.as_ref();
        let name = |i| st.column_name(i).unwrap_or_default();
        let i = self.columns.index(col, st.column_count(), name)?;
        self.row.get(i).map_err(|e| unreadable(col, e))
    }
}

impl Row for Named<'_, rusqlite::Row<'_>> {
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

/// Runs a statement that changes rows: how many it changed. Statements are prepared once per
/// connection and then reused: parsing and planning the SQL again on every call was a visible
/// share of a write's CPU time on the claim path.
fn run(c: &Connection, sql: &str, values: &[Value]) -> Result<usize> {
    c.prepare_cached(sql)
        .and_then(|mut st| st.execute(params_from_iter(values)))
        .map_err(map_err)
}

/// The rows a statement returns, decoded.
fn fetch<T>(c: &Connection, sql: &str, values: &[Value], decode: Decode<T>) -> Result<Vec<T>> {
    let mut st = c.prepare_cached(sql).map_err(map_err)?;
    let columns = Columns::default();
    let mut rows = st.query(params_from_iter(values)).map_err(map_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        out.push(decode(&Named {
            row,
            columns: &columns,
        })?);
    }
    Ok(out)
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
    for (version, sql) in migrations::SQLITE {
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
                rusqlite::params![version, warmpool_types::time::now_ms()],
            )?;
            tracing::info!(version, "applied store migration");
        }
        tx.commit()?;
    }
    Ok(())
}

/// A write waiting for the writer thread.
trait WriteJob: Send {
    /// Whether its commit may skip the flush (see [`Engine::exec_relaxed`]).
    fn relaxed(&self) -> bool;
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
    relaxed: bool,
}

impl<F, R> WriteJob for Pending<F, R>
where
    F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn relaxed(&self) -> bool {
        self.relaxed
    }

    fn run(self: Box<Self>, c: &Connection) -> (bool, Reply) {
        let Pending { f, tx, .. } = *self;
        let res = f(c);
        let ok = res.is_ok();
        let reply: Reply = Box::new(move |commit: Option<StoreError>| {
            let out = match (res, commit) {
                (Err(e), _) => Err(e),
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
/// A batch of relaxed writes only is committed without the flush (`synchronous=NORMAL`: in WAL
/// mode a commit then reaches the operating system, not the disk); the next batch with a durable
/// write flushes the log, and with it every relaxed commit before it.
fn writer_loop(mut conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut flushing = true;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let flush = batch.iter().any(|j| !j.relaxed());
        if flush != flushing {
            // 2 is FULL, 1 NORMAL.
            let mode = if flush { 2 } else { 1 };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => flushing = flush,
                Err(e) => tracing::error!("cannot set synchronous={mode}: {e}"),
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
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still usable.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
    }

    /// Runs `f` as one atomic write; it is durable when this returns `Ok`.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.submit(f, false).await
    }

    /// Runs `f` as one atomic write, durable when this returns `Ok` or — `relaxed` — with the
    /// next durable write (see [`Engine::exec_relaxed`]).
    async fn submit<R, F>(&self, f: F, relaxed: bool) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R>>();
        let job: Job = Box::new(Pending { f, tx, relaxed });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Internal("the store writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("the store writer dropped a write".into()))?
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        Self::on(self.readers[i].clone(), f).await
    }
}

#[async_trait]
impl Engine for SqliteStore {
    const NAME: &'static str = "sqlite";

    async fn exec(&self, sql: &'static Sql, values: Vec<Value>) -> Result<u64> {
        let n = self.write(move |c| run(c, sql.sqlite, &values)).await?;
        Ok(n as u64)
    }

    async fn exec_relaxed(&self, sql: &'static Sql, values: Vec<Value>) -> Result<u64> {
        let n = self.submit(move |c| run(c, sql.sqlite, &values), true);
        Ok(n.await? as u64)
    }

    async fn select<T: Send + 'static>(
        &self,
        sql: &'static Sql,
        values: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>> {
        self.read(move |c| fetch(c, sql.sqlite, &values, decode))
            .await
    }

    async fn exec_returning<T: Send + 'static>(
        &self,
        sql: &'static Sql,
        values: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>> {
        self.write(move |c| fetch(c, sql.sqlite, &values, decode))
            .await
    }

    async fn upsert_env_vars(
        &self,
        project_id: &str,
        vars: &[(String, String)],
        now: i64,
    ) -> Result<()> {
        // One write: all of them or none.
        let each: Vec<_> = vars
            .iter()
            .map(|(name, value)| values![project_id, name, value, now])
            .collect();
        self.write(move |c| {
            for values in &each {
                run(c, UPSERT_ENV_VAR.sqlite, values)?;
            }
            Ok(())
        })
        .await
    }

    async fn fail_interrupted(&self, s: &StepRow, reason: &str, now: i64) -> Result<bool> {
        // Two statements in one write: the step is recorded exactly when the instance was still
        // provisioning.
        let fail = values![&s.instance_id, &s.name, reason, now];
        let step = step_values(s)?;
        self.write(move |c| {
            if run(c, FAIL_PROVISIONING.sqlite, &fail)? != 1 {
                return Ok(false);
            }
            let keep_recorded = sql!(concat!(
                insert_step!(),
                " ON CONFLICT (instance_id, seq) DO NOTHING"
            ));
            run(c, keep_recorded.sqlite, &step)?;
            Ok(true)
        })
        .await
    }

    async fn pool_snapshot(&self, changed_since: Option<i64>) -> Result<PoolSnapshot> {
        Self::on(self.snapshot_reader.clone(), move |c| {
            // One read transaction: every read below sees the same database.
            let tx = c.transaction().map_err(map_err)?;
            let rev = "SELECT n FROM instance_rev WHERE id = 1";
            let snapshot = PoolSnapshot {
                configs: fetch(&tx, snapshot::CONFIGS.sqlite, &[], pool_row)?,
                projects: fetch(&tx, snapshot::PROJECTS.sqlite, &[], project_row)?,
                env_versions: fetch(
                    &tx,
                    snapshot::ENV_VERSIONS.sqlite,
                    &[],
                    snapshot::env_version,
                )?,
                states: fetch(&tx, snapshot::STATES.sqlite, &[], snapshot::state)?
                    .into_iter()
                    .collect(),
                autoscale: fetch(&tx, snapshot::AUTOSCALE.sqlite, &[], autoscale_row)?
                    .into_iter()
                    .map(|a| (a.project_id.clone(), a))
                    .collect(),
                // An exact counter: every change to an instance row moves it on by one.
                rev: one(fetch(&tx, rev, &[], |r| r.i64("n"))?)?,
                instances: match changed_since {
                    Some(since) => {
                        let sql = sql!(select!(
                            instance,
                            "FROM instances WHERE rev > $1 ORDER BY rev"
                        ));
                        fetch(&tx, sql.sqlite, &[since.into()], instance_row)?
                    }
                    None => fetch(&tx, snapshot::LIVE_INSTANCES.sqlite, &[], instance_row)?,
                },
                goldens: fetch(&tx, snapshot::READY_GOLDENS.sqlite, &[], golden_row)?,
            };
            tx.finish().map_err(map_err)?;
            Ok(snapshot)
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
        let project = values![&first.project_id];
        let counted = values![&first.project_id, &first.config_hash];
        let (live_sql, live) = count_live_on(&first.node);
        let inserts = rows
            .iter()
            .map(instance_values)
            .collect::<Result<Vec<_>>>()?;
        // One writer: the counts and the inserts cannot interleave with another write.
        self.write(move |c| {
            // Like PostgreSQL, which locks the pool's row: no pool, no boots.
            let pool = "SELECT 1 FROM warm_pools WHERE project_id = ?1";
            if fetch(c, pool, &project, |_| Ok(()))?.is_empty() {
                return Ok(0);
            }
            let counted = one(fetch(c, COUNT_TOWARD_TARGET.sqlite, &counted, count)?)?;
            let live = one(fetch(c, live_sql.sqlite, &live, count)?)?;
            let k = boots_that_fit(inserts.len(), target, counted, capacity, live);
            for values in &inserts[..k] {
                run(c, INSERT_INSTANCE.sqlite, values)?;
            }
            Ok(k)
        })
        .await
    }

    async fn update_pool_state(
        &self,
        project_id: &str,
        now: i64,
        change: PoolStateChange,
    ) -> Result<PoolState> {
        let project_id = project_id.to_string();
        let (default, key) = (values![&project_id, now], values![&project_id]);
        // One write: changes run one at a time, each reading what the previous one wrote.
        self.write(move |c| {
            run(c, POOL_STATE_DEFAULT.sqlite, &default)?;
            let mut st = one(fetch(c, POOL_STATE_LOCKED.sqlite, &key, pool_state_row)?)?;
            change(&mut st);
            run(
                c,
                POOL_STATE_UPDATE.sqlite,
                &pool_state_values(&project_id, &st, now),
            )?;
            Ok(st)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relaxed write is committed (readers see it) like any other, between durable ones, and
    /// the writer goes back to flushing for the durable write after it.
    #[tokio::test]
    async fn relaxed_writes_commit_between_durable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let set = sql!("INSERT INTO settings (name, value) VALUES ($1, $2)");
        let get = sql!("SELECT value FROM settings WHERE name = $1");
        store.exec(set, values!["a", "1"]).await.unwrap();
        store.exec_relaxed(set, values!["b", "2"]).await.unwrap();
        store.exec(set, values!["c", "3"]).await.unwrap();
        for (name, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
            let read = store.select(get, values![name], |r| r.str("value"));
            assert_eq!(read.await.unwrap(), [value]);
        }
        let mode = store
            .write(|c| {
                c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                    .map_err(map_err)
            })
            .await
            .unwrap();
        assert_eq!(mode, 2, "a durable write flushes");
        let relaxed = store
            .submit(
                |c| {
                    c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                        .map_err(map_err)
                },
                true,
            )
            .await
            .unwrap();
        assert_eq!(relaxed, 1, "a batch of relaxed writes does not");
    }

    /// Why statements are written with `$N` and given to SQLite as `?N` (see `sql!`).
    #[test]
    fn numbered_placeholders_bind_by_number() {
        let c = Connection::open_in_memory().unwrap();
        let sql = sql!("SELECT $2 AS two, $1 AS one");
        assert_eq!(sql.sqlite, "SELECT ?2 AS two, ?1 AS one");
        let read = |text: &str| {
            c.query_row(text, [1, 2], |r| Ok((r.get("one")?, r.get("two")?)))
                .unwrap()
        };
        // SQLite takes `$2` for a parameter named "$2", numbered 1 as it comes first: the values
        // come back swapped.
        assert_eq!(read(sql.postgres), (2, 1));
        assert_eq!(read(sql.sqlite), (1, 2));
    }
}
