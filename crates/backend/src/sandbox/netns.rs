//! The first moment of a sandbox VM, before runc runs: its root overlay is mounted, and its user
//! namespace (ids mapped to the VM's range) and network namespace are made and pinned to
//! `<vm-dir>/ns/{user,net}`. Making them first lets user-mode networking attach while runc starts
//! the VM, instead of after.
//!
//! A helper process (`warmpool __sandbox-hold`) does the mount and enters the new namespaces in
//! the moments between fork and exec, so the server — many threads — never changes its own
//! working directory or namespaces. It then waits on its stdin until the namespaces are pinned.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::mount::{mount, MsFlags};

use super::spec::IdRange;

/// Entry point of `warmpool __sandbox-hold`: lives until its stdin closes.
pub fn hold_main() -> ! {
    let mut buf = [0u8; 64];
    while let Ok(n) = std::io::stdin().read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    std::process::exit(0)
}

fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Mounts `root` (overlay of `layers`, names relative to `vm_dir`, over `rw/upper`) and
/// makes the VM's user and network namespaces, pinned to `<vm-dir>/ns/user` and `net_pin`.
pub fn prepare(
    vm_dir: &Path,
    root: &Path,
    net_pin: &Path,
    layers: &[String],
    ids: IdRange,
    exe: &Path,
) -> Result<(), String> {
    let dir = c(vm_dir
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", vm_dir.display()))?)?;
    // Relative names: /proc/self/mountinfo in the VM shows these options as given, so the VM
    // never learns where the server keeps its data.
    let opts = c(&format!(
        "lowerdir={},upperdir=rw/upper,workdir=rw/work",
        layers.join(":")
    ))?;
    let overlay = c("overlay")?;
    let rootfs = c(root
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", root.display()))?)?;
    let mut cmd = Command::new(exe);
    cmd.arg("__sandbox-hold")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe system calls run, on memory made
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chdir(dir.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                overlay.as_ptr(),
                rootfs.as_ptr(),
                overlay.as_ptr(),
                libc::MS_NODEV,
                opts.as_ptr().cast(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot mount the VM's root and make its namespaces: {e}"))?;
    let pid = child.id();
    let result = (|| {
        let map = format!("0 {} {}\n", ids.base, ids.size);
        for f in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{f}"), &map)
                .map_err(|e| format!("cannot write the VM's {f}: {e}"))?;
        }
        let ns_dir = vm_dir.join("ns");
        std::fs::create_dir_all(&ns_dir).map_err(|e| format!("cannot create ns/: {e}"))?;
        for (n, target) in [
            ("user", ns_dir.join("user")),
            ("net", net_pin.to_path_buf()),
        ] {
            std::fs::File::create(&target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            mount(
                Some(format!("/proc/{pid}/ns/{n}").as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("cannot pin the VM's {n} namespace: {e}"))?;
        }
        Ok(())
    })();
    drop(child.stdin.take());
    let _ = child.wait();
    result
}
