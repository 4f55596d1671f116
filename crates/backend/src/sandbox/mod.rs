//! `sandbox`: each VM is a set of Linux namespaces (mount, pid, uts, ipc) whose root is an overlay
//! over the shared guest image, with its own /home, /tmp, /proc and /dev, hostname = its id, and
//! nothing of the host's filesystem visible. It starts in milliseconds and needs root. It shares the
//! host's kernel and network, so it is **not** a security boundary between tenants.
//!
//! Layout: `<vms-dir>/<vm-id>/{upper,work,merged,console.log,init.pid}`. The VM's processes keep
//! running if the server dies; `list` finds them again from the directories.

pub mod init;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use warmpool_types::agent::TOKEN_ENV;
use warmpool_types::ids;

use crate::agent_client::HttpAgent;
use crate::image::GuestImage;
use crate::{tail_lines, Agent, Backend, BackendError, VmHandle, VmSpec};

pub struct SandboxOptions {
    /// Where VM directories live (`<data-dir>/vms`).
    pub vms_dir: PathBuf,
    /// The overlay layer with this server's agent build, stacked above the image.
    pub agent_layer: PathBuf,
    /// The binary that understands `__sandbox-init` (the `warmpool` executable).
    pub init_exe: PathBuf,
    /// How long the VM may take to come up to the point of starting its agent.
    pub start_timeout: Duration,
}

pub struct SandboxBackend {
    opts: SandboxOptions,
    image: Arc<GuestImage>,
    client: reqwest::Client,
}

impl SandboxBackend {
    pub fn new(opts: SandboxOptions, image: Arc<GuestImage>) -> Result<Self, String> {
        std::fs::create_dir_all(&opts.vms_dir)
            .map_err(|e| format!("cannot create {}: {e}", opts.vms_dir.display()))?;
        Ok(Self {
            opts,
            image,
            client: HttpAgent::default_client(),
        })
    }

    fn vm_dir(&self, vm_id: &str) -> Result<PathBuf, BackendError> {
        // The id becomes a path: only our own id shape may get there.
        if !ids::is_vm_id(vm_id) {
            return Err(BackendError::new(format!("`{vm_id}` is not a VM id")));
        }
        Ok(self.opts.vms_dir.join(vm_id))
    }

    async fn start(&self, spec: &VmSpec, dir: &Path) -> Result<VmHandle, BackendError> {
        let rootfs = self
            .image
            .rootfs()
            .await
            .map_err(|e| BackendError::new(format!("the guest image is not available: {e}")))?;
        for sub in ["upper", "work", "merged"] {
            tokio::fs::create_dir_all(dir.join(sub))
                .await
                .map_err(|e| {
                    BackendError::new(format!("cannot create {}: {e}", dir.join(sub).display()))
                })?;
        }
        // Bind the agent's socket here so its port is known now and nobody else can take it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| BackendError::new(format!("cannot bind the agent port: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| BackendError::new(e.to_string()))?
            .port();
        let console = std::fs::File::create(dir.join("console.log"))
            .map_err(|e| BackendError::new(format!("cannot create the console log: {e}")))?;
        let mut cmd = tokio::process::Command::new(&self.opts.init_exe);
        cmd.arg("__sandbox-init")
            .arg("--vm-dir")
            .arg(dir)
            .arg("--lower")
            .arg(&self.opts.agent_layer)
            .arg("--lower")
            .arg(&rootfs)
            .arg("--hostname")
            .arg(&spec.vm_id)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env(TOKEN_ENV, &spec.agent_token)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(console)
            .kill_on_drop(false);
        let fd = listener.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if fd == init::AGENT_FD {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(fd, init::AGENT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| BackendError::new(format!("cannot start the sandbox: {e}")))?;
        drop(cmd);
        drop(listener);
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = tokio::time::timeout(
            self.opts.start_timeout,
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        // Reap the launcher whenever it ends (it lives as long as the VM).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match read {
            Ok(Ok(_)) if line.starts_with("ready ") => Ok(VmHandle {
                agent_url: format!("http://127.0.0.1:{port}"),
            }),
            Ok(_) => {
                let msg = line.trim().strip_prefix("error ").unwrap_or(line.trim());
                Err(BackendError::new(if msg.is_empty() {
                    "the sandbox exited during setup".to_string()
                } else {
                    format!("sandbox setup failed: {msg}")
                }))
            }
            Err(_) => Err(BackendError::new(format!(
                "the sandbox did not start within {} s",
                self.opts.start_timeout.as_secs()
            ))),
        }
    }
}

/// Kills the VM's PID 1, which takes every process of its pid namespace with it.
async fn kill_vm(dir: &Path) {
    crate::process::kill_from_pid_file(&dir.join("init.pid")).await;
}

#[async_trait]
impl Backend for SandboxBackend {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create(&self, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        let dir = self.vm_dir(&spec.vm_id)?;
        match self.start(spec, &dir).await {
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
        kill_vm(&dir).await;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::new(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.opts.vms_dir)
            .await
            .map_err(|e| BackendError::new(format!("cannot list VMs: {e}")))?;
        while let Ok(Some(e)) = rd.next_entry().await {
            if let Some(name) = e.file_name().to_str() {
                if ids::is_vm_id(name) {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    fn host_address_for_vm(&self) -> &str {
        "127.0.0.1"
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
}
