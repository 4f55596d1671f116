//! `qemu`: real virtual machines. Each VM is a QEMU process (KVM when it works, TCG otherwise)
//! booting the Debian cloud kernel with the guest rootfs as a copy-on-write qcow2 overlay over one
//! shared ext4 base disk. Its network reaches the outside but nothing of the host except its git
//! mirror; the agent is reached through a port forwarded on the host (see [`net`]).
//!
//! Making a VM is nearly free once a *golden* exists: a prepared VM frozen into an immutable
//! artifact (its RAM file, its device state, its disk as a read-only layer). A clone maps the
//! golden's RAM privately (copy-on-write: unchanged pages stay shared), gets its own disk overlay,
//! loads the device state and runs on — then gets its own identity (token, hostname, machine id,
//! clock, entropy). The backend keeps one golden per image (a booted guest) for every new VM, and
//! saves more on request (a pool's fully set-up VM). Cold boots remain the fallback.
//!
//! A new VM need not even wait for that: a few clones of the goldens clones were last made from
//! are made ahead of need, and it takes one (see [`ready`]).
//!
//! Layout: `<vms-dir>/<vm-id>/{disk.qcow2, ram?, qmp.sock, console.log, qemu.log, vm.json, qemu.pid,
//! passt.pid, passt.log}`, `<ready-dir>/qs-…/` the same for a clone started ahead,
//! `<goldens-dir>/<golden-id>/{ram, state, disk.qcow2, golden.json}`.

pub mod guest;
pub mod net;
mod qmp;
pub mod ready;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use warmpool_types::agent::IdentityRequest;
use warmpool_types::ids;

use crate::agent_client::HttpAgent;
use crate::image::GuestImage;
use crate::process;
use crate::{tail_lines, Agent, AgentCallError, Backend, BackendError, VmHandle, VmSpec};
use guest::GuestFiles;
use qmp::Qmp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Probe KVM with a short boot; fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct QemuOptions {
    pub vms_dir: PathBuf,
    /// Where clones started ahead of need wait; on the filesystem of `vms_dir` (a new VM takes
    /// one by renaming its directory).
    pub ready_dir: PathBuf,
    /// How many clones are kept started ahead (0: none).
    pub spares: usize,
    pub goldens_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub agent_bin: PathBuf,
    pub accel: Accel,
    /// Per boot attempt, until the agent answers.
    pub boot_timeout: Duration,
    pub boot_attempts: u32,
}

/// How a QEMU process runs: everything a clone must repeat exactly to load a golden's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Machine {
    kernel: PathBuf,
    initrd: PathBuf,
    append: String,
    memory_mb: u32,
    cpus: u32,
    accel: String,
    /// The network layout ([`net::LAYOUT`]); 0: a golden from before layouts had versions.
    #[serde(default)]
    net: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GoldenMeta {
    id: String,
    machine: Machine,
    /// The agent token inside the golden: clones answer to it until given their own.
    token: String,
    created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmMeta {
    port: u16,
    token: String,
    machine: Machine,
    golden: Option<String>,
    /// Where its RAM lives when it is a golden builder (saved with the golden).
    ram: Option<PathBuf>,
}

enum Ram<'a> {
    Anonymous,
    /// A file this VM writes to (it will become a golden's RAM).
    Shared(&'a Path),
    /// A golden's RAM, mapped privately: pages are copied on write.
    Private(&'a Path),
}

pub struct QemuBackend {
    opts: QemuOptions,
    image: Arc<GuestImage>,
    guest: tokio::sync::Mutex<Option<GuestFiles>>,
    accel: tokio::sync::Mutex<Option<&'static str>>,
    /// Base goldens by machine size (memory MiB, vCPUs): a clone must be the golden's size.
    base_goldens: tokio::sync::Mutex<HashMap<(u32, u32), String>>,
    base_golden_failed: Mutex<HashMap<(u32, u32), Instant>>,
    /// VMs being made into base goldens: the backend's own, never listed as VMs (the server
    /// would destroy them as VMs no instance owns).
    base_builders: Mutex<std::collections::HashSet<String>>,
    client: reqwest::Client,
    passt: PathBuf,
    /// Whether the firewall also guards IPv6, so guests may have it.
    ipv6: bool,
    ready: Mutex<ready::ReadyState>,
    ready_changed: tokio::sync::Notify,
    me: std::sync::Weak<QemuBackend>,
}

fn err(m: impl Into<String>) -> BackendError {
    BackendError::new(m)
}

/// Where agents' ports are forwarded on the host. Not 127.0.0.1, where other services of the host
/// listen. No guest reaches any address of the host (see [`net`]), so none reaches another VM's
/// agent — least of all a fresh clone's, which still answers to its golden's token for a few
/// milliseconds.
pub const AGENT_HOST: &str = "127.0.0.2";

fn free_port() -> Result<u16, BackendError> {
    let l = std::net::TcpListener::bind((AGENT_HOST, 0))
        .map_err(|e| err(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| err(e.to_string()))?.port())
}

/// A VM's (memory MiB, vCPUs) from its resources.
fn machine_size(r: &crate::Resources) -> (u32, u32) {
    (r.memory_mb.min(u32::MAX as u64) as u32, r.cpus.max(1))
}

impl QemuBackend {
    pub fn new(opts: QemuOptions, image: Arc<GuestImage>) -> Result<Arc<Self>, String> {
        for d in [&opts.vms_dir, &opts.ready_dir, &opts.goldens_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        if crate::image::find_program("qemu-system-x86_64").is_none() {
            return Err("qemu-system-x86_64 is not installed; install it with `apt-get install -y qemu-system-x86 qemu-utils` (the qemu backend needs it)".into());
        }
        if crate::image::find_program("qemu-img").is_none() {
            return Err(
                "qemu-img is not installed; install it with `apt-get install -y qemu-utils`".into(),
            );
        }
        let passt = crate::image::find_program("passt").ok_or(
            "passt is not installed; install it with `apt-get install -y passt` (it gives qemu guests their outbound network)",
        )?;
        let ipv6 = net::ensure_firewall()?;
        Ok(Arc::new_cyclic(|me| Self {
            opts,
            image,
            guest: tokio::sync::Mutex::new(None),
            accel: tokio::sync::Mutex::new(None),
            base_goldens: tokio::sync::Mutex::new(HashMap::new()),
            base_golden_failed: Mutex::new(HashMap::new()),
            base_builders: Mutex::new(Default::default()),
            client: HttpAgent::default_client(),
            passt,
            ipv6,
            ready: Mutex::new(ready::ReadyState::default()),
            ready_changed: tokio::sync::Notify::new(),
            me: me.clone(),
        }))
    }

    fn vm_dir(&self, vm_id: &str) -> Result<PathBuf, BackendError> {
        if !ids::is_vm_id(vm_id) {
            return Err(err(format!("`{vm_id}` is not a VM id")));
        }
        Ok(self.opts.vms_dir.join(vm_id))
    }

    /// Base goldens depend only on the guest build, so they live in the cache and are shared by
    /// every server on the machine; the others are a server's own.
    fn golden_dir(&self, golden_id: &str) -> Result<PathBuf, BackendError> {
        let ok = !golden_id.is_empty()
            && golden_id.len() <= 80
            && golden_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(err(format!("`{golden_id}` is not a golden id")));
        }
        Ok(if golden_id.starts_with("base-") {
            self.opts
                .cache_dir
                .join("qemu")
                .join("goldens")
                .join(golden_id)
        } else {
            self.opts.goldens_dir.join(golden_id)
        })
    }

    /// Kernel, initramfs and base disk, built on first use.
    async fn guest(&self) -> Result<GuestFiles, BackendError> {
        let mut g = self.guest.lock().await;
        if let Some(files) = g.as_ref() {
            return Ok(files.clone());
        }
        let rootfs = self
            .image
            .rootfs()
            .await
            .map_err(|e| err(format!("the guest image is not available: {e}")))?;
        let (cache, agent) = (self.opts.cache_dir.clone(), self.opts.agent_bin.clone());
        let files = tokio::task::spawn_blocking(move || guest::ensure(&cache, &rootfs, &agent))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(format!("cannot prepare the guest: {e}")))?;
        *g = Some(files.clone());
        Ok(files)
    }

    /// The machine of a VM: its size is the project's resources (`-m`, `-smp`).
    fn machine(
        &self,
        files: &GuestFiles,
        accel: &str,
        token: &str,
        hostname: &str,
        size: (u32, u32),
    ) -> Machine {
        Machine {
            kernel: files.kernel.clone(),
            initrd: files.initrd.clone(),
            append: format!(
                "console=ttyS0 root=/dev/vda rw quiet panic=-1 warmpool.hostname={hostname} warmpool.token={token}"
            ),
            memory_mb: size.0,
            cpus: size.1,
            accel: accel.to_string(),
            net: net::LAYOUT,
        }
    }

    /// Starts QEMU and its passt for a VM whose directory and disk are ready. `host_ports`: the
    /// host's loopback ports the guest may reach at [`net::MIRROR_ADDR`].
    async fn spawn(
        &self,
        dir: &Path,
        machine: &Machine,
        ram: Ram<'_>,
        port: u16,
        host_ports: &[u16],
        incoming: bool,
    ) -> Result<(), BackendError> {
        let mut args: Vec<String> = vec![
            "-name".into(),
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("vm")
                .into(),
            "-cpu".into(),
            "max".into(),
            "-m".into(),
            format!("{}M", machine.memory_mb),
            "-smp".into(),
            machine.cpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", dir.join("console.log").display()),
            "-kernel".into(),
            machine.kernel.display().to_string(),
            "-initrd".into(),
            machine.initrd.display().to_string(),
            "-append".into(),
            machine.append.clone(),
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2",
                dir.join("disk.qcow2").display()
            ),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
        ];
        // A small translation cache: TCG's default 1 GiB would dominate each VM's memory.
        let accel = if machine.accel == "kvm" {
            "kvm"
        } else {
            "tcg,tb-size=32"
        };
        args.extend(["-accel".into(), accel.into()]);
        match ram {
            Ram::Anonymous => args.extend(["-machine".into(), "pc".into()]),
            Ram::Shared(p) | Ram::Private(p) => {
                let share = if matches!(ram, Ram::Shared(_)) {
                    "on"
                } else {
                    "off"
                };
                args.extend([
                    "-object".into(),
                    format!(
                        "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
                        machine.memory_mb,
                        p.display()
                    ),
                    "-machine".into(),
                    "pc,memory-backend=mem".into(),
                ]);
            }
        }
        args.extend(net::qemu_args(
            AGENT_HOST,
            port,
            guest::AGENT_PORT,
            host_ports,
        ));
        if incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        let (qemu_end, passt_end) = net::link()?;
        net::spawn_passt(&self.passt, dir, passt_end, self.ipv6)?;
        let log = std::fs::File::create(dir.join("qemu.log")).map_err(|e| err(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| err(e.to_string()))?;
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(false);
        // Its own session: a signal to the server's process group never reaches the VM.
        let link = std::os::fd::AsRawFd::as_raw_fd(&qemu_end);
        // SAFETY: setsid, fcntl and dup2 are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                net::inherit_as_link(link)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start qemu: {e}")))?;
        // QEMU holds the link now; passt ends when QEMU does.
        drop(qemu_end);
        let pid = child.id().unwrap_or(0) as i32;
        process::write_pid_file(&dir.join("qemu.pid"), pid).map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    fn qemu_alive(dir: &Path) -> bool {
        process::read_pid_file(&dir.join("qemu.pid"))
            .is_some_and(|(pid, start)| process::alive(pid, start))
    }

    /// Waits until the agent answers `token`, or QEMU dies, or the time is up.
    async fn wait_agent(
        &self,
        dir: &Path,
        port: u16,
        token: &str,
        limit: Duration,
    ) -> Result<(), BackendError> {
        let agent = HttpAgent::new(
            self.client.clone(),
            &format!("http://{AGENT_HOST}:{port}"),
            token,
        );
        let deadline = Instant::now() + limit;
        loop {
            // Slirp accepts the connection before the guest listens: only an answer counts.
            if agent.health().await.is_ok() {
                return Ok(());
            }
            if !Self::qemu_alive(dir) {
                let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
                return Err(err(format!(
                    "qemu exited during boot: {}",
                    tail_lines(&log, 3).trim()
                )));
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "the VM's agent did not answer within {} s",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<(), BackendError> {
        let out = tokio::process::Command::new("qemu-img")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| err(format!("cannot run qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "qemu-img failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    async fn overlay(
        disk: &Path,
        backing: &Path,
        backing_format: &str,
    ) -> Result<(), BackendError> {
        Self::qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            "-F".as_ref(),
            backing_format.as_ref(),
            disk.as_os_str(),
        ])
        .await
    }

    fn write_meta(dir: &Path, meta: &VmMeta) -> Result<(), BackendError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("vm.json"))
            .map_err(|e| err(e.to_string()))?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(meta).unwrap_or_default())
            .map_err(|e| err(e.to_string()))
    }

    fn read_meta(dir: &Path) -> Result<VmMeta, BackendError> {
        let text = std::fs::read_to_string(dir.join("vm.json"))
            .map_err(|e| err(format!("the VM has no metadata: {e}")))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    fn read_golden(&self, golden_id: &str) -> Result<(PathBuf, GoldenMeta), BackendError> {
        let dir = self.golden_dir(golden_id)?;
        let text = std::fs::read_to_string(dir.join("golden.json"))
            .map_err(|_| err(format!("no golden {golden_id}")))?;
        Ok((
            dir,
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?,
        ))
    }

    /// The accelerator: KVM if asked for or if it boots a guest in time when `auto`, else TCG.
    async fn accel(&self, files: &GuestFiles) -> &'static str {
        let mut a = self.accel.lock().await;
        if let Some(v) = *a {
            return v;
        }
        let chosen = match self.opts.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto if !Path::new("/dev/kvm").exists() => "tcg",
            Accel::Auto => {
                // Nested KVM can hang right after the firmware: only a guest that answers counts.
                let probe = self
                    .cold_boot_once(
                        files,
                        "kvm",
                        &VmSpec {
                            vm_id: ids::new_vm_id(),
                            agent_token: ids::random_secret(32),
                            ..VmSpec::default()
                        },
                        Ram::Anonymous,
                        Duration::from_secs(20),
                    )
                    .await;
                match probe {
                    Ok(vm) => {
                        let _ = self.destroy(&vm).await;
                        "kvm"
                    }
                    Err((vm, e)) => {
                        let _ = self.destroy(&vm).await;
                        tracing::info!("KVM does not boot a guest here ({e}); using TCG");
                        "tcg"
                    }
                }
            }
        };
        tracing::info!(accel = chosen, "qemu accelerator");
        *a = Some(chosen);
        chosen
    }

    /// Boots a fresh VM from the kernel once; on failure answers the VM id to clean up.
    async fn cold_boot_once(
        &self,
        files: &GuestFiles,
        accel: &str,
        spec: &VmSpec,
        ram: Ram<'_>,
        limit: Duration,
    ) -> Result<String, (String, BackendError)> {
        let (vm_id, token) = (spec.vm_id.as_str(), spec.agent_token.as_str());
        let fail = |e: BackendError| (vm_id.to_string(), e);
        let dir = self.vm_dir(vm_id).map_err(fail)?;
        std::fs::create_dir_all(&dir).map_err(|e| fail(err(e.to_string())))?;
        Self::overlay(&dir.join("disk.qcow2"), &files.base_disk, "raw")
            .await
            .map_err(fail)?;
        let port = free_port().map_err(fail)?;
        let machine = self.machine(files, accel, token, vm_id, machine_size(&spec.resources));
        let ram_path = match &ram {
            Ram::Shared(p) => Some(p.to_path_buf()),
            _ => None,
        };
        Self::write_meta(
            &dir,
            &VmMeta {
                port,
                token: token.to_string(),
                machine: machine.clone(),
                golden: None,
                ram: ram_path,
            },
        )
        .map_err(fail)?;
        self.spawn(&dir, &machine, ram, port, &spec.host_ports, false)
            .await
            .map_err(fail)?;
        self.wait_agent(&dir, port, token, limit)
            .await
            .map_err(fail)?;
        Ok(vm_id.to_string())
    }

    /// A cold boot, retried: boots can hang (the notes saw it), each is bounded.
    async fn cold_boot(&self, spec: &VmSpec, shared_ram: bool) -> Result<VmHandle, BackendError> {
        let files = self.guest().await?;
        let accel = self.accel(&files).await;
        let dir = self.vm_dir(&spec.vm_id)?;
        let mut last = err("no boot attempted");
        for attempt in 1..=self.opts.boot_attempts.max(1) {
            let ram_file = dir.join("ram");
            let ram = if shared_ram {
                Ram::Shared(&ram_file)
            } else {
                Ram::Anonymous
            };
            match self
                .cold_boot_once(&files, accel, spec, ram, self.opts.boot_timeout)
                .await
            {
                Ok(_) => {
                    let meta = Self::read_meta(&dir)?;
                    return Ok(VmHandle {
                        agent_url: format!("http://{AGENT_HOST}:{}", meta.port),
                        ..Default::default()
                    });
                }
                Err((_, e)) => {
                    tracing::warn!(vm = %spec.vm_id, attempt, "boot failed: {e}");
                    last = e;
                    last.log_tail = self.log_tail(&spec.vm_id).await;
                    self.kill_and_clear(&dir).await;
                }
            }
        }
        Err(last)
    }

    async fn kill_and_clear(&self, dir: &Path) {
        Self::kill_and_remove(dir).await;
    }

    /// Starts `vm_id` from golden `golden_id` and gives it its own identity: a clone of it
    /// started ahead when one is ready, else one made now.
    async fn clone_from(&self, golden_id: &str, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        let (gdir, meta) = self.read_golden(golden_id)?;
        if meta.machine.net != net::LAYOUT {
            return Err(err(format!(
                "golden {golden_id} was made with another network layout; it cannot be cloned"
            )));
        }
        let dir = self.vm_dir(&spec.vm_id)?;
        let shape = (golden_id.to_string(), spec.host_ports.clone());
        // A golden builder writes to a memory of its own: no process started ahead has one.
        let ready = if spec.golden_builder {
            None
        } else {
            self.take_ready(&shape).await
        };
        let res = match ready {
            Some(r) => {
                let name = r.name.clone();
                match self.clone_on_ready(r, &meta, &dir, spec).await {
                    Ok(h) => Ok(h),
                    Err(e) => {
                        // The VM is a clone made now instead.
                        tracing::warn!(vm = %spec.vm_id, clone = %name, "a clone started ahead could not become the VM ({e}); making one");
                        self.kill_and_clear(&dir).await;
                        self.clone_afresh(golden_id, &gdir, &meta, &dir, spec).await
                    }
                }
            }
            None => self.clone_afresh(golden_id, &gdir, &meta, &dir, spec).await,
        };
        if res.is_ok() && !spec.golden_builder {
            self.cloned(shape);
        }
        res
    }

    /// Makes `r` — a clone of this golden started ahead, running — the VM of `spec`.
    async fn clone_on_ready(
        &self,
        r: ready::Ready,
        meta: &GoldenMeta,
        dir: &Path,
        spec: &VmSpec,
    ) -> Result<VmHandle, BackendError> {
        // First, so that from here on the VM's own destroy removes everything.
        let from = self.opts.ready_dir.join(&r.name);
        if let Err(e) = tokio::fs::rename(&from, dir).await {
            Self::kill_and_remove(&from).await;
            return Err(err(format!("cannot move the VM's directory: {e}")));
        }
        Self::write_meta(
            dir,
            &VmMeta {
                port: r.port,
                token: meta.token.clone(),
                machine: meta.machine.clone(),
                golden: Some(meta.id.clone()),
                ram: None,
            },
        )?;
        let h = self.take_identity(meta, dir, r.port, spec).await?;
        Ok(VmHandle {
            started_ahead: true,
            ..h
        })
    }

    /// Starts a QEMU process for the VM of `spec`, loads `golden_id`'s state into it and gives it
    /// its identity.
    async fn clone_afresh(
        &self,
        golden_id: &str,
        gdir: &Path,
        meta: &GoldenMeta,
        dir: &Path,
        spec: &VmSpec,
    ) -> Result<VmHandle, BackendError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| err(e.to_string()))?;
        Self::overlay(&dir.join("disk.qcow2"), &gdir.join("disk.qcow2"), "qcow2").await?;
        let port = free_port()?;
        // A golden builder writes to a copy of the golden's memory that will be its own golden's.
        let own_ram = spec.golden_builder.then(|| dir.join("ram"));
        if let Some(r) = &own_ram {
            let out = tokio::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(gdir.join("ram"))
                .arg(r)
                .output()
                .await
                .map_err(|e| err(e.to_string()))?;
            if !out.status.success() {
                return Err(err("cannot copy the golden's memory"));
            }
        }
        Self::write_meta(
            dir,
            &VmMeta {
                port,
                token: meta.token.clone(),
                machine: meta.machine.clone(),
                golden: Some(golden_id.to_string()),
                ram: own_ram.clone(),
            },
        )?;
        let golden_ram = gdir.join("ram");
        let ram = match &own_ram {
            Some(r) => Ram::Shared(r),
            None => Ram::Private(&golden_ram),
        };
        self.spawn(dir, &meta.machine, ram, port, &spec.host_ports, true)
            .await?;
        let qmp = Self::qmp_ignoring_shared(dir).await?;
        Self::load_state(qmp, gdir).await?;
        self.take_identity(meta, dir, port, spec).await
    }

    /// Connects to a VM's QMP with `x-ignore-shared` on: a golden's state leaves its memory out
    /// (the memory file is the golden's), and both the saving and the loading side must say so.
    async fn qmp_ignoring_shared(dir: &Path) -> Result<Qmp, BackendError> {
        let mut qmp = Qmp::connect(&dir.join("qmp.sock"), Duration::from_secs(10))
            .await
            .map_err(err)?;
        qmp.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )
        .await
        .map_err(err)?;
        Ok(qmp)
    }

    /// Loads the golden's device state into a QEMU process waiting for it (`-incoming defer`,
    /// `x-ignore-shared` set) and runs it on: the golden's twin until it takes an identity.
    async fn load_state(mut qmp: Qmp, gdir: &Path) -> Result<(), BackendError> {
        qmp.execute(
            "migrate-incoming",
            json!({"uri": format!("exec:cat {}", gdir.join("state").display())}),
        )
        .await
        .map_err(err)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = qmp.status().await.map_err(err)?;
            if status != "inmigrate" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(err("loading the golden's state did not finish within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        qmp.execute("cont", json!({})).await.map_err(err)?;
        Ok(())
    }

    /// Gives a running clone (still answering to its golden's token) the identity of the VM of
    /// `spec`: its token, hostname, machine id, the host's clock and fresh entropy.
    async fn take_identity(
        &self,
        meta: &GoldenMeta,
        dir: &Path,
        port: u16,
        spec: &VmSpec,
    ) -> Result<VmHandle, BackendError> {
        let url = format!("http://{AGENT_HOST}:{port}");
        let agent = HttpAgent::new(self.client.clone(), &url, &meta.token);
        let identity = IdentityRequest {
            token: spec.agent_token.clone(),
            hostname: spec.vm_id.clone(),
            machine_id: crate::random_hex(16),
            time_ms: Some(warmpool_types::time::now_ms()),
            entropy: Some(crate::random_hex(64)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match agent.set_identity(&identity).await {
                Ok(()) => break,
                Err(AgentCallError::Unreachable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(err(format!("cannot give the clone its identity: {e}"))),
            }
        }
        let mut vm_meta = Self::read_meta(dir)?;
        vm_meta.token = spec.agent_token.clone();
        Self::write_meta(dir, &vm_meta)?;
        Ok(VmHandle {
            agent_url: url,
            ..Default::default()
        })
    }

    /// Boots a VM from the kernel, never from a golden (what clones are measured against).
    pub async fn create_cold(&self, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        let res = self.cold_boot(spec, false).await;
        if res.is_err() {
            let _ = self.destroy(&spec.vm_id).await;
        }
        res
    }

    /// Makes sure the base golden of VMs of `resources`' size exists (building it if needed);
    /// its id.
    pub async fn prepare_base_golden(&self, resources: &crate::Resources) -> Option<String> {
        self.base_golden(machine_size(resources)).await
    }

    /// The host pid of a VM's QEMU process.
    pub fn qemu_pid(&self, vm_id: &str) -> Option<i32> {
        let dir = self.vm_dir(vm_id).ok()?;
        process::read_pid_file(&dir.join("qemu.pid")).map(|(pid, _)| pid)
    }

    /// The golden every new VM of a size is cloned from: a booted guest, built once per guest
    /// build and size.
    async fn base_golden(&self, size: (u32, u32)) -> Option<String> {
        let mut g = self.base_goldens.lock().await;
        if let Some(id) = g.get(&size) {
            return Some(id.clone());
        }
        // After a failed build, boot cold for a while instead of failing every create.
        if self
            .base_golden_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&size)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(600))
        {
            return None;
        }
        let files = self.guest().await.ok()?;
        let accel = self.accel(&files).await;
        let machine = self.machine(&files, accel, "x", "x", size);
        let key = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(format!(
                "{:?}{:?}{:?}{}{}{}{}",
                machine.kernel,
                machine.initrd,
                files.base_disk,
                machine.memory_mb,
                machine.cpus,
                accel,
                machine.net
            )))
        };
        let id = format!("base-{}", &key[..16]);
        let lock_dir = self.opts.cache_dir.join("qemu").join("goldens");
        let _ = std::fs::create_dir_all(&lock_dir);
        // Servers on one machine share base goldens: one builds, the others wait and use it.
        let lock_path = lock_dir.join(".build.lock");
        let _lock = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::create(lock_path).ok()?;
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok()
        })
        .await
        .ok()
        .flatten();
        if self.read_golden(&id).is_err() {
            let started = Instant::now();
            let vm_id = ids::new_vm_id();
            let spec = VmSpec {
                vm_id: vm_id.clone(),
                agent_token: ids::random_secret(40),
                from_golden: None,
                golden_builder: true,
                resources: crate::Resources {
                    memory_mb: size.0 as u64,
                    cpus: size.1,
                    ..Default::default()
                },
                ..VmSpec::default()
            };
            let builders = || self.base_builders.lock().unwrap_or_else(|p| p.into_inner());
            builders().insert(vm_id.clone());
            let res = match self.cold_boot(&spec, true).await {
                Ok(_) => self.save_golden(&vm_id, &id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::warn!("cannot build the base golden (VMs boot cold meanwhile): {e}");
                let _ = self.destroy(&vm_id).await;
                builders().remove(&vm_id);
                self.base_golden_failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(size, Instant::now());
                return None;
            }
            builders().remove(&vm_id);
            tracing::info!(golden = %id, ms = started.elapsed().as_millis() as u64, "built the base golden");
        }
        g.insert(size, id.clone());
        Some(id)
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn create(&self, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        let golden = match &spec.from_golden {
            Some(g) => Some(g.clone()),
            None => self.base_golden(machine_size(&spec.resources)).await,
        };
        let res = match &golden {
            Some(g) => match self.clone_from(g, spec).await {
                Ok(h) => Ok(h),
                Err(e) if spec.from_golden.is_none() => {
                    // The base golden is an optimisation: fall back to a cold boot.
                    tracing::warn!(vm = %spec.vm_id, "cloning the base golden failed ({e}); booting cold");
                    self.kill_and_clear(&self.vm_dir(&spec.vm_id)?).await;
                    self.cold_boot(spec, spec.golden_builder).await
                }
                Err(e) => Err(e),
            },
            None => self.cold_boot(spec, spec.golden_builder).await,
        };
        match res {
            Ok(h) => Ok(h),
            Err(mut e) => {
                if e.log_tail.is_none() {
                    e.log_tail = self.log_tail(&spec.vm_id).await;
                }
                let _ = self.destroy(&spec.vm_id).await;
                Err(e)
            }
        }
    }

    async fn destroy(&self, vm_id: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id)?;
        self.kill_and_clear(&dir).await;
        if dir.exists() {
            return Err(err(format!("cannot remove {}", dir.display())));
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        let mut vms = crate::names_in(&self.opts.vms_dir, ids::is_vm_id, "VMs").await?;
        let building = self.base_builders.lock().unwrap_or_else(|p| p.into_inner());
        vms.retain(|v| !building.contains(v));
        Ok(vms)
    }

    fn host_address_for_vm(&self) -> &str {
        // Forwarded to the host's loopback, for the VM's `host_ports` only.
        net::MIRROR_ADDR
    }

    fn agent(&self, _vm_id: &str, agent_url: &str, token: &str) -> Arc<dyn Agent> {
        Arc::new(HttpAgent::new(self.client.clone(), agent_url, token))
    }

    async fn log_tail(&self, vm_id: &str) -> Option<String> {
        let dir = self.vm_dir(vm_id).ok()?;
        let text = tokio::fs::read_to_string(dir.join("console.log"))
            .await
            .ok()?;
        let tail = tail_lines(&text, 20);
        (!tail.is_empty()).then_some(tail)
    }

    fn supports_goldens(&self) -> bool {
        true
    }

    async fn save_golden(&self, vm_id: &str, golden_id: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id)?;
        let dest = self.golden_dir(golden_id)?;
        let meta = Self::read_meta(&dir)?;
        let ram = meta.ram.clone().ok_or_else(|| {
            err("the VM was not made to become a golden (its memory is not in a file)")
        })?;
        let parent = dest.parent().ok_or_else(|| err("no goldens dir"))?;
        let tmp = parent.join(format!(".{golden_id}.tmp-{}", ids::random_secret(8)));
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut qmp = Self::qmp_ignoring_shared(&dir).await?;
        qmp.execute("stop", json!({})).await.map_err(err)?;
        qmp.execute(
            "migrate",
            json!({"uri": format!("exec:cat > {}", tmp.join("state").display())}),
        )
        .await
        .map_err(err)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = qmp.execute("query-migrate", json!({})).await.map_err(err)?;
            match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(err(format!(
                        "saving the VM failed: {}",
                        r.get("error-desc")
                            .and_then(|s| s.as_str())
                            .unwrap_or("unknown")
                    )))
                }
                _ if Instant::now() >= deadline => {
                    return Err(err("saving the VM did not finish within 120 s"))
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let _ = qmp.execute("quit", json!({})).await;
        drop(qmp);
        process::kill_from_pid_file(&dir.join("qemu.pid")).await;
        process::kill_from_pid_file(&dir.join("passt.pid")).await;
        // One immutable artifact: memory, device state, the disk as it was, and how it ran.
        for (from, to) in [
            (ram, tmp.join("ram")),
            (dir.join("disk.qcow2"), tmp.join("disk.qcow2")),
        ] {
            tokio::fs::rename(&from, &to)
                .await
                .map_err(|e| err(format!("cannot move {}: {e}", from.display())))?;
        }
        let g = GoldenMeta {
            id: golden_id.to_string(),
            machine: meta.machine.clone(),
            token: meta.token.clone(),
            created_at: warmpool_types::time::fmt_ms(warmpool_types::time::now_ms()),
        };
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(tmp.join("golden.json"))
                .map_err(|e| err(e.to_string()))?;
            std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(&g).unwrap_or_default())
                .map_err(|e| err(e.to_string()))?;
        }
        for f in ["ram", "state", "disk.qcow2"] {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(tmp.join(f), std::fs::Permissions::from_mode(0o444));
        }
        let moved = tokio::fs::rename(&tmp, &dest).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        match moved {
            Ok(()) => Ok(()),
            // Another server saved the same base golden first: theirs is as good.
            Err(_) if golden_id.starts_with("base-") && dest.join("golden.json").is_file() => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                Ok(())
            }
            Err(e) => Err(err(format!("cannot move the golden into place: {e}"))),
        }
    }

    async fn delete_golden(&self, golden_id: &str) -> Result<(), BackendError> {
        let dir = self.golden_dir(golden_id)?;
        // Processes started ahead for it map its memory.
        self.forget_ready(golden_id).await;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("cannot remove {}: {e}", dir.display()))),
        }
    }

    async fn stop(&self) {
        self.stop_ready().await;
    }

    async fn list_goldens(&self) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.opts.goldens_dir)
            .await
            .map_err(|e| err(e.to_string()))?;
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().to_string();
            // Base goldens belong to the backend itself.
            if !name.starts_with('.') && !name.starts_with("base-") {
                out.push(name);
            }
        }
        Ok(out)
    }
}
