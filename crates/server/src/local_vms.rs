//! `warmpool vms`: the VMs a data dir holds, listed and destroyed with no server running. VMs
//! outlive their server on purpose (an upgrade does not end them), so an operator needs a way
//! to see and stop them that does not go through the API. A lock on the data dir keeps this
//! from racing a server that runs on it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use warmpool_backend::image::{self, GuestImage};
use warmpool_backend::process;
use warmpool_backend::qemu::{Accel, QemuBackend, QemuOptions};
use warmpool_backend::sandbox::SandboxBackend;
use warmpool_backend::Backend;
use warmpool_types::ids;

/// Held by a server for as long as it runs on a data dir (the kernel drops it when the process
/// ends, however it ends).
pub struct DataDirLock {
    _lock: Flock<File>,
}

/// Locks `data_dir` for this process, or says which process holds it.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join("server.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(DataDirLock { _lock: lock })
        }
        Err((_, _)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "a warmpool server (pid {}) is running on {}: stop it first, or manage its VMs through its API",
                pid.trim(),
                data_dir.display()
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sandbox,
    Qemu,
}

fn kind_dir(kind: Kind) -> &'static str {
    match kind {
        Kind::Sandbox => "vms",
        Kind::Qemu => "qemu-vms",
    }
}

impl Kind {
    /// The process whose life is the VM's.
    fn pid_file(self) -> &'static str {
        match self {
            Kind::Sandbox => "init.pid",
            Kind::Qemu => "qemu.pid",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalVm {
    pub id: String,
    pub backend: Kind,
    pub running: bool,
    pub pid: Option<i32>,
    /// When its directory was made, epoch seconds.
    pub created: Option<u64>,
    /// A sandbox VM (`sp-...`) or a QEMU process (`qs-...`) started ahead of need, owned by no
    /// project: a server destroys those an earlier one left when it starts.
    pub spare: bool,
}

/// The VMs under `data_dir`, sandbox then qemu, each by id.
pub fn list(data_dir: &Path) -> Vec<LocalVm> {
    let mut out = Vec::new();
    let places = [
        (Kind::Sandbox, kind_dir(Kind::Sandbox), false),
        (Kind::Sandbox, crate::serve::SPARES_DIR, true),
        (Kind::Qemu, kind_dir(Kind::Qemu), false),
        (Kind::Qemu, crate::serve::QEMU_SPARES_DIR, true),
    ];
    for (kind, dir, spare) in places {
        let Ok(rd) = std::fs::read_dir(data_dir.join(dir)) else {
            continue;
        };
        let mut vms: Vec<LocalVm> = rd
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_str()?.to_string();
                let valid = if spare && kind == Kind::Qemu {
                    warmpool_backend::qemu::ready::is_ready_name(&id)
                } else if spare {
                    warmpool_backend::sandbox::is_container_id(&id)
                } else {
                    ids::is_vm_id(&id)
                };
                valid.then_some(())?;
                let live = process::read_pid_file(&e.path().join(kind.pid_file()))
                    .filter(|(pid, start)| process::alive(*pid, *start));
                let created = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                Some(LocalVm {
                    id,
                    backend: kind,
                    running: live.is_some(),
                    pid: live.map(|(p, _)| p),
                    created,
                    spare,
                })
            })
            .collect();
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(vms);
    }
    out
}

fn guest(cache_dir: &Path) -> (Arc<GuestImage>, PathBuf) {
    let agent_bin =
        crate::serve::find_agent_bin(None).unwrap_or_else(|_| PathBuf::from("warmpool-agent"));
    let guest = Arc::new(GuestImage::new(
        cache_dir.to_path_buf(),
        image::DEFAULT_MIRROR.to_string(),
        agent_bin.clone(),
        None,
    ));
    (guest, agent_bin)
}

/// The sandbox backend of `data_dir`, to destroy with (it starts nothing and builds nothing).
fn sandbox(data_dir: &Path, cache_dir: &Path) -> anyhow::Result<Arc<SandboxBackend>> {
    SandboxBackend::new(
        crate::serve::sandbox_options(data_dir, cache_dir, data_dir.join("agent"), 0)?,
        guest(cache_dir).0,
    )
    .map_err(anyhow::Error::msg)
}

/// The qemu backend of `data_dir`, to destroy with (it starts nothing and builds nothing).
fn qemu(data_dir: &Path, cache_dir: &Path) -> anyhow::Result<Arc<QemuBackend>> {
    let (guest, agent_bin) = guest(cache_dir);
    QemuBackend::new(
        QemuOptions {
            vms_dir: data_dir.join("qemu-vms"),
            ready_dir: data_dir.join(crate::serve::QEMU_SPARES_DIR),
            spares: 0,
            goldens_dir: data_dir.join("goldens"),
            cache_dir: cache_dir.to_path_buf(),
            agent_bin,
            accel: Accel::Auto,
            boot_timeout: Duration::from_secs(60),
            boot_attempts: 1,
        },
        guest,
    )
    .map_err(anyhow::Error::msg)
}

/// The backend that destroys VMs of `kind` in `data_dir` (it starts nothing and builds nothing).
fn backend(kind: Kind, data_dir: &Path, cache_dir: &Path) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match kind {
        Kind::Sandbox => sandbox(data_dir, cache_dir)?,
        Kind::Qemu => qemu(data_dir, cache_dir)?,
    })
}

/// Destroys the VMs named (every VM when `ids` is empty and `all`), each completely: its
/// processes, mounts, network and files. Answers the ids destroyed.
pub async fn remove(
    data_dir: &Path,
    cache_dir: &Path,
    ids: &[String],
    all: bool,
) -> anyhow::Result<Vec<String>> {
    if ids.is_empty() && !all {
        bail!("name the VMs to destroy, or give --all");
    }
    if !ids.is_empty() && all {
        bail!("give either VM ids or --all, not both");
    }
    let _lock = lock_data_dir(data_dir)?;
    let present = list(data_dir);
    let chosen: Vec<&LocalVm> = if all {
        present.iter().collect()
    } else {
        let mut v = Vec::new();
        for id in ids {
            match present.iter().find(|p| &p.id == id) {
                Some(p) => v.push(p),
                None => bail!("no VM `{id}` in {}", data_dir.display()),
            }
        }
        v
    };
    let mut done = Vec::new();
    let mut backends: Vec<(Kind, Arc<dyn Backend>)> = Vec::new();
    for vm in chosen {
        if vm.spare {
            match vm.backend {
                Kind::Sandbox => sandbox(data_dir, cache_dir)?.destroy_spare(&vm.id).await,
                Kind::Qemu => qemu(data_dir, cache_dir)?.destroy_spare(&vm.id).await,
            }
            .map_err(|e| anyhow::anyhow!("cannot destroy {}: {e}", vm.id))?;
            done.push(vm.id.clone());
            continue;
        }
        let b = match backends.iter().find(|(k, _)| *k == vm.backend) {
            Some((_, b)) => b.clone(),
            None => {
                let b = backend(vm.backend, data_dir, cache_dir)?;
                backends.push((vm.backend, b.clone()));
                b
            }
        };
        b.destroy(&vm.id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot destroy {}: {e}", vm.id))?;
        done.push(vm.id.clone());
    }
    if all {
        // Nothing of the data dir is left outside it (the directory VM roots were mounted in).
        let _ = std::fs::remove_dir(crate::serve::roots_dir(data_dir));
    }
    Ok(done)
}
