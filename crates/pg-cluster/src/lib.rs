//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary directory, a
//! server on a free port of 127.0.0.1 that can be stopped and started again on the same port and
//! data (to test what a node does while its database is down), removed when dropped. It needs the
//! PostgreSQL 15 server binaries installed (Debian's `postgresql` package), not a running server.
//! Durability settings are left at PostgreSQL's defaults (`fsync=on`), so that timings are real.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where Debian puts PostgreSQL 15's server binaries.
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The database [`PgCluster::new`] creates, which [`PgCluster::url`] points at.
pub const DATABASE: &str = "warmpool";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(String);

type Result<T> = std::result::Result<T, ClusterError>;

pub struct PgCluster {
    /// Removes everything when dropped; `None` once torn down.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// The uid and gid the server runs as: `initdb` and `pg_ctl` refuse to run as root.
    run_as: Option<(u32, u32)>,
}

impl PgCluster {
    /// Creates a cluster, starts it and creates the database [`DATABASE`].
    pub fn new() -> Result<Self> {
        let bindir = find_bindir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_ids()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("warmpool-pg-")
            .tempdir()
            .map_err(|e| ClusterError(format!("cannot create a directory for PostgreSQL: {e}")))?;
        let root = dir.path().to_path_buf();
        let cluster = Self {
            dir: Some(dir),
            root,
            bindir,
            port: free_port()?,
            run_as,
        };
        cluster.own(&cluster.root)?;
        let sockets = cluster.root.join("sockets");
        std::fs::create_dir(&sockets)
            .map_err(|e| ClusterError(format!("cannot create {}: {e}", sockets.display())))?;
        cluster.own(&sockets)?;
        cluster.server_tool(
            "initdb",
            &[
                OsStr::new("--pgdata"),
                cluster.data().as_os_str(),
                OsStr::new("--username=postgres"),
                // Only this process can reach it: loopback, and a socket in a private directory.
                OsStr::new("--auth=trust"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--no-locale"),
                OsStr::new("--no-instructions"),
            ],
        )?;
        let settings = format!(
            "\n# Set by warmpool's PgCluster.\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nmax_connections = 200\n",
            cluster.port,
            sockets.display()
        );
        let conf = cluster.data().join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| std::io::Write::write_all(&mut f, settings.as_bytes()))
            .map_err(|e| ClusterError(format!("cannot configure {}: {e}", conf.display())))?;
        cluster.start()?;
        cluster.create_database(DATABASE)?;
        Ok(cluster)
    }

    /// One cluster for the whole process, started by the first call; it is stopped and removed
    /// when the process exits. Its users must not stop it: each makes its own database
    /// ([`PgCluster::create_database`]).
    pub fn shared() -> Result<&'static PgCluster> {
        static SHARED: OnceLock<std::result::Result<PgCluster, ClusterError>> = OnceLock::new();
        extern "C" fn teardown_shared() {
            if let Some(Ok(c)) = SHARED.get() {
                c.teardown();
            }
        }
        SHARED
            .get_or_init(|| {
                let cluster = PgCluster::new()?;
                // A static is never dropped: without this the server would outlive the process.
                // SAFETY: registers a function that takes no arguments and does not unwind (it
                // ignores every error).
                unsafe { libc::atexit(teardown_shared) };
                Ok(cluster)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Where the PostgreSQL programs are, or why there are none.
    pub fn bin_dir() -> Result<PathBuf> {
        find_bindir()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the database [`DATABASE`].
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of the database `db` of this cluster.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates the database `name` (lowercase letters, digits and `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ClusterError(format!("invalid database name {name:?}")));
        }
        let port = self.port.to_string();
        // A client, so it runs as whoever we are.
        let mut cmd = Command::new(self.bindir.join("createdb"));
        cmd.args(["--host=127.0.0.1", "--username=postgres", "--port"])
            .arg(&port)
            .arg(name);
        run(cmd, "createdb")?;
        Ok(self.url_for(name))
    }

    /// Starts the server (again, on the same port and data) and waits until it accepts
    /// connections.
    pub fn start(&self) -> Result<()> {
        let log = self.root.join("server.log");
        self.server_tool(
            "pg_ctl",
            &[
                OsStr::new("start"),
                OsStr::new("--pgdata"),
                self.data().as_os_str(),
                OsStr::new("--log"),
                log.as_os_str(),
                OsStr::new("--wait"),
                OsStr::new("--timeout=60"),
                OsStr::new("--silent"),
            ],
        )
        .map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            ClusterError(format!(
                "{e}\n--- the end of the server log ---\n{}",
                tail.join("\n")
            ))
        })
    }

    /// Stops the server the clean way (`fast`: sessions are ended, then a checkpoint).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server as a crash would (`immediate`: no checkpoint; the next start recovers
    /// from the log).
    pub fn stop_immediately(&self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        self.server_tool(
            "pg_ctl",
            &[
                OsStr::new("stop"),
                OsStr::new("--pgdata"),
                self.data().as_os_str(),
                OsStr::new("--mode"),
                OsStr::new(mode),
                OsStr::new("--wait"),
                OsStr::new("--timeout=60"),
                OsStr::new("--silent"),
            ],
        )
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Gives `path` to the user the server runs as.
    fn own(&self, path: &Path) -> Result<()> {
        match self.run_as {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                ClusterError(format!("cannot give {} to postgres: {e}", path.display()))
            }),
            None => Ok(()),
        }
    }

    /// Runs one of the server's tools (argv, no shell), as the server's user.
    fn server_tool(&self, tool: &str, args: &[&OsStr]) -> Result<()> {
        let mut cmd = Command::new(self.bindir.join(tool));
        cmd.args(args).current_dir(&self.root);
        if let Some((uid, gid)) = self.run_as {
            // What `setpriv`/`runuser` would do: the child drops root's groups, then becomes
            // postgres, before it runs the tool.
            cmd.uid(uid).gid(gid);
        }
        run(cmd, tool)
    }

    /// Stops the server at once and removes its files; errors are ignored (it may not run).
    fn teardown(&self) {
        let _ = self.stop_immediately();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // The directory goes only after the server stopped (the tools run from it).
        if let Some(dir) = self.dir.take() {
            self.teardown();
            drop(dir);
        }
    }
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )))
}

/// The directory of `initdb` and `pg_ctl`: `WARMPOOL_PG_BINDIR`, Debian's place for version 15,
/// or what `pg_config` says.
fn find_bindir() -> Result<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file();
    if let Some(d) = std::env::var_os("WARMPOOL_PG_BINDIR") {
        let d = PathBuf::from(d);
        return if has_initdb(&d) {
            Ok(d)
        } else {
            Err(ClusterError(format!(
                "WARMPOOL_PG_BINDIR is {}, which has no initdb",
                d.display()
            )))
        };
    }
    let default = PathBuf::from(DEFAULT_BINDIR);
    if has_initdb(&default) {
        return Ok(default);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&d) {
            return Ok(d);
        }
    }
    Err(ClusterError(format!(
        "PostgreSQL is not installed: no initdb in {DEFAULT_BINDIR}, nor where pg_config says \
         (on Debian: apt-get install postgresql)"
    )))
}

/// The uid and gid of the user `postgres`, which Debian's package creates.
fn postgres_ids() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| ClusterError(format!("cannot read /etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            ClusterError(
                "running as root, and there is no user `postgres` to run PostgreSQL as \
                 (initdb refuses root)"
                    .into(),
            )
        })
}

/// A port nobody listens on now. Another process could take it before the server does; then
/// the start fails with a clear message rather than connecting somewhere else.
fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError(format!("cannot find a free port: {e}")))
}
