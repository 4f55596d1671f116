//! `warmpool serve`: configuration (flags ⟷ `WARMPOOL_*` variables), first-start setup of the data
//! dir and admin token, wiring of store, backend and app, crash recovery, background cleanup, and
//! the HTTP listener.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use warmpool_backend::image::{self, GuestImage};
use warmpool_backend::qemu::{Accel, QemuBackend, QemuOptions};
use warmpool_backend::sandbox::{SandboxBackend, SandboxOptions};
use warmpool_backend::sim::{SimBackend, SimOptions};
use warmpool_backend::Backend;
use warmpool_store::{PgStore, SqliteStore, Store};

use crate::app::clock::{Clock, FastClock, SystemClock};
use crate::app::{App, AppConfig, AppParts};
use crate::git::mirror::Mirrors;
use crate::git::serve::GitServer;
use crate::git::source::LocalPolicy;
use crate::sealed::Sealer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Linux-namespace sandboxes over the guest image (needs root; not a tenant boundary).
    Sandbox,
    /// Real virtual machines under QEMU (KVM when it works, TCG otherwise).
    Qemu,
    /// In-process fake VMs, for tests and benchmarks of the control plane.
    Sim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// Probe KVM with a short boot, fall back to TCG.
    Auto,
    /// KVM without probing it first (boots fail where it does not work).
    Kvm,
    /// QEMU's software emulation: slower, but needs no KVM.
    Tcg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "WARMPOOL_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the database, admin token, mirrors and VM state live.
    #[arg(long, env = "WARMPOOL_DATA_DIR", default_value = "./warmpool-data")]
    pub data_dir: PathBuf,
    /// Where VMs run.
    #[arg(long, env = "WARMPOOL_BACKEND", value_enum, default_value = "sandbox")]
    pub backend: BackendKind,
    /// The store: a SQLite file path (or sqlite://PATH), or a PostgreSQL URL
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DB). Default: <data-dir>/warmpool.db.
    #[arg(long, env = "WARMPOOL_STORE")]
    pub store: Option<String>,
    /// Where guest images are cached. Default: $XDG_CACHE_HOME/warmpool or ~/.cache/warmpool.
    #[arg(long, env = "WARMPOOL_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Repositories on this server's disk (paths, file:// URLs) are taken only from under this
    /// directory; give it several times for several. Without it, the admin token may use any
    /// path (project tokens never may, and the data and cache dirs are never a source).
    #[arg(
        long = "allow-local-repos",
        value_name = "DIR",
        env = "WARMPOOL_ALLOW_LOCAL_REPOS",
        value_delimiter = ':'
    )]
    pub allow_local_repos: Vec<PathBuf>,
    /// Use this directory as the guest root filesystem instead of building one.
    #[arg(long, env = "WARMPOOL_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// Debian mirror the guest image is built from.
    #[arg(long, env = "WARMPOOL_DEBIAN_MIRROR", default_value = image::DEFAULT_MIRROR)]
    pub debian_mirror: String,
    /// The `warmpool-agent` binary to run in VMs. Default: next to this executable.
    #[arg(long, env = "WARMPOOL_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// Use this admin token instead of generating one into <data-dir>/admin-token.
    #[arg(long, env = "WARMPOOL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long finished test instances live, in seconds.
    #[arg(long, env = "WARMPOOL_TEST_INSTANCE_TTL_SECS", default_value_t = 900)]
    pub test_instance_ttl_secs: u64,
    /// Timeout of each setup command, in seconds.
    #[arg(long, env = "WARMPOOL_COMMAND_TIMEOUT_SECS", default_value_t = 1800)]
    pub command_timeout_secs: u64,
    /// How long `ensure_server` waits for a VM's agent, in seconds.
    #[arg(long, env = "WARMPOOL_SERVER_WAIT_SECS", default_value_t = 120)]
    pub server_wait_secs: u64,
    /// Whether warm pools may be used on this server (`allowed` in the API).
    #[arg(long, env = "WARMPOOL_WARM_POOL_ALLOWED", default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_pool_allowed: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "WARMPOOL_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How often the reconciler runs when nothing nudges it, in milliseconds.
    #[arg(long, env = "WARMPOOL_RECONCILE_INTERVAL_MS", default_value_t = 2000)]
    pub reconcile_interval_ms: u64,
    /// How often each repo's branch head is checked for new commits, at most, in seconds.
    #[arg(long, env = "WARMPOOL_HEAD_CHECK_INTERVAL_SECS", default_value_t = 60)]
    pub head_check_interval_secs: u64,
    /// Pool boots this server runs at once, at most (boots for claims are not held back).
    #[arg(long, env = "WARMPOOL_MAX_PARALLEL_BOOTS", default_value_t = 8)]
    pub max_parallel_boots: usize,
    /// Sandbox VMs kept started ahead of need (owned by no project until a new VM takes one,
    /// which then starts in a few milliseconds instead of a runc start); 0 keeps none, 16 at most
    /// (each holds a running VM).
    #[arg(long, env = "WARMPOOL_SANDBOX_SPARES", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=16))]
    pub sandbox_spares: u16,
    /// Build a golden for each pool configuration and make the pool's VMs — and VMs for claims —
    /// from it (sandbox and qemu). `false` runs every VM's whole setup; goldens left from before
    /// are deleted once no VM uses them.
    #[arg(long, env = "WARMPOOL_GOLDENS", default_value_t = true, action = clap::ArgAction::Set)]
    pub goldens: bool,
    /// Requests per second allowed per token (0: unlimited).
    #[arg(long, env = "WARMPOOL_RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub rate_limit_per_sec: u32,
    /// Requests a token may send at once above its rate.
    #[arg(long, env = "WARMPOOL_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// VMs booted for claims of one project at once on this server, at most; more claims get 429.
    #[arg(long, env = "WARMPOOL_MAX_COLD_CLAIMS", default_value_t = 20)]
    pub max_cold_claims: usize,
    /// How long an ordinary request may take, in seconds (claims, exec and events are exempt).
    #[arg(long, env = "WARMPOOL_REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// How long a client may take to send a request's headers, in seconds, counted from when
    /// its connection opened or its previous answer ended: a slow sender is cut off, and an idle
    /// kept-alive connection is closed after as long.
    #[arg(long, env = "WARMPOOL_HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub header_read_timeout_secs: u64,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "WARMPOOL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "WARMPOOL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The key that seals secrets in the store (default: <data-dir>/secret.key, created on first
    /// start). Servers sharing a database need the same key.
    #[arg(long, env = "WARMPOOL_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// This node's name among the servers sharing a PostgreSQL store (default: the host name).
    #[arg(long, env = "WARMPOOL_NODE_NAME")]
    pub node_name: Option<String>,
    /// Where the other nodes reach this node's API, to forward `exec` and events of its VMs
    /// (default: the address it listens on).
    #[arg(long, env = "WARMPOOL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The most VMs (booting, ready or claimed) this node hosts; pool boots go to nodes with room
    /// (default: no limit).
    #[arg(long, env = "WARMPOOL_CAPACITY")]
    pub capacity: Option<u32>,
    /// Seconds a node's lease lasts without renewal; a node silent for longer is lost and its
    /// VMs are replaced by the others.
    #[arg(long, env = "WARMPOOL_LEASE_SECS", default_value_t = 10)]
    pub lease_secs: u64,
    /// Require the admin token on /metrics.
    #[arg(long, env = "WARMPOOL_METRICS_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_auth: bool,
    /// QEMU: accelerator.
    #[arg(long, env = "WARMPOOL_QEMU_ACCEL", value_enum, default_value = "auto")]
    pub qemu_accel: AccelArg,
    /// QEMU: how long one boot may take until the agent answers, in seconds (it is retried).
    #[arg(long, env = "WARMPOOL_QEMU_BOOT_TIMEOUT_SECS", default_value_t = 90)]
    pub qemu_boot_timeout_secs: u64,
    /// Clones of the goldens clones were last made from, kept started ahead of need so that a new
    /// VM only takes one and gives it its identity (qemu backend); 0 keeps none, 16 at most.
    #[arg(long, env = "WARMPOOL_QEMU_SPARES", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(0..=16))]
    pub qemu_spares: u16,
    /// How long creating a VM takes with the sim backend, in milliseconds.
    #[arg(long, env = "WARMPOOL_SIM_CREATE_MS", default_value_t = 0)]
    pub sim_create_ms: u64,
    /// With the sim backend, the server's clock runs this many times faster than real time
    /// (1 to 10,000): what the benchmark replays a day of claims with. `--sim-create-ms` stays
    /// in real time.
    #[arg(long, env = "WARMPOOL_SIM_CLOCK_SPEED", default_value_t = 1.0, value_parser = clock_speed)]
    pub sim_clock_speed: f64,
    /// With the sim backend, a setup command `panic` panics inside the server (to test that a
    /// boot survives that); off by default, so no input panics a server.
    #[arg(long, hide = true)]
    pub sim_panic_command: bool,
}

/// `--sim-clock-speed`: a number from 1 to 10,000.
fn clock_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=10_000.0).contains(&v) => Ok(v),
        _ => Err(format!("must be a number from 1 to 10000, not {s:?}")),
    }
}

/// `$XDG_CACHE_HOME/warmpool`, else `~/.cache/warmpool`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("warmpool");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache").join("warmpool")
}

/// Makes a path absolute without requiring it to exist.
pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// The `warmpool-agent` next to this executable (that is where cargo and installs put it).
pub fn find_agent_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return absolute(p);
        }
        bail!("the agent binary {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let candidate = exe.with_file_name("warmpool-agent");
    if candidate.is_file() {
        return Ok(candidate);
    }
    if let Some(p) = image::find_program("warmpool-agent") {
        return Ok(p);
    }
    bail!(
        "cannot find the warmpool-agent binary next to {} or on PATH; build it (`cargo build --bin warmpool-agent`) or pass --agent-bin",
        exe.display()
    )
}

/// The data dir holds the database, the secrets key, the admin token, mirrors of private repos
/// and the VMs' files: only its owner may enter it (0700), and its own secret files are 0600
/// whatever an older version or a restore left them at.
fn owner_only(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", data_dir.display()))?;
    for f in ["admin-token", "secret.key", "node-id"] {
        let p = data_dir.join(f);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot make {} private", p.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads the admin token file, or creates it (mode 0600) with a new token.
fn admin_token(data_dir: &Path, given: Option<&str>) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Some(t) = given {
        if t.len() < 16 {
            bail!("the admin token must be at least 16 characters");
        }
        // It travels in an HTTP header, where only visible ASCII is sure to arrive intact.
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the admin token must be visible ASCII characters only (no spaces or accents)");
        }
        tracing::info!("admin token: taken from the configuration");
        return Ok(t.to_string());
    }
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            tracing::info!("admin token: {}", path.display());
            return Ok(t.trim().to_string());
        }
        Ok(_) => bail!("{} is empty; delete it to get a new token", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = format!("wp_{}", warmpool_types::ids::random_secret(40));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{token}")?;
    tracing::info!("admin token: created {} (mode 0600)", path.display());
    Ok(token)
}

async fn open_store(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let path = match args.store.as_deref() {
        None => data_dir.join("warmpool.db"),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::connect(url)
                .await
                .context("cannot open the PostgreSQL store")?;
            tracing::info!("store: PostgreSQL {}", redact_url(url));
            return Ok(Arc::new(store));
        }
        Some(s) => absolute(Path::new(s.strip_prefix("sqlite://").unwrap_or(s)))?,
    };
    let store = SqliteStore::open(&path)
        .with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
    tracing::info!("store: SQLite {}", path.display());
    Ok(Arc::new(store))
}

/// A database URL fit for the log: without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn make_backend(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<Arc<dyn Backend>> {
    match args.backend {
        BackendKind::Sim => {
            tracing::info!("backend: sim (VMs are in-process fakes)");
            Ok(Arc::new(SimBackend::new(SimOptions {
                create_delay: Duration::from_millis(args.sim_create_ms),
                panic_command: args.sim_panic_command,
                ..SimOptions::default()
            })))
        }
        BackendKind::Sandbox | BackendKind::Qemu => {
            if !nix::unistd::geteuid().is_root() {
                bail!("the {:?} backend needs root (namespaces, mounts, debootstrap); run as root, or use --backend sim", args.backend);
            }
            let agent_bin = find_agent_bin(args.agent_bin.as_deref())?;
            let cache_dir = absolute(&args.cache_dir.clone().unwrap_or_else(default_cache_dir))?;
            let rootfs = args.rootfs.as_deref().map(absolute).transpose()?;
            // These paths become overlayfs mount options, where `,` and `:` are separators.
            for p in [Some(data_dir), Some(cache_dir.as_path()), rootfs.as_deref()]
                .into_iter()
                .flatten()
            {
                if p.to_string_lossy().contains([',', ':']) {
                    bail!("{} contains `,` or `:`, which the sandbox and qemu backends cannot use in a path; choose another directory", p.display());
                }
            }
            if let Some(r) = &rootfs {
                if !r.join("bin/bash").exists() && !r.join("usr/bin/bash").exists() {
                    bail!(
                        "{} does not look like a root filesystem (no bin/bash)",
                        r.display()
                    );
                }
            }
            let guest = Arc::new(GuestImage::new(
                cache_dir.clone(),
                args.debian_mirror.clone(),
                agent_bin.clone(),
                rootfs.clone(),
            ));
            match &rootfs {
                Some(r) => tracing::info!("guest root: {}", r.display()),
                None if image::is_built(&cache_dir) => {
                    tracing::info!("guest image: {}", image::image_dir(&cache_dir).display())
                }
                None => {
                    tracing::info!(
                        "the guest image is not built yet: building it now into {}",
                        image::image_dir(&cache_dir).display()
                    );
                    guest.prefetch();
                }
            }
            if args.backend == BackendKind::Qemu {
                let accel = match args.qemu_accel {
                    AccelArg::Auto => Accel::Auto,
                    AccelArg::Kvm => Accel::Kvm,
                    AccelArg::Tcg => Accel::Tcg,
                };
                let backend = QemuBackend::new(
                    QemuOptions {
                        vms_dir: data_dir.join("qemu-vms"),
                        ready_dir: data_dir.join(QEMU_SPARES_DIR),
                        spares: args.qemu_spares.into(),
                        goldens_dir: data_dir.join("goldens"),
                        cache_dir,
                        agent_bin,
                        accel,
                        boot_timeout: Duration::from_secs(args.qemu_boot_timeout_secs.max(5)),
                        boot_attempts: 3,
                    },
                    guest,
                )
                .map_err(anyhow::Error::msg)?;
                backend.start_spares();
                tracing::info!(
                    "backend: qemu (accel {:?}; each VM sized by its project's resources; {} clone(s) kept started ahead)",
                    args.qemu_accel,
                    args.qemu_spares
                );
                return Ok(backend);
            }
            let agent_layer =
                image::ensure_agent_layer(data_dir, &agent_bin).map_err(anyhow::Error::msg)?;
            let backend = SandboxBackend::new(
                sandbox_options(
                    data_dir,
                    &cache_dir,
                    agent_layer,
                    args.sandbox_spares.into(),
                )?,
                guest,
            )
            .map_err(anyhow::Error::msg)?;
            backend.start_spares();
            tracing::info!(
                "backend: sandbox ({} VM(s) kept started ahead of need)",
                args.sandbox_spares
            );
            Ok(backend)
        }
    }
}

/// Where, in a data dir, the sandbox VMs started ahead of need are kept.
pub const SPARES_DIR: &str = "vm-spares";

/// Where, in a data dir, the QEMU processes started ahead of need wait.
pub const QEMU_SPARES_DIR: &str = "qemu-spares";

/// Where the sandbox VMs of `data_dir` have their roots mounted: outside the (private) data dir,
/// one directory per data dir.
pub fn roots_dir(data_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(
        data_dir.as_os_str().as_encoded_bytes(),
    ));
    PathBuf::from("/run/warmpool").join(&h[..16])
}

/// Options of the sandbox backend for a data dir; fails, naming the packages to install, when a
/// tool it runs is missing, and when a user of this host holds the VMs' host ids.
pub fn sandbox_options(
    data_dir: &Path,
    cache_dir: &Path,
    agent_layer: PathBuf,
    spares: usize,
) -> anyhow::Result<SandboxOptions> {
    let missing = warmpool_backend::sandbox::missing_tools();
    if !missing.is_empty() {
        let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        let what: Vec<&str> = missing.iter().map(|(w, _)| *w).collect();
        bail!(
            "the sandbox backend needs {} (apt-get install -y {})",
            what.join(", "),
            pkgs.join(" ")
        );
    }
    let ids = warmpool_backend::sandbox::idmap::DEFAULT_RANGE;
    let taken = warmpool_backend::sandbox::idmap::overlaps(
        ids,
        &[Path::new("/etc/subuid"), Path::new("/etc/subgid")],
    );
    if !taken.is_empty() {
        bail!(
            "host ids {}..{} belong to sandbox VMs, but a user of this host holds some of them ({}); remove that range",
            ids.base,
            ids.base as u64 + ids.size as u64,
            taken.join("; ")
        );
    }
    let find = |p: &str| image::find_program(p).unwrap_or_else(|| PathBuf::from(p));
    Ok(SandboxOptions {
        vms_dir: data_dir.join("vms"),
        spares_dir: data_dir.join(SPARES_DIR),
        spares,
        goldens_dir: data_dir.join("sandbox-goldens"),
        runc_root: data_dir.join("runc"),
        roots_dir: roots_dir(data_dir),
        shifted_dir: cache_dir.join("shifted"),
        agent_layer,
        helper_exe: std::env::current_exe().context("cannot find this executable")?,
        runc: find("runc"),
        pasta: find("pasta"),
        seccomp_profile: PathBuf::from(warmpool_backend::sandbox::seccomp::DEFAULT_PROFILE),
        ids,
        start_timeout: Duration::from_secs(30),
    })
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Refused before anything is made.
    if args.sim_clock_speed != 1.0 && args.backend != BackendKind::Sim {
        bail!("--sim-clock-speed is for the sim backend only (real VMs run in real time)");
    }
    let data_dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    owner_only(&data_dir)?;
    // One server per data dir; `warmpool vms` waits for none.
    let _lock = crate::local_vms::lock_data_dir(&data_dir)?;
    tracing::info!("data dir: {}", data_dir.display());
    let admin = admin_token(&data_dir, args.admin_token.as_deref())?;
    let store = open_store(&args, &data_dir).await?;
    let backend = make_backend(&args, &data_dir)?;
    let cache_dir = absolute(&args.cache_dir.clone().unwrap_or_else(default_cache_dir))?;
    let roots = args
        .allow_local_repos
        .iter()
        .map(|r| absolute(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A misspelt root would refuse every local repository later, far from its cause.
    if let Some(r) = roots.iter().find(|r| !r.is_dir()) {
        bail!(
            "--allow-local-repos {}: no such directory; give a directory that exists",
            r.display()
        );
    }
    let local = LocalPolicy::new(&roots, &[data_dir.clone(), cache_dir.clone()]);
    if !roots.is_empty() {
        tracing::info!(roots = ?local.allowed_roots, "local repositories: only from these directories");
    }
    let mirrors = Arc::new(
        Mirrors::new(data_dir.join("mirrors"), Duration::from_secs(600), local)
            .context("cannot create the mirrors dir")?,
    );
    let git = GitServer::start(mirrors.clone())
        .await
        .context("cannot start the git server for VMs")?;
    // Bound before anything else: the node's advertised address defaults to it.
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let node = node_config(&args, &data_dir, &format!("{scheme}://{addr}"))?;
    let cfg = AppConfig {
        warm_pool_allowed: args.warm_pool_allowed,
        test_instance_ttl: Duration::from_secs(args.test_instance_ttl_secs),
        command_timeout: Duration::from_secs(args.command_timeout_secs.max(1)),
        server_wait: Duration::from_secs(args.server_wait_secs.max(1)),
        head_check_interval: Duration::from_secs(args.head_check_interval_secs.max(1)),
        max_parallel_boots: args.max_parallel_boots.max(1),
        rate_per_sec: args.rate_limit_per_sec,
        rate_burst: args.rate_limit_burst,
        max_cold_claims: args.max_cold_claims.max(1),
        goldens: args.goldens,
        node,
        host_paths: crate::app::host_path_replacements(&[
            (data_dir.as_path(), "<data-dir>"),
            (cache_dir.as_path(), "<cache-dir>"),
        ]),
        ..AppConfig::default()
    };
    let key_file = match &args.secret_key_file {
        Some(f) => absolute(f)?,
        None => data_dir.join("secret.key"),
    };
    let sealer = Arc::new(Sealer::load_or_create(&key_file)?);
    check_shared_secrets(store.as_ref(), &sealer, &admin).await?;
    let clock: Arc<dyn Clock> = if args.sim_clock_speed == 1.0 {
        Arc::new(SystemClock)
    } else {
        Arc::new(FastClock::new(args.sim_clock_speed))
    };
    let app = App::new(AppParts {
        admin_token: admin,
        store,
        backend: backend.clone(),
        cfg,
        mirrors,
        git,
        clock,
        sealer,
    });
    if !app
        .register_node()
        .await
        .context("cannot register this node")?
    {
        bail!(
            "the node name `{}` is held by another live node (another data dir): give this one its \
             own --node-name, or wait until that node's lease ({} s) runs out",
            app.cfg.node.name,
            app.cfg.node.lease.as_secs()
        );
    }
    tracing::info!(node = %app.cfg.node.name, url = %app.cfg.node.url, capacity = app.cfg.node.capacity, "node registered");
    // Ends when the lease is lost (or its keeper panicked: then too this node stops, safely).
    let lease_lost = crate::tasks::spawn("lease", app.clone().keep_lease());
    let sealed = app
        .seal_stored_credentials()
        .await
        .context("cannot seal the credentials of stored repository URLs")?;
    if sealed > 0 {
        tracing::info!(
            projects = sealed,
            "sealed the credentials kept in stored repository URLs"
        );
    }
    app.recover().await.context("recovery after start failed")?;
    app.spawn_reconciler(Duration::from_millis(args.reconcile_interval_ms.max(10)));
    app.nudge();
    let router = crate::api::router(
        app,
        crate::api::HttpOptions {
            max_body_bytes: args.max_body_bytes,
            metrics_auth: args.metrics_auth,
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        },
    );
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot load the TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        _ => None,
    };
    // A node whose name was taken over stops: its VMs were failed and replaced elsewhere.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let lost = lost.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {},
                _ = lease_lost => lost.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        }
    };
    let header_timeout = Duration::from_secs(args.header_read_timeout_secs.max(1));
    let served: anyhow::Result<()> = async {
        match tls {
            None => {
                tracing::info!("listening on http://{addr}");
                serve_http(
                    tokio::net::TcpListener::from_std(listener)?,
                    router,
                    header_timeout,
                    stop,
                )
                .await;
            }
            Some(config) => {
                tracing::info!("listening on https://{addr}");
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    stop.await;
                    stopper.graceful_shutdown(Some(Duration::from_secs(10)));
                });
                let mut server = axum_server::from_tcp_rustls(listener, config).handle(handle);
                connection_limits(server.http_builder(), header_timeout);
                server
                    .serve(router.into_make_service())
                    .await
                    .context("the HTTPS server failed")?;
            }
        }
        Ok(())
    }
    .await;
    // However serving ended, what the backend keeps for itself goes (VMs stay).
    backend.stop().await;
    served?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("stopped: this node's lease was taken over by another node");
    }
    tracing::info!("stopped");
    Ok(())
}

/// What a connection may cost the server while it sends nothing useful: its request headers
/// must arrive within `header_timeout` of the connection opening or of the previous answer
/// (hyper's header timer runs whenever a connection waits for a request, so it also closes idle
/// kept-alive connections), and HTTP/2 peers that stop answering pings are dropped.
fn connection_limits(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: Duration,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
}

/// Serves plain HTTP until `stop`, then lets the requests in flight finish (at most 10 s).
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    connection_limits(&mut builder, header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Which protocol a connection speaks is read from its first bytes, with no time
            // limit of hyper's: a connection that sends nothing is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // A client that goes away or sends garbage ends its own connection only.
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open 10 s after the stop; closing them");
    }
}

/// Servers sharing a database must seal secrets with one key (else one cannot read what another
/// sealed), and — on PostgreSQL, where any node forwards a caller's request to another — answer
/// one admin token. Both are compared as digests recorded in the store by the first server.
async fn check_shared_secrets(
    store: &dyn Store,
    sealer: &Sealer,
    admin_token: &str,
) -> anyhow::Result<()> {
    let recorded = store
        .setting("secrets_key_check", sealer.key_check())
        .await
        .context("cannot check the secrets key against the store")?;
    if recorded != sealer.key_check() {
        bail!(
            "this secrets key is not the one the store's secrets were sealed with: start every \
             server on this database with the same --secret-key-file (restore the original key)"
        );
    }
    if store.engine() == "postgres" {
        let hash = hex::encode(crate::app::hash_token(admin_token));
        let recorded = store
            .setting("admin_token_sha256", &hash)
            .await
            .context("cannot check the admin token against the store")?;
        if recorded != hash {
            bail!(
                "this admin token is not the one of the other servers on this database: give \
                 every node the same --admin-token"
            );
        }
    }
    Ok(())
}

/// This node's identity: its name, its data dir's id (created on first start), its address.
fn node_config(
    args: &ServeArgs,
    data_dir: &Path,
    listening: &str,
) -> anyhow::Result<crate::app::nodes::NodeConfig> {
    let name = match &args.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into()),
    };
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        bail!(
            "--node-name must be 1-100 characters of A-Z, a-z, 0-9, '.', '-' and '_'; got {name:?}"
        );
    }
    let url = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| listening.to_string())
        .trim_end_matches('/')
        .to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--advertise-url must be an http:// or https:// URL; got {url:?}");
    }
    if args.capacity == Some(0) {
        bail!("--capacity must be at least 1");
    }
    let id_file = data_dir.join("node-id");
    let node_id = match std::fs::read_to_string(&id_file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = warmpool_types::ids::new_vm_id();
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&id_file)
                .and_then(|mut f| f.write_all(id.as_bytes()))
                .with_context(|| format!("cannot write {}", id_file.display()))?;
            id
        }
    };
    Ok(crate::app::nodes::NodeConfig {
        name,
        node_id,
        url,
        capacity: args.capacity.unwrap_or(u32::MAX),
        lease: Duration::from_secs(args.lease_secs.max(1)),
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!(
        "shutting down; VMs keep running and are adopted or cleaned up at the next start"
    );
}
