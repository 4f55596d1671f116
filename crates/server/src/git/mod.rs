//! Git on the server's side: a bare mirror per repository URL in the data dir, kept fresh by fetch,
//! and a small smart-HTTP server through which VMs clone those mirrors. VMs therefore clone repos
//! they could never reach themselves (a path on the server host, a remote needing the server's
//! credentials), while `origin` inside the VM still points at the real URL.

pub mod mirror;
pub mod serve;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

/// Runs `git` with the given arguments (never through a shell), without prompts, restricted to
/// plain transports.
pub async fn git<I, S>(
    cwd: Option<&Path>,
    args: I,
    timeout: Duration,
) -> Result<std::process::Output, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = tokio::process::Command::new("git");
    if let Some(dir) = cwd {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        // `ext::` and `fd::` run programs or read descriptors: only plain transports are allowed.
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        )
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("cannot run git: {e}")),
        Err(_) => Err(format!("git did not finish within {} s", timeout.as_secs())),
    }
}

/// One line, for a person, saying why a git operation against a remote failed.
pub fn classify_failure(stderr: &str) -> String {
    let s = stderr.to_ascii_lowercase();
    if s.contains("does not appear to be a git repository")
        || s.contains("repository not found")
        || s.contains("not found")
        || s.contains("no such file or directory")
        || s.contains("does not exist")
    {
        return "repository not found".into();
    }
    if s.contains("could not resolve host") {
        return "could not resolve the repository's host".into();
    }
    if s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("permission denied")
        || s.contains("terminal prompts disabled")
    {
        return "authentication failed (the server has no credentials for this URL)".into();
    }
    if s.contains("connection refused")
        || s.contains("connection timed out")
        || s.contains("unable to connect")
    {
        return "could not connect to the repository's host".into();
    }
    if s.contains("transport") && s.contains("not allowed") {
        return "this URL's transport is not allowed".into();
    }
    let last = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("git failed");
    last.strip_prefix("fatal: ").unwrap_or(last).to_string()
}
