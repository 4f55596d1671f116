//! Starting a helper in a session of its own with an extra descriptor, by `posix_spawn`: the
//! child borrows the server's memory until it runs the program (as `vfork` does), where `fork` —
//! which the standard library uses as soon as anything must happen between fork and exec —
//! copies the page tables of a server with many threads and a large heap, and the child then
//! takes a page fault for each page either side writes. During a burst of VM starts those copies
//! were a tenth of the machine's CPU.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// A program to start: argv, environment, where its output goes and the descriptor it finds as
/// fd 3.
pub struct Spawn {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    output: Option<OwnedFd>,
    fd3: Option<OwnedFd>,
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

/// `fd` copied to a number above the standard three and fd 3 (close-on-exec, as every
/// descriptor the server holds), so that the child's `dup2`s never overwrite one of their own
/// sources, whatever numbers the originals had.
fn high_copy(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor owned by no one else.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

impl Spawn {
    pub fn new(program: &Path) -> io::Result<Self> {
        let program = cstr(program.as_os_str().as_bytes())?;
        Ok(Self {
            args: vec![program.clone()],
            program,
            env: Vec::new(),
            output: None,
            fd3: None,
        })
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> io::Result<&mut Self> {
        self.args.push(cstr(a.as_ref().as_bytes())?);
        Ok(self)
    }

    /// The whole environment is what `env` sets (nothing is inherited).
    pub fn env(&mut self, key: &str, value: &str) -> io::Result<&mut Self> {
        self.env.push(cstr(format!("{key}={value}").as_bytes())?);
        Ok(self)
    }

    /// Its stdout and stderr (stdin is /dev/null; without this, so are they).
    pub fn output(&mut self, fd: BorrowedFd<'_>) -> io::Result<&mut Self> {
        self.output = Some(high_copy(fd)?);
        Ok(self)
    }

    /// The descriptor the program finds as fd 3 (for runc's `--preserve-fds 1`).
    pub fn fd3(&mut self, fd: BorrowedFd<'_>) -> io::Result<&mut Self> {
        self.fd3 = Some(high_copy(fd)?);
        Ok(self)
    }

    /// Starts it in a new session (it outlives the server's, and no signal sent to the server's
    /// process group reaches it): its pid. Its signal mask is empty and SIGPIPE is back to its
    /// default, as the standard library leaves them for a child.
    pub fn start(&self) -> io::Result<i32> {
        let mut argv: Vec<*mut libc::c_char> =
            self.args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        let mut envp: Vec<*mut libc::c_char> =
            self.env.iter().map(|a| a.as_ptr().cast_mut()).collect();
        envp.push(std::ptr::null_mut());
        let null = c"/dev/null";
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(r))
            }
        };
        // SAFETY: plain C structures, initialised before use and destroyed on every path; the
        // pointers handed over live until posix_spawn returns.
        unsafe {
            let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            check(libc::posix_spawn_file_actions_init(&mut actions))?;
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
                libc::posix_spawn_file_actions_destroy(&mut actions);
                return Err(e);
            }
            let result = (|| {
                check(libc::posix_spawn_file_actions_addopen(
                    &mut actions,
                    0,
                    null.as_ptr(),
                    libc::O_RDONLY,
                    0,
                ))?;
                for target in [1, 2] {
                    match &self.output {
                        Some(fd) => check(libc::posix_spawn_file_actions_adddup2(
                            &mut actions,
                            fd.as_raw_fd(),
                            target,
                        ))?,
                        None => check(libc::posix_spawn_file_actions_addopen(
                            &mut actions,
                            target,
                            null.as_ptr(),
                            libc::O_WRONLY,
                            0,
                        ))?,
                    }
                }
                if let Some(fd) = &self.fd3 {
                    // dup2 to another number leaves the copy without close-on-exec.
                    check(libc::posix_spawn_file_actions_adddup2(
                        &mut actions,
                        fd.as_raw_fd(),
                        3,
                    ))?;
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
                let mut default: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut default);
                libc::sigaddset(&mut default, libc::SIGPIPE);
                check(libc::posix_spawnattr_setsigdefault(&mut attr, &default))?;
                let flags = libc::POSIX_SPAWN_SETSID
                    | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
                    | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
                check(libc::posix_spawnattr_setflags(&mut attr, flags))?;
                let mut pid: libc::pid_t = 0;
                check(libc::posix_spawn(
                    &mut pid,
                    self.program.as_ptr(),
                    &actions,
                    &attr,
                    argv.as_ptr(),
                    envp.as_ptr(),
                ))?;
                Ok(pid)
            })();
            libc::posix_spawnattr_destroy(&mut attr);
            libc::posix_spawn_file_actions_destroy(&mut actions);
            result
        }
    }

    /// Starts it and waits for it to exit.
    pub async fn status(&self) -> io::Result<ExitStatus> {
        let pid = self.start()?;
        wait(pid).await
    }
}

/// Waits for child `pid` (started by [`Spawn::start`]) to exit, on a blocking thread: the
/// runtime's child reaper only reaps the children it started itself.
pub async fn wait(pid: i32) -> io::Result<ExitStatus> {
    tokio::task::spawn_blocking(move || loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The child gets the environment given and no other, argv as given (spaces, quotes, `$`
    /// and newlines untouched), its output where asked, fd 3, and a session of its own.
    #[tokio::test]
    async fn a_child_gets_argv_env_output_fd3_and_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let extra = std::fs::File::create(dir.path().join("extra")).unwrap();
        let mut s = Spawn::new(Path::new("/bin/sh")).unwrap();
        s.arg("-c")
            .unwrap()
            .arg(
                "printf '%s|' \"$1\" \"$X\" \"$HOME\"; echo; echo to-three >&3; \
                 cut -d' ' -f6 /proc/$$/stat; echo $$",
            )
            .unwrap()
            .arg("sh")
            .unwrap()
            .arg("a 'b' $c\nd")
            .unwrap()
            .env("X", "ü \"y\"")
            .unwrap()
            .env("PATH", "/usr/bin:/bin")
            .unwrap()
            .output(out.as_fd())
            .unwrap()
            .fd3(extra.as_fd())
            .unwrap();
        let status = s.status().await.unwrap();
        assert!(status.success(), "{status}");
        let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), "a 'b' $c");
        // HOME was not passed on: the child's environment is only what was given.
        assert_eq!(lines.next().unwrap(), "d|ü \"y\"||");
        let (sid, pid) = (lines.next().unwrap(), lines.next().unwrap());
        assert_eq!(sid, pid, "the child leads a session of its own: {text}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("extra")).unwrap(),
            "to-three\n"
        );
    }

    #[tokio::test]
    async fn a_failed_exit_and_a_missing_program_are_told_apart() {
        let mut s = Spawn::new(Path::new("/bin/sh")).unwrap();
        s.arg("-c").unwrap().arg("exit 3").unwrap();
        assert_eq!(s.status().await.unwrap().code(), Some(3));
        let missing = Spawn::new(Path::new("/nonexistent/program")).unwrap();
        let e = missing.status().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
