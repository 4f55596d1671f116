//! The guest image: a Debian rootfs (bash, git, sudo, curl, ca-certificates, the agent) built once
//! with debootstrap into the cache dir and shared read-only by every VM, plus a tiny "agent layer"
//! holding the server's own build of `warmpool-agent`, stacked above it so that a new agent never
//! needs a new image. Users can point at their own rootfs instead.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// Debian suite of the guest.
pub const SUITE: &str = "bookworm";
/// Packages on top of `minbase`.
pub const PACKAGES: &[&str] = &[
    "bash",
    "git",
    "sudo",
    "curl",
    "ca-certificates",
    "procps",
    "iproute2",
    "less",
    "xz-utils",
];
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Where the agent lives inside the guest.
pub const AGENT_GUEST_PATH: &str = "/usr/local/bin/warmpool-agent";

/// Name of the image directory: changes whenever what goes into the image changes.
pub fn image_name() -> String {
    let mut h = Sha256::new();
    h.update(format!("v1 {SUITE} minbase {}", PACKAGES.join(",")));
    format!("debian-{SUITE}-{}", &hex::encode(h.finalize())[..10])
}

/// `<cache>/images/<name>`; the image is complete when this directory exists.
pub fn image_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("images").join(image_name())
}

pub fn rootfs_dir(cache_dir: &Path) -> PathBuf {
    image_dir(cache_dir).join("rootfs")
}

pub fn is_built(cache_dir: &Path) -> bool {
    image_dir(cache_dir).join("image.json").is_file()
}

/// What the build reports as it goes.
pub enum Progress {
    /// A phase started, e.g. "Retrieving packages".
    Phase(String),
    /// `done` of `total` in the current phase.
    Step {
        done: u64,
        total: u64,
        phase: String,
    },
    /// A line worth showing (warnings, errors).
    Line(String),
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `printf`-style rendering of debootstrap's `IF:`/`PF:` formats with their `IA:`/`PA:` arguments.
fn render(fmt: &str, args: &[String]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') => out.push('%'),
                Some(_) => out.push_str(args.next().map(String::as_str).unwrap_or("")),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Builds the image into `cache_dir` unless it is there already. Blocking; takes about 40 s with a
/// nearby mirror. Concurrent builders (two servers, parallel tests) wait for one another.
pub fn build(
    cache_dir: &Path,
    mirror: &str,
    agent_bin: &Path,
    report: &mut dyn FnMut(Progress),
) -> Result<PathBuf, String> {
    if is_built(cache_dir) {
        return Ok(rootfs_dir(cache_dir));
    }
    let debootstrap = find_program("debootstrap").ok_or(
        "debootstrap is not installed; install it with `apt-get install -y debootstrap` \
         (it builds the Debian guest image)",
    )?;
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "building the guest image needs root (debootstrap and the sandbox backend do)".into(),
        );
    }
    let images = cache_dir.join("images");
    std::fs::create_dir_all(&images)
        .map_err(|e| format!("cannot create {}: {e}", images.display()))?;
    let lock_file = std::fs::File::create(images.join(".build.lock"))
        .map_err(|e| format!("cannot create the image build lock: {e}"))?;
    report(Progress::Phase(
        "waiting for another image build to finish".into(),
    ));
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock the image build: {e}"))?;
    if is_built(cache_dir) {
        return Ok(rootfs_dir(cache_dir));
    }
    let final_dir = image_dir(cache_dir);
    let tmp_dir = images.join(format!(".{}.tmp", image_name()));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir)
            .map_err(|e| format!("cannot remove the leftover {}: {e}", tmp_dir.display()))?;
    }
    let rootfs = tmp_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)
        .map_err(|e| format!("cannot create {}: {e}", rootfs.display()))?;
    let log_path = tmp_dir.join("debootstrap.log");
    run_debootstrap(&debootstrap, &rootfs, mirror, &log_path, report)?;
    report(Progress::Phase("finishing the image".into()));
    finish_rootfs(&rootfs, agent_bin)?;
    let meta = serde_json::json!({
        "name": image_name(),
        "suite": SUITE,
        "packages": PACKAGES,
        "mirror": mirror,
        "builtAt": warmpool_types::time::fmt_ms(warmpool_types::time::now_ms()),
    });
    std::fs::write(tmp_dir.join("image.json"), format!("{meta:#}\n"))
        .map_err(|e| format!("cannot write image.json: {e}"))?;
    std::fs::rename(&tmp_dir, &final_dir)
        .map_err(|e| format!("cannot move the image into place: {e}"))?;
    Ok(final_dir.join("rootfs"))
}

fn run_debootstrap(
    debootstrap: &Path,
    rootfs: &Path,
    mirror: &str,
    log_path: &Path,
    report: &mut dyn FnMut(Progress),
) -> Result<(), String> {
    let log =
        std::fs::File::create(log_path).map_err(|e| format!("cannot create the build log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    // `--debian-installer` makes debootstrap write machine-readable progress (`P:`/`I:` lines) to
    // fd 3; everything else goes to the log.
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let wr_fd = wr.as_raw_fd();
    let mut cmd = Command::new(debootstrap);
    cmd.arg("--debian-installer")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(rootfs)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: dup2/fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if wr_fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(wr_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    report(Progress::Phase(format!(
        "running debootstrap {SUITE} from {mirror}"
    )));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run debootstrap: {e}"))?;
    drop(cmd);
    drop(wr);
    let mut args: Vec<String> = Vec::new();
    let mut step: Option<(u64, u64)> = None;
    for line in BufReader::new(std::fs::File::from(rd)).lines() {
        let Ok(line) = line else { break };
        let (tag, rest) = line.split_once(": ").unwrap_or((line.as_str(), ""));
        match tag {
            "P" => {
                let mut it = rest.split_whitespace();
                let done = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let total = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                step = Some((done, total));
                args.clear();
            }
            "I" | "W" | "E" => args.clear(),
            "PA" | "IA" | "WA" | "EA" => args.push(rest.to_string()),
            "PF" => {
                let (done, total) = step.take().unwrap_or((0, 0));
                report(Progress::Step {
                    done,
                    total,
                    phase: render(rest, &args),
                });
            }
            "IF" => report(Progress::Phase(render(rest, &args))),
            "WF" => report(Progress::Line(format!("warning: {}", render(rest, &args)))),
            "EF" => report(Progress::Line(format!("error: {}", render(rest, &args)))),
            _ => {}
        }
    }
    let status = child.wait().map_err(|e| format!("debootstrap: {e}"))?;
    if !status.success() {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        return Err(format!(
            "debootstrap failed ({status}); the end of {}:\n{}",
            log_path.display(),
            crate::tail_lines(&log, 15)
        ));
    }
    Ok(())
}

/// Trims caches and installs what warmpool puts into every guest.
fn finish_rootfs(rootfs: &Path, agent_bin: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(rootfs.join(dir)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for dir in ["var/log/warmpool", "usr/local/bin", "home"] {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(|e| io(dir, e))?;
    }
    install_agent(
        agent_bin,
        &rootfs.join(AGENT_GUEST_PATH.trim_start_matches('/')),
    )?;
    std::fs::write(rootfs.join("etc/hostname"), "warmpool\n").map_err(|e| io("etc/hostname", e))?;
    let mut f = std::fs::File::create(rootfs.join("etc/warmpool-image"))
        .map_err(|e| io("etc/warmpool-image", e))?;
    writeln!(f, "{}", image_name()).map_err(|e| io("etc/warmpool-image", e))?;
    Ok(())
}

fn install_agent(agent_bin: &Path, dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dest.with_extension("tmp");
    std::fs::copy(agent_bin, &tmp)
        .map_err(|e| format!("cannot copy the agent {}: {e}", agent_bin.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot chmod the agent: {e}"))?;
    std::fs::rename(&tmp, dest).map_err(|e| format!("cannot install the agent: {e}"))
}

/// `<data-dir>/agent-layers/<hash>`: an overlay layer holding only this build of the agent.
/// Immutable once made; a new agent build gets a new layer.
pub fn ensure_agent_layer(data_dir: &Path, agent_bin: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(agent_bin)
        .map_err(|e| format!("cannot read the agent binary {}: {e}", agent_bin.display()))?;
    let hash = hex::encode(Sha256::digest(&bytes));
    let layers = data_dir.join("agent-layers");
    let layer = layers.join(&hash[..16]);
    if layer
        .join(AGENT_GUEST_PATH.trim_start_matches('/'))
        .is_file()
    {
        return Ok(layer);
    }
    let tmp = layers.join(format!(".{}.tmp-{}", &hash[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let bin_dir = tmp.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir)
        .map_err(|e| format!("cannot create {}: {e}", bin_dir.display()))?;
    install_agent(agent_bin, &bin_dir.join("warmpool-agent"))?;
    match std::fs::rename(&tmp, &layer) {
        Ok(()) => Ok(layer),
        // Another process made the same layer first: theirs is identical.
        Err(_)
            if layer
                .join(AGENT_GUEST_PATH.trim_start_matches('/'))
                .is_file() =>
        {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(layer)
        }
        Err(e) => Err(format!("cannot create the agent layer: {e}")),
    }
}

/// The guest image as the sandbox backend needs it: built on first use if missing.
pub struct GuestImage {
    cache_dir: PathBuf,
    mirror: String,
    agent_bin: PathBuf,
    custom_rootfs: Option<PathBuf>,
    ready: tokio::sync::Mutex<Option<PathBuf>>,
}

impl GuestImage {
    pub fn new(
        cache_dir: PathBuf,
        mirror: String,
        agent_bin: PathBuf,
        custom_rootfs: Option<PathBuf>,
    ) -> Self {
        Self {
            cache_dir,
            mirror,
            agent_bin,
            custom_rootfs,
            ready: tokio::sync::Mutex::new(None),
        }
    }

    /// The rootfs, building it first if needed (callers wait for one shared build; a failed build
    /// is retried by the next caller).
    pub async fn rootfs(&self) -> Result<PathBuf, String> {
        if let Some(custom) = &self.custom_rootfs {
            return Ok(custom.clone());
        }
        let mut ready = self.ready.lock().await;
        if let Some(p) = ready.as_ref() {
            return Ok(p.clone());
        }
        let (cache, mirror, agent) = (
            self.cache_dir.clone(),
            self.mirror.clone(),
            self.agent_bin.clone(),
        );
        let path = tokio::task::spawn_blocking(move || {
            if !is_built(&cache) {
                tracing::info!(
                    "building the guest image into {} (once; about a minute)",
                    image_dir(&cache).display()
                );
            }
            // One line per quarter of each phase; per-package messages only at debug level.
            let mut last = (String::new(), u64::MAX);
            build(&cache, &mirror, &agent, &mut |p| match p {
                Progress::Phase(m) => tracing::debug!("guest image: {m}"),
                Progress::Line(m) => tracing::warn!("guest image: {m}"),
                Progress::Step { done, total, phase } if total > 0 => {
                    let quarter = done * 4 / total;
                    if last.0 != phase || last.1 != quarter {
                        tracing::info!("guest image: {phase} {}%", quarter * 25);
                        last = (phase, quarter);
                    }
                }
                Progress::Step { .. } => {}
            })
        })
        .await
        .map_err(|e| format!("image build task failed: {e}"))??;
        *ready = Some(path.clone());
        Ok(path)
    }

    /// Starts building in the background so the first VM does not wait for all of it.
    pub fn prefetch(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.rootfs().await {
                tracing::error!("guest image build failed: {e}");
            }
        });
    }
}
