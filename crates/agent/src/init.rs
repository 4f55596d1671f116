//! `warmpool-agent --init ARGS...`: PID 1 of a VM. Starts `warmpool-agent ARGS...` as its child,
//! reaps every process that ends up orphaned in the VM (background commands, daemons), and exits
//! with the agent's status when the agent ends — which ends the VM.

use std::ffi::CString;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execv, fork, ForkResult, Pid};

pub fn run() -> ! {
    let exe = CString::new("/proc/self/exe").unwrap_or_default();
    let args: Vec<CString> = std::iter::once("warmpool-agent".to_string())
        .chain(std::env::args().skip(2))
        .filter_map(|a| CString::new(a).ok())
        .collect();
    // SAFETY: nothing else runs yet; the process is single-threaded.
    let agent = match unsafe { fork() } {
        Err(e) => {
            eprintln!("warmpool-agent --init: fork: {e}");
            std::process::exit(1)
        }
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            let err = execv(&exe, &args).unwrap_err();
            eprintln!("warmpool-agent --init: cannot start the agent: {err}");
            std::process::exit(127)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    // The listening socket belongs to the agent alone.
    let mut it = std::env::args().skip(2);
    while let Some(a) = it.next() {
        if a == "--listen-fd" {
            if let Some(fd) = it.next().and_then(|f| f.parse::<i32>().ok()) {
                let _ = nix::unistd::close(fd);
            }
        }
    }
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => {
                eprintln!("warmpool-agent --init: the agent exited with status {code}");
                std::process::exit(code)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                eprintln!("warmpool-agent --init: the agent was killed by {sig}");
                std::process::exit(128 + sig as i32)
            }
            Err(nix::errno::Errno::ECHILD) => std::process::exit(0),
            _ => {}
        }
    }
}
