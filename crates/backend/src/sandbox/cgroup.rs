//! A sandbox VM's cgroups, where runc made them (`cgroupsPath` `/warmpool/<container>`): the
//! project's limits written into them when a VM started ahead of need becomes a project's, and
//! their removal when runc's own state of the VM is gone. Handles cgroup v1 (hybrid mode, as
//! here) and v2.

use std::path::{Path, PathBuf};

use crate::Resources;

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup path of a container in the runtime configuration.
pub fn path(container: &str) -> String {
    format!("/warmpool/{container}")
}

/// The v1 directory of `controller` for `container`, if that hierarchy is mounted.
fn v1(controller: &str, container: &str) -> Option<PathBuf> {
    let d = Path::new(ROOT)
        .join(controller)
        .join("warmpool")
        .join(container);
    d.is_dir().then_some(d)
}

/// The unified (v2) directory of `container`, if the host runs cgroup v2.
fn v2(container: &str) -> Option<PathBuf> {
    let d = Path::new(ROOT).join("warmpool").join(container);
    d.join("cgroup.controllers").is_file().then_some(d)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(file).display()))
}

/// Sets `container`'s memory (and memory + swap, when `limit_swap`), pids and CPU limits to
/// `r`, as runc sets them from the configuration: memory + swap = memory, a CPU quota of
/// `cpus` periods of 100 ms per period.
pub fn apply(container: &str, r: &Resources, limit_swap: bool) -> Result<(), String> {
    let mem = (r.memory_mb.saturating_mul(1 << 20)).to_string();
    let period: u64 = 100_000;
    let quota = (period * r.cpus as u64).to_string();
    if let Some(d) = v2(container) {
        write(&d, "memory.max", &mem)?;
        if limit_swap {
            write(&d, "memory.swap.max", "0")?;
        }
        write(&d, "pids.max", &r.pids_max.to_string())?;
        return write(&d, "cpu.max", &format!("{quota} {period}"));
    }
    let memory = v1("memory", container).ok_or("the VM has no memory cgroup")?;
    // memory + swap may never be below memory: which goes first depends on the direction.
    let current: u64 = std::fs::read_to_string(memory.join("memory.limit_in_bytes"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let swap = limit_swap && memory.join("memory.memsw.limit_in_bytes").is_file();
    let raising = mem.parse::<u64>().unwrap_or(0) > current;
    if swap && raising {
        write(&memory, "memory.memsw.limit_in_bytes", &mem)?;
    }
    write(&memory, "memory.limit_in_bytes", &mem)?;
    if swap && !raising {
        write(&memory, "memory.memsw.limit_in_bytes", &mem)?;
    }
    let pids = v1("pids", container).ok_or("the VM has no pids cgroup")?;
    write(&pids, "pids.max", &r.pids_max.to_string())?;
    let cpu = v1("cpu", container)
        .or_else(|| v1("cpu,cpuacct", container))
        .ok_or("the VM has no cpu cgroup")?;
    write(&cpu, "cpu.cfs_period_us", &period.to_string())?;
    write(&cpu, "cpu.cfs_quota_us", &quota)
}

/// Kills whatever is left in `container`'s cgroups and removes them: for a VM whose runc state
/// was lost in a crash mid-start (runc's delete removes them otherwise).
pub fn remove(container: &str) {
    let mut dirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(ROOT) {
        for e in rd.flatten() {
            dirs.push(e.path().join("warmpool").join(container));
        }
    }
    dirs.push(Path::new(ROOT).join("warmpool").join(container));
    for d in dirs.into_iter().filter(|d| d.is_dir()) {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::remove_dir(&d);
    }
}
