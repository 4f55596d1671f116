//! Running commands: `bash -c` with `/home/.env` loaded (or a plain argv), stdout and stderr through
//! one pipe so their order is kept, a process group per command so a timeout kills everything it
//! started, and background commands in their own session writing to a log file.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use warmpool_types::agent::{
    AgentBackground, AgentExecEvent, AgentExecRequest, AgentExecResult, DEFAULT_EXEC_TIMEOUT_MS,
};
use warmpool_types::output::CappedOutput;

use crate::utf8::Utf8Decoder;

/// Loads `/home/.env`, then applies the request's own variables (given as `NAME=value` arguments,
/// never pasted into the script) and runs the user's command, also given as an argument, in the
/// same shell: `eval` runs it as `bash -c` would. (Handing it on to `env` and a second `bash -c`
/// took three program starts, ~4 ms of every command's time to first output; one takes ~2.)
/// It uses no variables of its own, which a user's could clash with.
const PRELUDE: &str = r#"if [ -f /home/.env ]; then set -a; . /home/.env; set +a; fi
while [ $# -gt 1 ]; do export "$2"; set -- "$1" "${@:3}"; done
eval "set --
$1""#;

/// After a command exits, how long to keep reading output that its leftover children still write to
/// the shared pipe before giving up on them.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Exit code reported for a command killed by its timeout (as `timeout(1)` does).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

fn base_env() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", "/bin/bash"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
    ])
}

fn build(req: &AgentExecRequest) -> Result<Command, String> {
    // The handler has checked already; checked again here so that no way in can skip it.
    req.check()?;
    let mut cmd = match (&req.command, &req.argv) {
        (Some(command), None) => {
            let mut c = Command::new("bash");
            // `$0` is `bash`, so the shell's own messages read as they would from `bash -c`.
            c.arg("-c").arg(PRELUDE).arg("bash").arg(command);
            c.args(req.env.iter().map(|(k, v)| format!("{k}={v}")));
            c
        }
        (None, Some(argv)) if !argv.is_empty() => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c.envs(&req.env);
            c
        }
        _ => return Err("give exactly one of `command` and a non-empty `argv`".into()),
    };
    cmd.env_clear();
    for (k, v) in base_env() {
        if !(req.argv.is_some() && req.env.contains_key(k)) {
            cmd.env(k, v);
        }
    }
    if req.argv.is_some() {
        cmd.envs(&req.env);
    }
    let cwd = req.cwd.as_deref().unwrap_or("/home");
    if !std::path::Path::new(cwd).is_dir() {
        return Err(format!("working directory {cwd} does not exist"));
    }
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(false);
    // What the agent runs goes before the agent itself when the VM runs out of memory, so a
    // memory hog dies and the VM (its init, its agent) lives on. Raising one's own score needs
    // no privilege; lowering the agent's would need CAP_SYS_RESOURCE on the host, which not
    // every host's root has.
    // SAFETY: open, write and close are async-signal-safe and use memory made before the fork.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"500".as_ptr().cast(), 3);
                libc::close(fd);
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Spawns `cmd` in its own process group with stdout and stderr joined into one pipe.
fn spawn_piped(mut cmd: Command) -> Result<(Child, tokio::net::unix::pipe::Receiver), String> {
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let tx2 = tx.try_clone().map_err(|e| format!("pipe: {e}"))?;
    cmd.stdout(Stdio::from(tx)).stderr(Stdio::from(tx2));
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start command: {e}"))?;
    // Dropping the command closes our copies of the write end, so EOF comes when the child's do.
    drop(cmd);
    let reader =
        tokio::net::unix::pipe::Receiver::from_owned_fd(rx).map_err(|e| format!("pipe: {e}"))?;
    Ok((child, reader))
}

struct Finished {
    exit_code: i32,
    timed_out: bool,
    duration_ms: u64,
}

/// Where output goes while a command runs.
enum Sink<'a> {
    Capped(&'a mut CappedOutput),
    /// A streaming client; when it is slow the pipe fills and the command waits, like on a terminal.
    /// When it has gone, output is dropped and the command runs on.
    Stream(mpsc::Sender<Result<Bytes, Infallible>>),
}

impl Sink<'_> {
    async fn put(&mut self, data: String) {
        match self {
            Sink::Capped(c) => c.push(&data),
            Sink::Stream(tx) => {
                let _ = tx.send(ndjson(&AgentExecEvent::Output { data })).await;
            }
        }
    }
}

/// The longest a command may be given: far beyond any real one, and far from where the
/// deadline (now + timeout) would overflow the clock.
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// A command's time limit: the one asked for (the default when none), at most
/// [`MAX_EXEC_TIMEOUT`].
fn exec_timeout(ms: Option<u64>) -> Duration {
    Duration::from_millis(ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS)).min(MAX_EXEC_TIMEOUT)
}

/// Runs to the end (or the timeout), handing each piece of output to `sink`.
async fn run(req: &AgentExecRequest, mut sink: Sink<'_>) -> Result<Finished, String> {
    let started = Instant::now();
    let timeout = exec_timeout(req.timeout_ms);
    let (mut child, mut reader) = spawn_piped(build(req)?)?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut drain_deadline = None;
    let mut decoder = Utf8Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut eof = false;
    loop {
        if eof && status.is_some() {
            break;
        }
        tokio::select! {
            r = reader.read(&mut buf), if !eof => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let text = decoder.push(&buf[..n]);
                    if !text.is_empty() {
                        sink.put(text).await;
                    }
                }
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st.map_err(|e| format!("wait: {e}"))?);
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            },
            _ = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                timed_out = true;
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
            },
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or(deadline)), if drain_deadline.is_some() => break,
        }
    }
    let rest = decoder.finish();
    if !rest.is_empty() {
        sink.put(rest).await;
    }
    let status = status.expect("loop ends only after the child exited");
    Ok(Finished {
        exit_code: if timed_out {
            TIMEOUT_EXIT_CODE
        } else {
            exit_code(status)
        },
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Runs and answers once, with the output capped like step output.
pub async fn run_to_completion(req: AgentExecRequest) -> AgentExecResult {
    let started = Instant::now();
    let mut out = CappedOutput::default();
    match run(&req, Sink::Capped(&mut out)).await {
        Ok(f) => {
            let (output, truncated) = out.render();
            AgentExecResult {
                exit_code: f.exit_code,
                output,
                duration_ms: f.duration_ms,
                truncated,
                timed_out: f.timed_out,
                pid: None,
            }
        }
        Err(message) => AgentExecResult {
            exit_code: 127,
            output: format!("{message}\n"),
            duration_ms: started.elapsed().as_millis() as u64,
            truncated: false,
            timed_out: false,
            pid: None,
        },
    }
}

fn ndjson(ev: &AgentExecEvent) -> Result<Bytes, Infallible> {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// Runs in a task of its own and streams events; the command keeps running if the client goes away.
pub fn run_streaming(req: AgentExecRequest) -> mpsc::Receiver<Result<Bytes, Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let res = run(&req, Sink::Stream(tx.clone())).await;
        let last = match res {
            Ok(f) => AgentExecEvent::Exit {
                exit_code: f.exit_code,
                timed_out: f.timed_out,
                duration_ms: f.duration_ms,
            },
            Err(message) => AgentExecEvent::SpawnError { message },
        };
        let _ = tx.send(ndjson(&last)).await;
    });
    rx
}

/// Starts a command detached — its own session, output appended to `background_log` — and answers
/// with its pid without waiting for it.
pub async fn start_background(req: &AgentExecRequest) -> Result<AgentExecResult, String> {
    let log = req
        .background_log
        .as_deref()
        .ok_or("background_log is required")?;
    let log_path = std::path::Path::new(log);
    if !log_path.is_absolute() {
        return Err("background_log must be absolute".into());
    }
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("cannot open {log}: {e}"))?;
    let file2 = file.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = build(req)?;
    cmd.stdout(Stdio::from(file)).stderr(Stdio::from(file2));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start command: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let entry = Arc::new(Background {
        pid,
        log: log.to_string(),
        started: std::time::Instant::now(),
        exit: std::sync::OnceLock::new(),
        ended: tokio::sync::Notify::new(),
    });
    lock(&BACKGROUND).push(entry.clone());
    // Reap it when it ends so it never lingers as a zombie, and keep its status: a service that
    // died must be seen before its VM is called ready.
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(st) => st.code().or(st.signal().map(|s| 128 + s)).unwrap_or(-1),
            Err(_) => -1,
        };
        let _ = entry.exit.set(code);
        entry.ended.notify_waiters();
    });
    Ok(AgentExecResult {
        exit_code: 0,
        output: format!("started in background (pid {pid}), output in {log}\n"),
        duration_ms: 0,
        truncated: false,
        timed_out: false,
        pid: Some(pid),
    })
}

/// A background command this agent started.
struct Background {
    pid: u32,
    log: String,
    started: std::time::Instant,
    exit: std::sync::OnceLock<i32>,
    ended: tokio::sync::Notify,
}

/// Every background command started in this VM, oldest first.
static BACKGROUND: Mutex<Vec<Arc<Background>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The background commands, once each has ended or been running for `settle` (a service that
/// cannot bind its port dies in its first moments; this catches it without waiting on the
/// healthy ones any longer than that).
pub async fn background(settle: std::time::Duration) -> Vec<AgentBackground> {
    let all: Vec<Arc<Background>> = lock(&BACKGROUND).clone();
    for b in &all {
        let ended = b.ended.notified();
        if b.exit.get().is_some() {
            continue;
        }
        let left = settle.saturating_sub(b.started.elapsed());
        let _ = tokio::time::timeout(left, ended).await;
    }
    all.iter()
        .map(|b| AgentBackground {
            pid: b.pid,
            log: b.log.clone(),
            exit_code: b.exit.get().copied(),
        })
        .collect()
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[test]
    fn any_timeout_makes_a_deadline() {
        for ms in [None, Some(0), Some(1), Some(u64::MAX / 2), Some(u64::MAX)] {
            let t = exec_timeout(ms);
            assert!(t <= MAX_EXEC_TIMEOUT);
            // What `run` does with it: must not overflow.
            let _ = tokio::time::Instant::now() + t;
        }
        assert_eq!(
            exec_timeout(None),
            Duration::from_millis(DEFAULT_EXEC_TIMEOUT_MS)
        );
    }
}
