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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(container: &str, v1_ctl: &str, v1_file: &str, v2_file: &str) -> String {
        let p = match v2(container) {
            Some(d) => d.join(v2_file),
            None => v1(v1_ctl, container).unwrap().join(v1_file),
        };
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    /// Limits go down and up again (memory + swap in the order the kernel takes), on a real
    /// cgroup made as runc makes one. Needs root.
    #[test]
    fn limits_are_lowered_and_raised() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (cgroups)");
            return;
        }
        let name = format!("sp-test{}", std::process::id());
        let v2_host = Path::new(ROOT).join("cgroup.controllers").is_file();
        let dirs: Vec<PathBuf> = if v2_host {
            let parent = Path::new(ROOT).join("warmpool");
            std::fs::create_dir_all(&parent).unwrap();
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            vec![parent.join(&name)]
        } else {
            ["memory", "pids", "cpu"]
                .iter()
                .map(|c| Path::new(ROOT).join(c).join("warmpool").join(&name))
                .collect()
        };
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        let swap = std::fs::metadata(
            Path::new(ROOT)
                .join("memory/warmpool")
                .join(&name)
                .join("memory.memsw.limit_in_bytes"),
        )
        .is_ok();
        let result = std::panic::catch_unwind(|| {
            for (mb, pids, cpus) in [(256u64, 100u64, 1u32), (4096, 5000, 3), (512, 64, 2)] {
                let r = Resources {
                    cpus,
                    memory_mb: mb,
                    pids_max: pids,
                    ..Resources::default()
                };
                apply(&name, &r, true).unwrap();
                let bytes = (mb << 20).to_string();
                assert_eq!(
                    read(&name, "memory", "memory.limit_in_bytes", "memory.max"),
                    bytes
                );
                if swap {
                    assert_eq!(
                        read(&name, "memory", "memory.memsw.limit_in_bytes", "memory.max"),
                        bytes
                    );
                }
                assert_eq!(
                    read(&name, "pids", "pids.max", "pids.max"),
                    pids.to_string()
                );
                let quota = (100_000 * cpus as u64).to_string();
                let cpu = read(&name, "cpu", "cpu.cfs_quota_us", "cpu.max");
                assert!(cpu.starts_with(&quota), "{cpu}");
            }
        });
        remove(&name);
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
        result.unwrap();
    }
}
