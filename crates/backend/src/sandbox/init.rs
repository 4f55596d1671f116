//! The privileged piece of the sandbox backend, run as `warmpool __sandbox-init` (single-threaded,
//! before any runtime starts). It creates the VM's namespaces, builds its root filesystem and
//! becomes the VM's PID 1 by executing `warmpool-agent --init` from the guest image, so nothing of
//! the host — not even this program's path — stays visible inside.
//!
//! Protocol with the server: fd 3 is the agent's listening socket; the token is in the environment;
//! stdout gets one line, `ready <pid>` (the host pid of the VM's PID 1) or `error <message>`;
//! stderr is the VM's console log. `<vm-dir>/init.pid` holds `<pid> <start time>` so the VM can be
//! found and killed even after a server crash.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use warmpool_types::agent::TOKEN_ENV;

use crate::image::AGENT_GUEST_PATH;

/// The socket the agent listens on, as handed down by the server.
pub const AGENT_FD: i32 = 3;

struct Args {
    vm_dir: PathBuf,
    lowers: Vec<PathBuf>,
    hostname: String,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut vm_dir = None;
    let mut lowers = Vec::new();
    let mut hostname = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--vm-dir" => vm_dir = Some(PathBuf::from(val()?)),
            "--lower" => lowers.push(PathBuf::from(val()?)),
            "--hostname" => hostname = Some(val()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        vm_dir: vm_dir.ok_or("--vm-dir is required")?,
        lowers: if lowers.is_empty() {
            return Err("at least one --lower is required".into());
        } else {
            lowers
        },
        hostname: hostname.ok_or("--hostname is required")?,
    })
}

fn fail(msg: &str) -> ! {
    println!("error {msg}");
    let _ = std::io::stdout().flush();
    eprintln!("sandbox-init: {msg}");
    std::process::exit(1)
}

/// Entry point of `warmpool __sandbox-init`. Never returns.
pub fn main(args: &[String]) -> ! {
    let args = parse(args).unwrap_or_else(|e| fail(&e));
    let token =
        std::env::var(TOKEN_ENV).unwrap_or_else(|_| fail("no agent token in the environment"));
    // A new pid namespace applies to children only, so it is made here, before the fork; the
    // other namespaces are made by the child itself, so that this launcher — which must keep
    // seeing the host's files — never shares the VM's mount namespace (pivot_root would move
    // this process into the VM's root too).
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        fail(&format!(
            "cannot create namespaces (the sandbox backend needs root): {e}"
        ));
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .unwrap_or_else(|e| fail(&format!("pipe: {e}")));
    // SAFETY: this process is single-threaded (no runtime has started), so fork is sound.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(ready_r);
            let mut ready_w = std::fs::File::from(ready_w);
            if let Err(e) = setup_root(&args) {
                let _ = write!(ready_w, "{e}");
                std::process::exit(1);
            }
            exec_init(&token, ready_w)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            // Only the VM's agent may hold the listening socket.
            // SAFETY: fd 3 was handed to us by the server and nothing else uses it here.
            drop(unsafe { OwnedFd::from_raw_fd(AGENT_FD) });
            if let Err(e) =
                crate::process::write_pid_file(&args.vm_dir.join("init.pid"), child.as_raw())
            {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                fail(&format!("cannot write init.pid: {e}"));
            }
            // EOF with nothing written: the VM's init is running. Otherwise: why it is not.
            let mut problem = String::new();
            let _ = std::fs::File::from(ready_r).read_to_string(&mut problem);
            if !problem.is_empty() {
                let _ = waitpid(child, None);
                fail(problem.trim());
            }
            if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                fail("the VM's init exited during setup");
            }
            println!("ready {child}");
            let _ = std::io::stdout().flush();
            // Nobody reads our stdout any more: never block on it, never keep the server's pipe.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
            }
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 1,
            };
            std::process::exit(code)
        }
    }
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl Fn() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn path_str(p: &Path) -> Result<&str, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains([',', ':']) {
        return Err(format!(
            "{s}: paths used by the sandbox must not contain `,` or `:`"
        ));
    }
    Ok(s)
}

/// Builds the VM's root (overlay over the image, its own /proc, /dev, /tmp, /run) and moves into it.
fn setup_root(a: &Args) -> Result<(), String> {
    ctx(
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC),
        || "cannot create the mount, uts and ipc namespaces".into(),
    )?;
    let none: Option<&str> = None;
    ctx(
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
        || "cannot make mounts private".into(),
    )?;
    let merged = a.vm_dir.join("merged");
    // The overlay's options are shown to the VM in /proc/self/mountinfo, as given: so they name
    // the layers relative to the VM's directory (through links made there), and the VM never
    // learns where the server keeps its data or its cache.
    let mut lowers = Vec::new();
    for (i, p) in a.lowers.iter().enumerate() {
        path_str(p)?;
        let name = format!("lower{i}");
        let link = a.vm_dir.join(&name);
        let _ = std::fs::remove_file(&link);
        ctx(std::os::unix::fs::symlink(p, &link), || {
            format!("cannot link layer {i} into the VM's directory")
        })?;
        lowers.push(name);
    }
    ctx(nix::unistd::chdir(&a.vm_dir), || {
        "cannot enter the VM's directory".into()
    })?;
    let opts = format!("lowerdir={},upperdir=upper,workdir=work", lowers.join(":"));
    ctx(
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        ),
        || "cannot mount the overlay root".into(),
    )?;
    let m = |rel: &str| merged.join(rel);
    let mkdir = |p: &Path| {
        ctx(std::fs::create_dir_all(p), || {
            format!("mkdir {}", p.display())
        })
    };
    for d in [
        "proc",
        "dev",
        "tmp",
        "run",
        "home",
        "root",
        "var/log/warmpool",
    ] {
        mkdir(&m(d))?;
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    ctx(
        mount(
            Some("proc"),
            &m("proc"),
            Some("proc"),
            nosuid | MsFlags::MS_NOEXEC,
            none,
        ),
        || "mount /proc".into(),
    )?;
    ctx(
        mount(
            Some("tmpfs"),
            &m("dev"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=755,size=65536k"),
        ),
        || "mount /dev".into(),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = m(&format!("dev/{name}"));
        ctx(
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
            || format!("mknod /dev/{name}"),
        )?;
        ctx(
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666)),
            || format!("chmod /dev/{name}"),
        )?;
    }
    mkdir(&m("dev/pts"))?;
    mkdir(&m("dev/shm"))?;
    ctx(
        mount(
            Some("devpts"),
            &m("dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        ),
        || "mount /dev/pts".into(),
    )?;
    ctx(
        mount(
            Some("tmpfs"),
            &m("dev/shm"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        ),
        || "mount /dev/shm".into(),
    )?;
    for (link, target) in [
        ("dev/ptmx", "pts/ptmx"),
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        ctx(std::os::unix::fs::symlink(target, m(link)), || {
            format!("symlink /{link}")
        })?;
    }
    ctx(
        mount(
            Some("tmpfs"),
            &m("tmp"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        ),
        || "mount /tmp".into(),
    )?;
    ctx(
        mount(
            Some("tmpfs"),
            &m("run"),
            Some("tmpfs"),
            nosuid,
            Some("mode=755"),
        ),
        || "mount /run".into(),
    )?;
    let host = &a.hostname;
    ctx(
        std::fs::write(m("etc/hostname"), format!("{host}\n")),
        || "write /etc/hostname".into(),
    )?;
    ctx(
        std::fs::write(
            m("etc/hosts"),
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ),
        || "write /etc/hosts".into(),
    )?;
    // The VM shares the host's network, so it uses the host's resolvers.
    if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
        let _ = std::fs::remove_file(m("etc/resolv.conf"));
        ctx(std::fs::write(m("etc/resolv.conf"), resolv), || {
            "write /etc/resolv.conf".into()
        })?;
    }
    ctx(nix::unistd::sethostname(host), || "sethostname".into())?;
    let old = m(".oldroot");
    mkdir(&old)?;
    ctx(nix::unistd::pivot_root(&merged, &old), || {
        "pivot_root".into()
    })?;
    ctx(nix::unistd::chdir("/"), || "chdir /".into())?;
    ctx(umount2("/.oldroot", MntFlags::MNT_DETACH), || {
        "detach the host root".into()
    })?;
    ctx(std::fs::remove_dir("/.oldroot"), || {
        "remove /.oldroot".into()
    })?;
    Ok(())
}

/// Becomes the VM's init: `warmpool-agent --init`, which starts the agent and reaps orphans.
/// `ready_w` is close-on-exec, so the launcher reads EOF with nothing written exactly when the exec
/// worked, and the error when it did not.
fn exec_init(token: &str, mut ready_w: std::fs::File) -> ! {
    // stdout is the server's handshake pipe: the VM must not hold it.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    let env: Vec<CString> = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
        "LANG=C.UTF-8".to_string(),
        format!("{TOKEN_ENV}={token}"),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect();
    let fd = AGENT_FD.to_string();
    let argv: Vec<CString> = [AGENT_GUEST_PATH, "--init", "--listen-fd", fd.as_str()]
        .into_iter()
        .filter_map(|s| CString::new(s).ok())
        .collect();
    let path = CString::new(AGENT_GUEST_PATH).unwrap_or_default();
    let err = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    let _ = write!(ready_w, "cannot start {AGENT_GUEST_PATH}: {err}");
    std::process::exit(127)
}
