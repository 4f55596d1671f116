//! Processes a backend starts and must be able to find and kill later, even from another run of
//! the server: identified by pid *and* start time, so a reused pid is never mistaken for them.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `(state, start time)` of a process from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Start time of a running process (clock ticks since boot).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

/// Whether the process that had `start` still runs (a zombie no longer runs: nobody may reap it
/// if its parent was a server that died).
pub fn alive(pid: i32, start: u64) -> bool {
    matches!(stat(pid), Some((state, s)) if s == start && state != 'Z' && state != 'X')
}

/// `<pid> <start time>` as written to a pid file.
pub fn write_pid_file(path: &Path, pid: i32) -> std::io::Result<()> {
    let start = start_time(pid).unwrap_or(0);
    std::fs::write(path, format!("{pid} {start}\n"))
}

pub fn read_pid_file(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// SIGKILLs the process of a pid file and waits (up to 10 s) until it no longer runs.
pub async fn kill_from_pid_file(path: &Path) {
    let Some((pid, start)) = read_pid_file(path) else {
        return;
    };
    if pid <= 1 || !alive(pid, start) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for _ in 0..2000 {
        if !alive(pid, start) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(pid, "a process did not exit within 10 s of SIGKILL");
}
