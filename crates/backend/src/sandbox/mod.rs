//! `sandbox`: each VM is a container run by runc (Debian's OCI runtime) whose root is an overlay
//! over the shared guest image. It has its own user namespace (its root is an unprivileged host
//! id, see [`idmap`]), its own network namespace with outbound traffic through pasta's user-mode
//! networking (no way to the host's loopback or to other VMs; only the git mirror's port is
//! forwarded), its own mount, pid, ipc, uts and cgroup namespaces, the shipped seccomp profile,
//! and cgroup limits from the project's resources. It shares the host's kernel.
//!
//! Starting a container costs runc most of its time, so the backend keeps a few VMs started
//! ahead of need ("spares": root, namespaces, network and agent up, owned by nobody). A new VM
//! takes one when there is one and makes it its own — its directory, hostname, machine id,
//! limits and agent token — in a few milliseconds; otherwise it starts afresh. Spares are made
//! again in the background and never outlive the server that made them.
//!
//! Layout: `<vms-dir>/<vm-id>/{container,config.json,rw/{upper,work},lower0,lower1,ns/{user,net},
//! init.pid,console.log,runc.log,pasta.log,pasta.pid}`, where `container` names the VM's runc
//! container (`sp-...`; a VM started by an older server has none, and its container is its id);
//! a spare's directory is `<spares-dir>/<container>` until a VM takes it (a rename); the root is
//! mounted at `<roots-dir>/<container>` and the cgroups are `/warmpool/<container>`; runc keeps
//! its state in `<runc-root>`. VMs keep running when the server stops (an upgrade does not end
//! them); `list` finds them again from their directories and `destroy` removes every piece,
//! whichever of them exist.

pub mod cgroup;
pub mod disk;
pub mod idmap;
pub mod netns;
pub mod seccomp;
pub mod spec;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use nix::mount::{umount2, MntFlags};
use oci_spec::runtime::LinuxSeccomp;
use sha2::{Digest, Sha256};
use warmpool_types::agent::IdentityRequest;
use warmpool_types::ids;

use crate::agent_client::HttpAgent;
use crate::image::GuestImage;
use crate::spawn::Spawn;
use crate::{tail_lines, Agent, Backend, BackendError, Resources, VmHandle, VmSpec};
pub use spec::IdRange;

/// runc's PATH (it finds nothing else in the server's environment).
const RUNC_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub struct SandboxOptions {
    /// Where VM directories live (`<data-dir>/vms`).
    pub vms_dir: PathBuf,
    /// Where the directories of VMs started ahead of need live (`<data-dir>/vm-spares`), on the
    /// same filesystem as `vms_dir`.
    pub spares_dir: PathBuf,
    /// How many VMs to keep started ahead of need (0: none; every VM starts afresh).
    pub spares: usize,
    /// Where goldens live (`<data-dir>/sandbox-goldens`): each a filesystem layer, the changes
    /// one VM's setup made to the image, stacked between the agent's layer and the image for the
    /// VMs made from it.
    pub goldens_dir: PathBuf,
    /// runc's state directory (`<data-dir>/runc`).
    pub runc_root: PathBuf,
    /// Where VM roots are mounted: a directory the VMs' ids can reach (runc binds the root from
    /// inside the VM's user namespace, which cannot pass the private data dir).
    pub roots_dir: PathBuf,
    /// Where the copies of the layers owned by the VMs' id range are kept (`<cache-dir>/shifted`).
    pub shifted_dir: PathBuf,
    /// The overlay layer with this server's agent build, stacked above the image.
    pub agent_layer: PathBuf,
    /// The binary that understands `__sandbox-hold` (the `warmpool` executable).
    pub helper_exe: PathBuf,
    pub runc: PathBuf,
    pub pasta: PathBuf,
    /// The seccomp profile in the container engines' format.
    pub seccomp_profile: PathBuf,
    pub ids: IdRange,
    /// How long runc and pasta may take to start a VM.
    pub start_timeout: Duration,
}

pub struct SandboxBackend {
    opts: SandboxOptions,
    image: Arc<GuestImage>,
    client: reqwest::Client,
    seccomp: LinuxSeccomp,
    limit_swap: bool,
    /// `(agent layer, rootfs)` owned by the id range, once made.
    layers: tokio::sync::Mutex<Option<(PathBuf, PathBuf)>>,
    /// Whether the log already said that disk limits are not kept here.
    disk_unlimited_said: std::sync::atomic::AtomicBool,
    /// Networks being attached (pasta starting), by VM (by container for a spare): `None` until
    /// pasta has answered.
    networks: std::sync::Mutex<HashMap<String, NetworkState>>,
    /// VMs started ahead of need.
    spares: std::sync::Mutex<Spares>,
    /// Told whenever a spare is made or making stops.
    spares_changed: tokio::sync::Notify,
    /// One per CPU: VMs being started afresh (or ahead of need), runc to network. Starts are
    /// CPU-bound; side by side, a burst's starts all shared the CPU and all ended late, while
    /// one after another per CPU the first are handed over in a fraction of the time and the
    /// last no later (a burst of 20 on 2 CPUs: half the time to the median VM).
    starts: tokio::sync::Semaphore,
    /// This backend, for the task that makes spares in the background.
    me: Weak<SandboxBackend>,
}

type NetworkState = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

/// A VM started ahead of need: everything up, its agent on a token of its own.
struct Spare {
    container: String,
    token: String,
    agent_url: String,
    /// The host ports it was given (a VM must want the same to take it).
    host_ports: Vec<u16>,
    /// The one disk limit it can have (`None`: any).
    disk_mb: Option<u64>,
    /// The golden whose layer its root stacks, if any.
    golden: Option<String>,
}

/// What spares are made for: the host ports, disk limit and golden of the last VM created.
type Shape = (Vec<u16>, u64, Option<String>);

impl Spare {
    /// Whether a VM with these host ports, this disk limit and on this golden can take it.
    fn fits(&self, host_ports: &[u16], disk_mb: u64, golden: Option<&str>) -> bool {
        self.host_ports == host_ports
            && self.disk_mb.is_none_or(|m| m == disk_mb)
            && self.golden.as_deref() == golden
    }
}

#[derive(Default)]
struct Spares {
    ready: Vec<Spare>,
    /// A task is making (or clearing) spares.
    making: bool,
    /// Spares left by an earlier server have been destroyed.
    cleared: bool,
    /// The host ports, disk limit and golden of the last VM created: what spares are made for.
    shape: Option<Shape>,
    /// The server stops, or spares cannot be used here: no more spares.
    stopped: bool,
    /// VMs starting afresh right now (no spare fitted them).
    afresh: usize,
}

/// Counts a VM starting afresh in [`Spares::afresh`] while it lives.
struct StartingAfresh<'a>(&'a SandboxBackend);

impl<'a> StartingAfresh<'a> {
    fn new(b: &'a SandboxBackend) -> Self {
        b.spares_lock().afresh += 1;
        Self(b)
    }
}

impl Drop for StartingAfresh<'_> {
    fn drop(&mut self) {
        self.0.spares_lock().afresh -= 1;
        self.0.spares_changed.notify_waiters();
    }
}

/// What one container is started with.
struct Boot<'a> {
    container: &'a str,
    hostname: &'a str,
    token: &'a str,
    resources: &'a Resources,
    host_ports: &'a [u16],
    /// Under which name the network's attachment is kept in `networks`.
    network_key: &'a str,
    /// The golden layer to stack between the agent's layer and the image.
    golden: Option<&'a Path>,
}

/// The gauge of sandbox VMs started ahead of need and ready to be taken.
pub const SPARES_READY_METRIC: &str = "warmpool_sandbox_vms_started_ahead";

/// Names of runc containers (and of VM roots and cgroups): `sp-` and a VM id's random part.
const CONTAINER_PREFIX: &str = "sp-";

fn new_container_id() -> String {
    format!(
        "{CONTAINER_PREFIX}{}",
        &ids::new_vm_id()[ids::VM_PREFIX.len()..]
    )
}

/// Whether `s` has the shape of a container name made by [`new_container_id`].
pub fn is_container_id(s: &str) -> bool {
    s.strip_prefix(CONTAINER_PREFIX)
        .is_some_and(|r| ids::is_vm_id(&format!("{}{r}", ids::VM_PREFIX)))
}

/// The runc container of the VM in `dir`: the one its `container` file names, or (a VM started
/// by an older server) its own id.
fn container_of(dir: &Path, vm_id: &str) -> String {
    std::fs::read_to_string(dir.join("container"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|c| is_container_id(c))
        .unwrap_or_else(|| vm_id.to_string())
}

/// Names the machine whose init is `pid` (its UTS namespace), from the host: a VM's root may not
/// (it lacks CAP_SYS_ADMIN). A thread of its own enters the namespace and ends with it.
fn set_hostname(pid: i32, start: u64, name: &str) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts"))
        .map_err(|e| format!("cannot open the VM's UTS namespace: {e}"))?;
    // The pid could have been reused between the pid file and the open.
    if !crate::process::alive(pid, start) {
        return Err("the VM's init is gone".into());
    }
    let name = name.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUTS)
            .map_err(|e| format!("cannot enter the VM's UTS namespace: {e}"))?;
        nix::unistd::sethostname(&name).map_err(|e| format!("cannot set the hostname: {e}"))
    })
    .join()
    .map_err(|_| "the hostname thread panicked".to_string())?
}

/// What the sandbox backend needs from the host, and the Debian packages that give it.
pub fn missing_tools() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if crate::image::find_program("runc").is_none() {
        out.push(("runc", "runc"));
    }
    if crate::image::find_program("pasta").is_none() {
        out.push(("pasta", "passt"));
    }
    if !Path::new(seccomp::DEFAULT_PROFILE).is_file() {
        out.push((seccomp::DEFAULT_PROFILE, "golang-github-containers-common"));
    }
    for fw in ["iptables", "ip6tables"] {
        if crate::image::find_program(fw).is_none() {
            out.push((fw, "iptables"));
        }
    }
    out
}

/// The host group pasta runs as once it has joined a VM's network (it stays uid 0, which joining
/// the VM's namespaces needs): no VM id and no host group, so the firewall can tell the VMs'
/// outbound connections from everyone else's.
pub fn egress_gid(ids: IdRange) -> u32 {
    ids.base - 1
}

/// Makes sure the VMs' outbound connections (pasta's, by its group) cannot reach any address of
/// the host itself: pasta copies the host's main address into each VM, which hides that one,
/// but the host's other addresses (a second interface, a bridge, an address on `lo`) would be
/// reached through it. Loopback stays open to pasta because only its `-T` forwards (the git
/// mirror's port) lead there; a VM has no address that maps to the host's loopback.
fn install_egress_firewall(ids: IdRange) -> Result<(), String> {
    let owner = crate::firewall::Owner::Gid(egress_gid(ids));
    for program in ["iptables", "ip6tables"] {
        crate::firewall::ensure(program, owner, true)?;
    }
    Ok(())
}

/// Whether the memory cgroup can also hold swap to the limit (v2, or v1 with swap accounting).
fn swap_limit_supported() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .map(|c| c.split_whitespace().any(|w| w == "memory"))
            .unwrap_or(false)
}

fn err(msg: impl Into<String>) -> BackendError {
    BackendError::new(msg)
}

impl SandboxBackend {
    /// A backend that destroys VMs and starts them; [`SandboxBackend::start_spares`] has it
    /// keep spares too.
    pub fn new(opts: SandboxOptions, image: Arc<GuestImage>) -> Result<Arc<Self>, String> {
        for d in [
            &opts.vms_dir,
            &opts.spares_dir,
            &opts.runc_root,
            &opts.goldens_dir,
        ] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
        // A golden still being copied when a server stopped is not one.
        if let Ok(rd) = std::fs::read_dir(&opts.goldens_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // Search only: the ids can reach a root whose name they know, and list nothing.
        std::fs::create_dir_all(&opts.roots_dir)
            .map_err(|e| format!("cannot create {}: {e}", opts.roots_dir.display()))?;
        let mut d = opts.roots_dir.clone();
        loop {
            if let Ok(md) = std::fs::metadata(&d) {
                if md.permissions().mode() & 0o001 == 0 {
                    let mode = md.permissions().mode() | 0o111;
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| format!("cannot open {} for search: {e}", d.display()))?;
                }
            }
            if !d.pop() || d.as_os_str().is_empty() || d == Path::new("/") {
                break;
            }
        }
        let seccomp = seccomp::load(&opts.seccomp_profile, spec::CAPABILITIES)?;
        install_egress_firewall(opts.ids)?;
        let backend = Arc::new_cyclic(|me| Self {
            opts,
            image,
            client: HttpAgent::default_client(),
            seccomp,
            limit_swap: swap_limit_supported(),
            layers: tokio::sync::Mutex::new(None),
            disk_unlimited_said: std::sync::atomic::AtomicBool::new(false),
            networks: std::sync::Mutex::new(HashMap::new()),
            spares: std::sync::Mutex::new(Spares::default()),
            spares_changed: tokio::sync::Notify::new(),
            starts: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            me: me.clone(),
        });
        Ok(backend)
    }

    /// For the server: destroys the spares an earlier server left (whatever `opts.spares` is),
    /// then keeps `opts.spares` ready, in the background. Needs a tokio runtime.
    pub fn start_spares(&self) {
        self.refill(None);
    }

    fn spares_lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_spares(st: &Spares) {
        metrics::gauge!(SPARES_READY_METRIC).set(st.ready.len() as f64);
    }

    /// Takes a ready spare that a VM of `spec` can be.
    fn take_spare(&self, spec: &VmSpec) -> Option<Spare> {
        let mut st = self.spares_lock();
        let i = st.ready.iter().position(|s| {
            s.fits(
                &spec.host_ports,
                spec.resources.disk_mb,
                spec.from_golden.as_deref(),
            )
        })?;
        let taken = st.ready.swap_remove(i);
        Self::count_spares(&st);
        Some(taken)
    }

    /// Starts the background task that brings the spares back to their number (made for VMs
    /// like `like` from now on, when given), unless it runs already.
    fn refill(&self, like: Option<&VmSpec>) {
        let Some(me) = self.me.upgrade() else { return };
        {
            let mut st = self.spares_lock();
            if let Some(spec) = like {
                st.shape = Some((
                    spec.host_ports.clone(),
                    spec.resources.disk_mb,
                    spec.from_golden.clone(),
                ));
            }
            let stale = st.ready.iter().any(|s| !Self::current(&st, s));
            let short = st.shape.is_some() && st.ready.len() < self.opts.spares;
            if st.making || st.stopped || (st.cleared && !stale && !short) {
                return;
            }
            st.making = true;
        }
        tokio::spawn(async move { me.fill_spares().await });
    }

    /// Whether spare `s` still fits the VMs spares are made for.
    fn current(st: &Spares, s: &Spare) -> bool {
        st.shape
            .as_ref()
            .is_some_and(|(ports, disk, golden)| s.fits(ports, *disk, golden.as_deref()))
    }

    async fn fill_spares(&self) {
        /// However the task ends (a panic included), the next VM may start another.
        struct Done<'a>(&'a SandboxBackend);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.spares_lock().making = false;
                self.0.spares_changed.notify_waiters();
            }
        }
        let _done = Done(self);
        if !self.spares_lock().cleared {
            self.clear_spares().await;
            self.spares_lock().cleared = true;
        }
        loop {
            let (stale, want) = {
                let mut st = self.spares_lock();
                let (keep, stale): (Vec<Spare>, Vec<Spare>) = std::mem::take(&mut st.ready)
                    .into_iter()
                    .partition(|s| Self::current(&st, s));
                st.ready = keep;
                Self::count_spares(&st);
                let want = st
                    .shape
                    .clone()
                    .filter(|_| !st.stopped && st.ready.len() < self.opts.spares);
                (stale, want)
            };
            for s in stale {
                let _ = self.destroy_spare(&s.container).await;
            }
            let Some((ports, disk_mb, golden)) = want else {
                return;
            };
            // Not while VMs start afresh (a burst larger than the spares): a spare made now
            // would take the CPU those VMs, which someone waits for, need. Bounded, so that a
            // steady stream of starts still gets its spares.
            self.wait_spares(self.opts.start_timeout, |st| st.afresh == 0 || st.stopped)
                .await;
            if self.spares_lock().stopped {
                return;
            }
            match self.make_spare(&ports, disk_mb, golden).await {
                Ok(spare) => {
                    let late = {
                        let mut st = self.spares_lock();
                        if st.stopped {
                            Some(spare)
                        } else {
                            st.ready.push(spare);
                            Self::count_spares(&st);
                            None
                        }
                    };
                    if let Some(s) = late {
                        let _ = self.destroy_spare(&s.container).await;
                    }
                    self.spares_changed.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!(
                        "could not start a VM ahead of need (the next VM starts afresh): {e}"
                    );
                    return;
                }
            }
        }
    }

    /// Starts a VM that belongs to nobody yet, and waits until its network and agent are up.
    async fn make_spare(
        &self,
        host_ports: &[u16],
        disk_mb: u64,
        golden: Option<String>,
    ) -> Result<Spare, BackendError> {
        let layer = golden
            .as_deref()
            .map(|g| self.golden_layer(g))
            .transpose()?;
        let container = new_container_id();
        let dir = self.opts.spares_dir.join(&container);
        let token = ids::random_secret(40);
        let made = async {
            let (handle, upper) = self
                .boot(
                    &Boot {
                        container: &container,
                        hostname: &container,
                        token: &token,
                        resources: &Resources {
                            disk_mb,
                            ..Resources::default()
                        },
                        host_ports,
                        network_key: &container,
                        golden: layer.as_deref(),
                    },
                    &dir,
                )
                .await?;
            self.wait_network_of(&container, &dir).await?;
            let agent = HttpAgent::new(self.client.clone(), &handle.agent_url, &token);
            let deadline = tokio::time::Instant::now() + self.opts.start_timeout;
            // The socket listens before the agent runs, so a request waits for the agent.
            while let Err(e) = agent.health().await {
                if tokio::time::Instant::now() > deadline {
                    return Err(err(format!("the agent never answered: {e}")));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((handle, upper))
        }
        .await;
        match made {
            Ok((h, upper)) => Ok(Spare {
                container,
                token,
                agent_url: h.agent_url,
                host_ports: host_ports.to_vec(),
                disk_mb: upper.fixed_mb(),
                golden,
            }),
            Err(e) => {
                let _ = self.destroy_spare(&container).await;
                Err(e)
            }
        }
    }

    /// Makes spare `s` the VM of `spec`: its directory becomes the VM's, then its hostname,
    /// `/etc` files, machine id, limits and agent token become the VM's own.
    async fn adopt(&self, s: &Spare, spec: &VmSpec, dir: &Path) -> Result<VmHandle, BackendError> {
        let io = |what: &str, e: std::io::Error| err(format!("{what}: {e}"));
        // First, so that from here on the VM's own destroy removes everything.
        if let Err(e) = std::fs::rename(self.opts.spares_dir.join(&s.container), dir) {
            if e.raw_os_error() == Some(libc::EXDEV) {
                // The two directories are on different filesystems (or subvolumes): no spare
                // can ever be taken here.
                self.spares_lock().stopped = true;
                tracing::warn!(
                    "VMs are not started ahead of need: {} and {} are on different filesystems",
                    self.opts.spares_dir.display(),
                    self.opts.vms_dir.display()
                );
            }
            return Err(io("cannot move the VM's directory", e));
        }
        let machine_id = crate::random_hex(16);
        write_guest_files(
            &self.opts.roots_dir.join(&s.container),
            &spec.vm_id,
            &machine_id,
            self.opts.ids,
        )
        .map_err(|e| io("cannot write the VM's /etc files", e))?;
        let (pid, start) = crate::process::read_pid_file(&dir.join("init.pid"))
            .ok_or_else(|| err("the VM has no init.pid"))?;
        set_hostname(pid, start, &spec.vm_id).map_err(err)?;
        cgroup::apply(&s.container, &spec.resources, self.limit_swap).map_err(err)?;
        disk::set_limit(dir, "rw", spec.resources.disk_mb)
            .map_err(|e| io("cannot set the VM's disk limit", e))?;
        HttpAgent::new(self.client.clone(), &s.agent_url, &s.token)
            .set_identity(&IdentityRequest {
                token: spec.agent_token.clone(),
                hostname: spec.vm_id.clone(),
                machine_id,
                time_ms: None,
                entropy: None,
            })
            .await
            .map_err(|e| err(format!("cannot give the VM its identity: {e}")))?;
        Ok(VmHandle {
            agent_url: s.agent_url.clone(),
            started_ahead: true,
        })
    }

    /// Waits until a spare is ready, or no task is making one; true when one is ready. For the
    /// benchmark, which measures a VM that takes a spare.
    pub async fn wait_for_spare(&self, limit: Duration) -> bool {
        self.wait_spares(limit, |st| !st.ready.is_empty() || !st.making)
            .await;
        !self.spares_lock().ready.is_empty()
    }

    /// Waits (at most `limit`) until `done` holds of the spares.
    async fn wait_spares(&self, limit: Duration, done: impl Fn(&Spares) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.spares_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.spares_lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Destroys every spare in the spares directory (an earlier server's; none is in use).
    pub async fn clear_spares(&self) -> Vec<String> {
        let mut done = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.opts.spares_dir) else {
            return done;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if is_container_id(&name) && self.destroy_spare(&name).await.is_ok() {
                done.push(name);
            }
        }
        done
    }

    /// Destroys the spare `container`, wherever it got to.
    pub async fn destroy_spare(&self, container: &str) -> Result<(), BackendError> {
        if !is_container_id(container) {
            return Err(err(format!("`{container}` is not a spare VM")));
        }
        let dir = self.opts.spares_dir.join(container);
        self.destroy_dir(&dir, container, container).await
    }

    fn networks_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NetworkState>> {
        self.networks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime's own floor, for the benchmark: one `runc run` of [`spec::bare`] (from
    /// creating the container to its exit and removal), timed. `work` holds the bundle.
    pub async fn bare_runtime_start(&self, work: &Path) -> Result<Duration, String> {
        let (_, rootfs) = self.layers().await.map_err(|e| e.to_string())?;
        let id = format!("bare-{}", ids::random_secret(8).to_lowercase());
        let bundle = work.join(&id);
        std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
        // Where the VMs' ids can reach it, as VM roots are (the cache dir may be private).
        let root = self.opts.roots_dir.join(&id);
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        nix::mount::mount(
            Some(&rootfs),
            &root,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("cannot bind the image: {e}"))?;
        let config = spec::bare(&root, self.opts.ids, &format!("/warmpool-bench/{id}"))?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&config).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let t = std::time::Instant::now();
        let out = tokio::process::Command::new(&self.opts.runc)
            .arg("--root")
            .arg(work.join("runc"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run runc: {e}"))?;
        let took = t.elapsed();
        let _ = std::fs::remove_dir_all(&bundle);
        let _ = umount2(&root, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&root);
        if !out.status.success() {
            return Err(format!(
                "runc run failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(took)
    }

    /// Where a VM's network namespace is pinned.
    fn net_pin(dir: &Path) -> PathBuf {
        dir.join("ns/net")
    }

    fn vm_dir(&self, vm_id: &str) -> Result<PathBuf, BackendError> {
        // The id becomes a path: only our own id shape may get there.
        if !ids::is_vm_id(vm_id) {
            return Err(err(format!("`{vm_id}` is not a VM id")));
        }
        Ok(self.opts.vms_dir.join(vm_id))
    }

    /// The agent layer and the guest rootfs, as copies owned by the VMs' id range (made on first
    /// use, once per machine for the image).
    /// Golden `id`'s directory; the id must be one the server makes.
    fn golden_dir(&self, id: &str) -> Result<PathBuf, BackendError> {
        if !ids::is_instance_id(id) {
            return Err(err(format!("{id:?} is not a golden's id")));
        }
        Ok(self.opts.goldens_dir.join(id))
    }

    /// The layer of golden `id`.
    fn golden_layer(&self, id: &str) -> Result<PathBuf, BackendError> {
        Ok(self.golden_dir(id)?.join("layer"))
    }

    /// A VM (or spare) whose root stacks golden layer `layer`.
    fn golden_in_use(&self, layer: &Path) -> Option<String> {
        [&self.opts.vms_dir, &self.opts.spares_dir]
            .into_iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten())
            .find(|e| {
                (0..3).any(|i| {
                    std::fs::read_link(e.path().join(format!("lower{i}")))
                        .ok()
                        .as_deref()
                        == Some(layer)
                })
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }

    async fn layers(&self) -> Result<(PathBuf, PathBuf), BackendError> {
        let mut ready = self.layers.lock().await;
        if let Some(l) = ready.as_ref() {
            return Ok(l.clone());
        }
        let rootfs = self
            .image
            .rootfs()
            .await
            .map_err(|e| err(format!("the guest image is not available: {e}")))?;
        let (agent, dir, ids) = (
            self.opts.agent_layer.clone(),
            self.opts.shifted_dir.clone(),
            self.opts.ids,
        );
        let made = tokio::task::spawn_blocking(move || {
            let name = |p: &Path| {
                let h = hex::encode(Sha256::digest(p.as_os_str().as_encoded_bytes()));
                dir.join(format!("{}-{}", &h[..16], ids.base))
            };
            if !idmap_marker(&name(&rootfs)) {
                tracing::info!(
                    "copying the guest image for the VMs' id range (once per image; a few seconds)"
                );
            }
            let a = idmap::shifted_copy(&agent, &name(&agent), ids)?;
            let r = idmap::shifted_copy(&rootfs, &name(&rootfs), ids)?;
            Ok::<_, String>((a, r))
        })
        .await
        .map_err(|e| err(format!("the layer task failed: {e}")))?
        .map_err(err)?;
        *ready = Some(made.clone());
        Ok(made)
    }

    /// Starts a VM afresh, in `dir`, for `spec`.
    async fn start(&self, spec: &VmSpec, dir: &Path) -> Result<VmHandle, BackendError> {
        let golden = match &spec.from_golden {
            Some(g) => {
                let layer = self.golden_layer(g)?;
                if !layer.is_dir() {
                    return Err(err(format!("there is no golden {g}")));
                }
                Some(layer)
            }
            None => None,
        };
        let container = new_container_id();
        let (handle, _) = self
            .boot(
                &Boot {
                    container: &container,
                    hostname: &spec.vm_id,
                    token: &spec.agent_token,
                    resources: &spec.resources,
                    host_ports: &spec.host_ports,
                    network_key: &spec.vm_id,
                    golden: golden.as_deref(),
                },
                dir,
            )
            .await?;
        Ok(handle)
    }

    /// Starts container `b.container` in `dir`: its root, namespaces and runc; its network
    /// attaches meanwhile (see `networks`). Answers how its writable layer was made, too.
    async fn boot(
        &self,
        b: &Boot<'_>,
        dir: &Path,
    ) -> Result<(VmHandle, disk::Upper), BackendError> {
        // Held until runc is done and pasta has answered (see `starts`).
        let _permit = self.starts.acquire().await.ok();
        let t0 = std::time::Instant::now();
        let (agent_layer, rootfs) = self.layers().await?;
        let ids = self.opts.ids;
        let io = |what: &str, e: std::io::Error| err(format!("{what}: {e}"));
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("cannot create the VM's directory", e))?;
        // First: whatever is made from here on is found by its name.
        std::fs::write(dir.join("container"), b.container)
            .map_err(|e| io("cannot write the container's name", e))?;
        let root = self.opts.roots_dir.join(b.container);
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| io("cannot create the VM's root", e))?;
        // `rw` holds the overlay's upper and work dirs: one filesystem (or subvolume) where the
        // disk limit is kept (overlayfs renames between the two, which cannot cross them).
        let (d, limit) = (dir.to_path_buf(), b.resources.disk_mb);
        let upper = tokio::task::spawn_blocking(move || disk::make_upper(&d, "rw", limit))
            .await
            .map_err(|e| err(format!("the disk task failed: {e}")))?
            .map_err(|e| io("cannot create the VM's writable layer", e))?;
        if let disk::Upper::Unlimited(why) = &upper {
            if !self
                .disk_unlimited_said
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!("VMs' diskMb is not enforced here: {why}");
            }
        }
        for sub in ["rw/upper", "rw/work"] {
            tokio::fs::create_dir(dir.join(sub))
                .await
                .map_err(|e| io(&format!("cannot create {sub}"), e))?;
        }
        // The root directory the VM sees is the upper layer's: it belongs to the VM's root.
        std::os::unix::fs::chown(dir.join("rw/upper"), Some(ids.base), Some(ids.base))
            .map_err(|e| io("cannot chown upper", e))?;
        let layers: Vec<PathBuf> = std::iter::once(agent_layer)
            .chain(b.golden.map(Path::to_path_buf))
            .chain(std::iter::once(rootfs))
            .collect();
        for (i, p) in layers.iter().enumerate() {
            std::os::unix::fs::symlink(p, dir.join(format!("lower{i}")))
                .map_err(|e| io("cannot link a layer", e))?;
        }
        let names: Vec<String> = (0..layers.len()).map(|i| format!("lower{i}")).collect();
        let (d, r, n, exe) = (
            dir.to_path_buf(),
            root.clone(),
            Self::net_pin(dir),
            self.opts.helper_exe.clone(),
        );
        tokio::task::spawn_blocking(move || netns::prepare(&d, &r, &n, &names, ids, &exe))
            .await
            .map_err(|e| err(format!("the namespace task failed: {e}")))?
            .map_err(err)?;
        let prepared = t0.elapsed();
        write_guest_files(&root, b.hostname, &crate::random_hex(16), ids)
            .map_err(|e| err(format!("cannot write the VM's /etc files: {e}")))?;
        let config = spec::build(&spec::SpecInput {
            hostname: b.hostname,
            token: b.token,
            ids,
            resources: b.resources,
            seccomp: Some(self.seccomp.clone()),
            userns: &dir.join("ns/user"),
            netns: &Self::net_pin(dir),
            limit_swap: self.limit_swap,
            cgroups_path: &cgroup::path(b.container),
            root: &root,
        })
        .map_err(|e| err(format!("cannot build the VM's runtime config: {e}")))?;
        // It holds the agent token: root only.
        let json = serde_json::to_vec(&config).map_err(|e| err(e.to_string()))?;
        write_private(&dir.join("config.json"), &json)
            .map_err(|e| io("cannot write config.json", e))?;

        // Bound here so its port is known now and nobody else can take it; the VM's agent
        // accepts on it, though the VM itself cannot reach the host's loopback.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| io("cannot bind the agent port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| io("agent port", e))?
            .port();

        // pasta attaches the network while runc starts the VM; the VM is handed over as soon as
        // its agent can answer, and the first step that needs the network waits for it
        // (`wait_network`).
        let (tx, rx) = tokio::sync::watch::channel(None);
        let mut attached = rx.clone();
        self.networks_lock().insert(b.network_key.to_string(), rx);
        let net = Network {
            pasta: self.opts.pasta.clone(),
            gid: egress_gid(self.opts.ids),
            netns: Self::net_pin(dir),
            dir: dir.to_path_buf(),
            host_ports: b.host_ports.to_vec(),
        };
        let limit = self.opts.start_timeout;
        tokio::spawn(async move {
            let r = match tokio::time::timeout(limit, net.attach()).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "the VM's network was not set up within {} s",
                    limit.as_secs()
                )),
            };
            let _ = tx.send(Some(r));
        });
        let configured = t0.elapsed();
        let started =
            tokio::time::timeout(limit, self.run_container(b.container, dir, &listener)).await;
        tracing::debug!(
            container = %b.container,
            "sandbox start: root and namespaces {prepared:?}, config {configured:?}, runc {:?}",
            t0.elapsed()
        );
        drop(listener);
        started.map_err(|_| {
            err(format!(
                "the sandbox did not start within {} s",
                limit.as_secs()
            ))
        })??;
        // The VM's init, by pid and start time: destroy kills it (which ends every process of
        // the VM's pid namespace) and waits for it even if runc's state is gone.
        let state =
            std::fs::read_to_string(self.opts.runc_root.join(b.container).join("state.json"))
                .map_err(|e| io("cannot read runc's state of the VM", e))?;
        let pid = serde_json::from_str::<serde_json::Value>(&state)
            .ok()
            .and_then(|v| v["init_process_pid"].as_i64())
            .ok_or_else(|| err("runc's state of the VM has no init pid"))?;
        crate::process::write_pid_file(&dir.join("init.pid"), pid as i32)
            .map_err(|e| io("cannot write init.pid", e))?;
        // The start's CPU includes pasta's; how the network went is for `wait_network` to tell.
        let _ = attached.wait_for(Option::is_some).await;
        let handle = VmHandle {
            agent_url: format!("http://127.0.0.1:{port}"),
            ..Default::default()
        };
        Ok((handle, upper))
    }

    /// Waits until the network of the VM (or spare) in `dir`, attached under `key`, is up.
    async fn wait_network_of(&self, key: &str, dir: &Path) -> Result<(), BackendError> {
        let attaching = self.networks_lock().get(key).cloned();
        let Some(mut rx) = attaching else {
            // Attached before this server started (an adopted VM), or before a spare was taken:
            // pasta must still run.
            return match crate::process::read_pid_file(&dir.join("pasta.pid")) {
                Some((pid, start)) if crate::process::alive(pid, start) => Ok(()),
                _ => Err(err("the VM's network is gone (its pasta is not running)")),
            };
        };
        let done = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| err("the VM's network setup was abandoned"))?
            .clone();
        self.networks_lock().remove(key);
        done.unwrap_or(Ok(())).map_err(err)
    }

    /// Removes every piece of the VM (or spare) in `dir` running as `container`, whose network
    /// attaches under `network_key`: its processes, runc's state, cgroups, pasta, mounts and
    /// files, whichever of them exist.
    async fn destroy_dir(
        &self,
        dir: &Path,
        container: &str,
        network_key: &str,
    ) -> Result<(), BackendError> {
        crate::process::kill_from_pid_file(&dir.join("init.pid")).await;
        let out = self
            .runc_cmd()
            .args(["delete", "--force", container])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .map_err(|e| err(format!("cannot run runc: {e}")))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            if !msg.contains("does not exist") {
                tracing::warn!(container, "runc delete: {}", msg.trim());
            }
        }
        cgroup::remove(container);
        // A pasta still starting is let finish first, so its pid is known when it is killed.
        let attaching = self.networks_lock().remove(network_key);
        if let Some(mut rx) = attaching {
            let _ =
                tokio::time::timeout(self.opts.start_timeout, rx.wait_for(Option::is_some)).await;
        }
        let net = Self::net_pin(dir);
        kill_pasta(dir, &net).await;
        let root = self.opts.roots_dir.join(container);
        let _ = umount2(&root, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&root);
        let _ = umount2(&dir.join("ns/user"), MntFlags::MNT_DETACH);
        let _ = umount2(&net, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&net);
        // A writable layer that is a subvolume goes with its quota group, whatever it holds.
        disk::remove_upper(dir, "rw");
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("cannot remove {}: {e}", dir.display()))),
        }
    }

    fn runc_cmd(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.opts.runc);
        cmd.arg("--root")
            .arg(&self.opts.runc_root)
            .env_clear()
            .env("PATH", RUNC_PATH)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        cmd
    }

    async fn run_container(
        &self,
        container: &str,
        dir: &Path,
        listener: &std::net::TcpListener,
    ) -> Result<(), BackendError> {
        let console = std::fs::File::create(dir.join("console.log"))
            .map_err(|e| err(format!("cannot create the console log: {e}")))?;
        // Spawned, not forked (see `spawn`): in a session of its own, since the VM must outlive
        // the server's session and its signals, with the agent's socket as fd 3.
        let cmd = (|| {
            let mut cmd = Spawn::new(&self.opts.runc)?;
            cmd.arg("--root")?
                .arg(&self.opts.runc_root)?
                .arg("--log")?
                .arg(dir.join("runc.log"))?
                .arg("run")?
                .arg("--detach")?
                .arg("--bundle")?
                .arg(dir)?
                .arg("--preserve-fds")?
                .arg("1")?
                .arg(container)?
                .env("PATH", RUNC_PATH)?
                .output(console.as_fd())?
                .fd3(listener.as_fd())?;
            std::io::Result::Ok(cmd)
        })()
        .map_err(|e| err(format!("cannot run runc: {e}")))?;
        let status = cmd
            .status()
            .await
            .map_err(|e| err(format!("cannot run runc: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(dir.join("runc.log")).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find_map(runc_msg)
            .unwrap_or_else(|| format!("runc {status}"));
        Err(err(format!("the sandbox did not start: {last}")))
    }
}

/// What pasta needs to attach one VM's network.
struct Network {
    pasta: PathBuf,
    gid: u32,
    netns: PathBuf,
    dir: PathBuf,
    host_ports: Vec<u16>,
}

impl Network {
    /// pasta gives the VM's network namespace an interface with outbound connections made by
    /// ordinary host sockets. `--no-map-gw`: the gateway is not the host's loopback; `-T`: the
    /// VM's own loopback ports of `host_ports` lead to the host's, and no other port does;
    /// `--runas`: its sockets carry the group the egress firewall keeps from the host's addresses.
    async fn attach(self) -> Result<(), String> {
        let dir = &self.dir;
        let log = std::fs::File::create(dir.join("pasta.log"))
            .map_err(|e| format!("cannot create pasta.log: {e}"))?;
        let mut cmd = tokio::process::Command::new(&self.pasta);
        let runas = format!("0:{}", self.gid);
        cmd.args(["--runas", &runas, "--config-net", "--no-map-gw", "-q"])
            .args(["-t", "none", "-u", "none", "-U", "none"]);
        if self.host_ports.is_empty() {
            cmd.args(["-T", "none"]);
        } else {
            let ports: Vec<String> = self.host_ports.iter().map(|p| p.to_string()).collect();
            cmd.arg("-T").arg(ports.join(","));
        }
        cmd.arg("--netns")
            .arg(&self.netns)
            .arg("-P")
            .arg(dir.join("pasta.pid"))
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(false);
        // pasta leaves the server's session itself (it forks into one of its own once the
        // network is up): nothing runs between fork and exec, so it is spawned, not forked.
        let status = cmd
            .status()
            .await
            .map_err(|e| format!("cannot run pasta: {e}"))?;
        // pasta writes its bare pid; ours carries the start time too, so a reused pid is never
        // killed by mistake.
        if let Some(pid) = std::fs::read_to_string(dir.join("pasta.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let _ = crate::process::write_pid_file(&dir.join("pasta.pid"), pid);
        }
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(dir.join("pasta.log")).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .find(|l| !l.contains("syslog") && !l.trim().is_empty())
            .unwrap_or("no message")
            .to_string();
        Err(format!("the VM's network could not be set up: {last}"))
    }
}

/// Kills a VM's pasta. Its pid file carries a start time once `attach` has seen pasta up; a
/// crash in between leaves pasta's own bare pid, which is trusted only if that process is
/// pasta serving this VM's network namespace.
async fn kill_pasta(dir: &Path, netns: &Path) {
    let file = dir.join("pasta.pid");
    if crate::process::read_pid_file(&file).is_some() {
        crate::process::kill_from_pid_file(&file).await;
        return;
    }
    let Some(pid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|a| a == netns.as_os_str().as_encoded_bytes());
    if ours && crate::process::write_pid_file(&file, pid).is_ok() {
        crate::process::kill_from_pid_file(&file).await;
    }
}

fn idmap_marker(dir: &Path) -> bool {
    dir.join(".warmpool-shifted").is_file()
}

/// The message of a runc log line (`time=... level=error msg="..."`), if it is an error.
fn runc_msg(line: &str) -> Option<String> {
    if !line.contains("level=error") && !line.contains("level=fatal") {
        return None;
    }
    let i = line.find("msg=")?;
    Some(
        line[i + 4..]
            .trim()
            .trim_matches('"')
            .replace("\\\"", "\"")
            .to_string(),
    )
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// hostname, hosts, resolv.conf, machine-id and the directories the agent writes to, owned by the VM's root.
fn write_guest_files(
    root: &Path,
    host: &str,
    machine_id: &str,
    ids: IdRange,
) -> std::io::Result<()> {
    let own = |p: &Path| std::os::unix::fs::lchown(p, Some(ids.base), Some(ids.base));
    let write = |rel: &str, text: &str| -> std::io::Result<()> {
        let p = root.join(rel);
        // A link in the image must not send this write elsewhere.
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&p)?;
        }
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        own(&p)
    };
    write("etc/hostname", &format!("{host}\n"))?;
    write(
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
    )?;
    write("etc/resolv.conf", &resolv_conf())?;
    write("etc/machine-id", &format!("{machine_id}\n"))?;
    for d in ["var/log/warmpool", "home", "root"] {
        let p = root.join(d);
        if !p.exists() {
            std::fs::create_dir_all(&p)?;
            own(&p)?;
        }
    }
    Ok(())
}

/// The host's resolvers that a VM can reach: loopback resolvers (a local cache) are not
/// reachable from a VM's own network, so they are left out.
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    for line in host.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("nameserver") {
            let addr = addr.trim();
            if addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
            {
                continue;
            }
        }
        out.push_str(t);
        out.push('\n');
    }
    out
}

#[async_trait]
impl Backend for SandboxBackend {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn supports_goldens(&self) -> bool {
        true
    }

    /// A golden is a filesystem layer: its processes are not kept.
    fn clones_keep_processes(&self) -> bool {
        false
    }

    /// Stops the VM, copies what its setup changed (its writable layer: files, deletions and
    /// ownership, as overlayfs keeps them) into the golden's layer, and destroys the VM. The
    /// layer appears whole or not at all.
    async fn save_golden(&self, vm_id: &str, golden_id: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id)?;
        let golden = self.golden_dir(golden_id)?;
        if golden.exists() {
            return Err(err(format!("golden {golden_id} exists already")));
        }
        // Nothing may write while the layer is copied.
        crate::process::kill_from_pid_file(&dir.join("init.pid")).await;
        let making = self.opts.goldens_dir.join(format!(".{golden_id}"));
        let _ = tokio::fs::remove_dir_all(&making).await;
        tokio::fs::create_dir_all(&making)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", making.display())))?;
        let out = tokio::process::Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(dir.join("rw/upper"))
            .arg(making.join("layer"))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| err(format!("cannot run cp: {e}")))?;
        let saved = if out.status.success() {
            tokio::fs::rename(&making, &golden)
                .await
                .map_err(|e| err(format!("cannot keep golden {golden_id}: {e}")))
        } else {
            Err(err(format!(
                "cannot copy the VM's files into golden {golden_id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        };
        if saved.is_err() {
            let _ = tokio::fs::remove_dir_all(&making).await;
        }
        let destroyed = self.destroy(vm_id).await;
        saved.and(destroyed)
    }

    /// Refused while a VM's root stacks it: overlayfs must not see a lower layer change.
    async fn delete_golden(&self, golden_id: &str) -> Result<(), BackendError> {
        let dir = self.golden_dir(golden_id)?;
        // Its spares go first, and no more are made for it.
        let spares: Vec<Spare> = {
            let mut st = self.spares_lock();
            if st
                .shape
                .as_ref()
                .is_some_and(|s| s.2.as_deref() == Some(golden_id))
            {
                st.shape = None;
            }
            let (gone, keep) = std::mem::take(&mut st.ready)
                .into_iter()
                .partition(|s| s.golden.as_deref() == Some(golden_id));
            st.ready = keep;
            Self::count_spares(&st);
            gone
        };
        for s in spares {
            let _ = self.destroy_spare(&s.container).await;
        }
        if let Some(vm) = self.golden_in_use(&dir.join("layer")) {
            return Err(err(format!("golden {golden_id} is in use by VM {vm}")));
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("cannot remove {}: {e}", dir.display()))),
        }
    }

    async fn list_goldens(&self) -> Result<Vec<String>, BackendError> {
        crate::names_in(&self.opts.goldens_dir, ids::is_instance_id, "goldens").await
    }

    async fn create(&self, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        let dir = self.vm_dir(&spec.vm_id)?;
        let mut started = None;
        if let Some(spare) = self.take_spare(spec) {
            match self.adopt(&spare, spec, &dir).await {
                Ok(h) => started = Some(Ok(h)),
                Err(e) => {
                    tracing::warn!(vm = %spec.vm_id, "a VM started ahead could not be taken ({e}); starting one afresh");
                    let _ = self.destroy(&spec.vm_id).await;
                    let _ = self.destroy_spare(&spare.container).await;
                }
            }
        }
        let started = match started {
            Some(s) => s,
            None => {
                let _afresh = StartingAfresh::new(self);
                self.start(spec, &dir).await
            }
        };
        // After a start afresh, so that the two do not share the CPU.
        self.refill(Some(spec));
        match started {
            Ok(h) => Ok(h),
            Err(mut e) => {
                e.log_tail = self.log_tail(&spec.vm_id).await;
                // A VM that failed to start must not leave anything behind either.
                let _ = self.destroy(&spec.vm_id).await;
                Err(e)
            }
        }
    }

    async fn destroy(&self, vm_id: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id)?;
        let container = container_of(&dir, vm_id);
        self.destroy_dir(&dir, &container, vm_id).await
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        crate::names_in(&self.opts.vms_dir, ids::is_vm_id, "VMs").await
    }

    async fn wait_network(&self, vm_id: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id)?;
        self.wait_network_of(vm_id, &dir).await
    }

    async fn stop(&self) {
        self.spares_lock().stopped = true;
        // A spare being made is let finish (and destroys itself): its runc start, network and
        // agent each have `start_timeout`.
        self.wait_spares(self.opts.start_timeout * 3, |st| !st.making)
            .await;
        let ready = {
            let mut st = self.spares_lock();
            let ready = std::mem::take(&mut st.ready);
            Self::count_spares(&st);
            ready
        };
        for s in ready {
            let _ = self.destroy_spare(&s.container).await;
        }
    }

    fn host_address_for_vm(&self) -> &str {
        // pasta forwards the VM's own loopback ports of `host_ports` to the host's.
        "127.0.0.1"
    }

    fn agent(&self, _vm_id: &str, agent_url: &str, token: &str) -> Arc<dyn Agent> {
        Arc::new(HttpAgent::new(self.client.clone(), agent_url, token))
    }

    async fn log_tail(&self, vm_id: &str) -> Option<String> {
        let dir = self.vm_dir(vm_id).ok()?;
        let mut text = String::new();
        for f in ["console.log", "runc.log", "pasta.log"] {
            if let Ok(t) = tokio::fs::read_to_string(dir.join(f)).await {
                let t: String = t
                    .lines()
                    .filter(|l| !l.contains("to syslog"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                text.push_str(&t);
            }
        }
        let tail = tail_lines(&text, 20);
        (!tail.is_empty()).then_some(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_recognised_and_found() {
        let c = new_container_id();
        assert!(is_container_id(&c), "{c}");
        for bad in [
            "",
            "sp-",
            "vm-abc",
            "sp-../../etc",
            &c.to_uppercase(),
            &format!("{c}x"),
        ] {
            assert!(!is_container_id(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        // A VM started by an older server has no `container` file: its container is its id.
        assert_eq!(container_of(dir.path(), "vm-old"), "vm-old");
        std::fs::write(dir.path().join("container"), format!("{c}\n")).unwrap();
        assert_eq!(container_of(dir.path(), "vm-new"), c);
        // Anything else in the file is not trusted as a name (it becomes paths).
        std::fs::write(dir.path().join("container"), "../../etc").unwrap();
        assert_eq!(container_of(dir.path(), "vm-new"), "vm-new");
    }
}
