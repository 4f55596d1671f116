//! The first moment of a sandbox VM, before runc runs: its root overlay is mounted, and its user
//! namespace (ids mapped to the VM's range) and network namespace are made and pinned to
//! `<vm-dir>/ns/{user,net}`. Making them first lets user-mode networking attach while runc starts
//! the VM, instead of after.
//!
//! A helper process (`warmpool __sandbox-hold`) does the mount and enters the new namespaces
//! itself, so the server — many threads — never changes its own working directory or
//! namespaces, and starts it by `posix_spawn` rather than `fork` (nothing of the server's runs
//! in between: see `crate::spawn`). It says when it is in them, then waits on its stdin until
//! they are pinned.

use std::ffi::CString;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::mount::{mount, MsFlags};

use super::spec::IdRange;

/// What the helper says on stdout once it is in the new namespaces.
const IN_NAMESPACES: &str = "in namespaces";

/// Entry point of `warmpool __sandbox-hold <vm-dir> <root> <overlay options>`: mounts the root
/// (names in the options are relative to the VM's directory), enters new user and network
/// namespaces, says so on stdout (or why not), and lives until its stdin closes.
pub fn hold_main() -> ! {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let mut out = std::io::stdout();
    if let Err(e) = enter(&args) {
        let _ = writeln!(out, "{e}");
        std::process::exit(1)
    }
    let _ = writeln!(out, "{IN_NAMESPACES}");
    let _ = out.flush();
    let mut buf = [0u8; 64];
    while let Ok(n) = std::io::stdin().read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    std::process::exit(0)
}

/// The helper's work: a single thread, so changing its directory and namespaces is safe.
fn enter(args: &[std::ffi::OsString]) -> Result<(), String> {
    let [dir, root, opts] = args else {
        return Err("usage: __sandbox-hold <vm-dir> <root> <overlay options>".into());
    };
    std::env::set_current_dir(dir).map_err(|e| format!("cannot enter the VM's directory: {e}"))?;
    mount(
        Some("overlay"),
        Path::new(root),
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_os_str()),
    )
    .map_err(|e| format!("cannot mount the VM's root: {e}"))?;
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET,
    )
    .map_err(|e| format!("cannot make the VM's namespaces: {e}"))
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
    // Relative names: /proc/self/mountinfo in the VM shows these options as given, so the VM
    // never learns where the server keeps its data.
    let opts = c(&format!(
        "lowerdir={},upperdir=rw/upper,workdir=rw/work",
        layers.join(":")
    ))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__sandbox-hold")
        .arg(vm_dir)
        .arg(root)
        .arg(opts.to_str().map_err(|e| e.to_string())?)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot mount the VM's root and make its namespaces: {e}"))?;
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut said);
    }
    if said.trim_end() != IN_NAMESPACES {
        drop(child.stdin.take());
        let _ = child.wait();
        let why = said.trim();
        return Err(if why.is_empty() {
            "the namespace helper ended without a word".to_string()
        } else {
            why.to_string()
        });
    }
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
