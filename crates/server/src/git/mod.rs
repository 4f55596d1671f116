//! Git on the server's side: a bare mirror per repository source in the data dir, kept fresh by
//! fetch, and a small smart-HTTP server through which VMs clone those mirrors. VMs therefore clone
//! repos they could never reach themselves (a path on the server host, a remote needing the
//! server's credentials), while `origin` inside the VM still points at the real URL.

pub mod mirror;
pub mod serve;
pub mod source;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use source::RepoSource;

/// A git command (never through a shell), without prompts, restricted to plain transports.
fn command<I, S>(cwd: Option<&Path>, args: I) -> tokio::process::Command
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
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_COMMON_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Configuration given to one git process through the environment (never its command line,
/// which other users of the host can read).
fn config(cmd: &mut tokio::process::Command, pairs: &[(&str, &str)]) {
    cmd.env("GIT_CONFIG_COUNT", pairs.len().to_string());
    for (i, (k, v)) in pairs.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k);
        cmd.env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
}

/// Answers git's credential questions from the environment, and only for the source's own host
/// (a redirect to another host gets nothing).
const CREDENTIAL_HELPER: &str = r#"!f() { test "$1" = get || exit 0; h=; while read -r l && test -n "$l"; do case "$l" in host=*) h="${l#host=}";; esac; done; test "$h" = "$WARMPOOL_GIT_HOST" || exit 0; printf 'username=%s\npassword=%s\n' "$WARMPOOL_GIT_USERNAME" "$WARMPOOL_GIT_PASSWORD"; }; f"#;

/// Makes `cmd` reach `src` as the server allows: with the server's own environment and
/// credentials for a source the admin gave, with nothing of the server's for any other; and
/// with the source's own credentials, if it has any, handed over through the environment.
fn reach(cmd: &mut tokio::process::Command, src: &RepoSource) {
    // An empty `credential.helper` clears the helpers configured before it.
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if !src.admin {
        pairs.push(("credential.helper", ""));
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let proxies: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                matches!(
                    k.to_ascii_lowercase().as_str(),
                    "http_proxy" | "https_proxy" | "no_proxy" | "all_proxy"
                )
            })
            .collect();
        // No home (no ~/.gitconfig, ~/.netrc, ~/.ssh, ~/.git-credentials), no system or global
        // configuration, no ssh agent or key: only what the source itself carries.
        cmd.env_clear()
            .envs(proxies)
            .env("PATH", path)
            .env("HOME", "/nonexistent/warmpool")
            .env("XDG_CONFIG_HOME", "/nonexistent/warmpool")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env("GIT_ALLOW_PROTOCOL", "git:http:https:ssh")
            .env(
                "GIT_SSH_COMMAND",
                "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null \
                 -o IdentityAgent=none -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                 -o LogLevel=ERROR",
            );
        // A redirect could lead a fetch to the server's own network.
        pairs.push(("http.followRedirects", "false"));
        pairs.push(("protocol.file.allow", "never"));
    }
    if let Some((user, pass)) = src.url.credentials() {
        cmd.env(
            "WARMPOOL_GIT_HOST",
            src.url.host.clone().unwrap_or_default(),
        )
        .env("WARMPOOL_GIT_USERNAME", user)
        .env("WARMPOOL_GIT_PASSWORD", pass);
        // The URL's own credentials, and only they, answer for it.
        pairs.push(("credential.helper", ""));
        pairs.push(("credential.helper", CREDENTIAL_HELPER));
    }
    config(cmd, &pairs);
}

async fn run(
    mut cmd: tokio::process::Command,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("cannot run git: {e}")),
        Err(_) => Err(format!("git did not finish within {} s", timeout.as_secs())),
    }
}

/// Runs `git` on the server's own repositories (mirrors): nothing reaches a remote.
pub async fn git<I, S>(
    cwd: Option<&Path>,
    args: I,
    timeout: Duration,
) -> Result<std::process::Output, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(command(cwd, args), timeout).await
}

/// Runs `git` against the source `src` (clone, fetch, ls-remote), reaching it as the server
/// allows (see [`reach`]).
pub async fn git_remote<I, S>(
    src: &RepoSource,
    cwd: Option<&Path>,
    args: I,
    timeout: Duration,
) -> Result<std::process::Output, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(cwd, args);
    reach(&mut cmd, src);
    run(cmd, timeout).await
}

/// Git's messages that quote nothing but URLs, paths, hosts and ref names given to it — never a
/// file's content. `*` stands for any text.
const KNOWN_MESSAGES: &[&str] = &[
    "Cloning into *",
    "fatal: repository '*' not found",
    "fatal: '*' does not appear to be a git repository",
    "fatal: Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
    "fatal: unable to access '*': *",
    "fatal: Authentication failed for '*'",
    "fatal: could not read Username for '*': *",
    "fatal: could not read Password for '*': *",
    "ssh: Could not resolve hostname *",
    "ssh: connect to host * port *: *",
    "Host key verification failed.",
    "*: Permission denied (*).",
    "fatal: Remote branch * not found in upstream origin",
    "warning: You appear to have cloned an empty repository.",
    "fatal: the remote end hung up unexpectedly",
    "fatal: the remote end hung up upon initial contact",
    "fatal: early EOF",
    "fatal: transport '*' not allowed",
    "fatal: unable to look up * (port *) (*)",
    "fatal: unable to connect to *:",
    "fatal: couldn't find remote ref *",
    "error: RPC failed; *",
    "fatal: protocol error: bad pack header",
    "fatal: detected dubious ownership in repository at '*'",
    "To add an exception for this directory, call:",
    "git config --global --add safe.directory *",
    "error: Could not fetch origin",
    "warning: redirecting to *",
    "fatal: destination path '*' already exists and is not an empty directory.",
    "fatal: invalid index-pack output",
    "fatal: fetch-pack: invalid index-pack output",
];

/// Whether `line` has the shape of `pattern`, where `*` matches any text.
fn matches(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Git's error output about `src`, fit to show: credentials hidden, and every line that is not
/// one of git's own known messages (or, from a network remote, the remote's own `remote:`
/// lines) withheld — such a line may quote a file git was led to read.
pub fn shown_stderr(stderr: &str, src: &RepoSource) -> String {
    let mut text = stderr.to_string();
    if let Some(info) = &src.url.userinfo {
        text = text.replace(info.as_str(), warmpool_types::repo_url::HIDDEN);
    }
    for secret in src.secrets() {
        text = text.replace(secret.as_str(), warmpool_types::repo_url::HIDDEN);
    }
    let local = src.url.local_path.is_some();
    let mut out: Vec<String> = Vec::new();
    for line in text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
    {
        let known = (!local && line.starts_with("remote: "))
            || KNOWN_MESSAGES.iter().any(|p| matches(p, line));
        let shown = if known {
            line.to_string()
        } else {
            let kind = ["fatal", "error", "warning"]
                .into_iter()
                .find(|k| line.starts_with(&format!("{k}:")))
                .unwrap_or("git");
            format!("{kind}: [a message withheld: it may quote a file's content]")
        };
        if out.last() != Some(&shown) {
            out.push(shown);
        }
    }
    out.join("\n")
}

/// One line, in our own words, saying why a git operation against a remote failed.
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
    if s.contains("could not resolve host") || s.contains("could not resolve hostname") {
        return "could not resolve the repository's host".into();
    }
    if s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("could not read password")
        || s.contains("permission denied")
        || s.contains("terminal prompts disabled")
        || s.contains("returned error: 401")
        || s.contains("returned error: 403")
    {
        return "authentication failed (no credentials, or credentials the remote refused)".into();
    }
    if s.contains("connection refused")
        || s.contains("connection timed out")
        || s.contains("unable to connect")
        || s.contains("couldn't connect")
        || s.contains("failed to connect")
    {
        return "could not connect to the repository's host".into();
    }
    if s.contains("transport") && s.contains("not allowed") {
        return "this URL's transport is not allowed".into();
    }
    if s.contains("dubious ownership") {
        return "git refuses a repository owned by another user (safe.directory)".into();
    }
    if s.contains("redirect") {
        return "the remote redirected elsewhere (redirects are not followed): give the final URL"
            .into();
    }
    "git could not read the repository".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(url: &str) -> RepoSource {
        RepoSource {
            key: "k".into(),
            url: warmpool_types::repo_url::parse(url).unwrap(),
            admin: false,
        }
    }

    #[test]
    fn patterns() {
        assert!(matches(
            "fatal: repository '*' not found",
            "fatal: repository 'x' not found"
        ));
        assert!(!matches(
            "fatal: repository '*' not found",
            "fatal: repository 'x' not found!"
        ));
        assert!(matches(
            "*: Permission denied (*).",
            "git@h: Permission denied (publickey)."
        ));
        assert!(matches(
            "Cloning into *",
            "Cloning into bare repository 'x'..."
        ));
        assert!(!matches("fatal: early EOF", "fatal: early EOF and more"));
    }

    #[test]
    fn what_git_says_is_shown_only_when_it_quotes_no_file() {
        let local = src("/srv/repo");
        let shown = shown_stderr(
            "fatal: unexpected line in ./packed-refs: wp_secret_token\nerror: object directory /x/wp_other does not exist; check .git/objects/info/alternates\nfatal: the remote end hung up unexpectedly\n",
            &local,
        );
        assert!(!shown.contains("wp_"), "{shown}");
        assert!(
            shown.contains("fatal: the remote end hung up unexpectedly"),
            "{shown}"
        );
        assert!(shown.contains("withheld"), "{shown}");
        let remote = src("https://user:hunter2-pass@example.com/a.git");
        let shown = shown_stderr(
            "remote: Repository not found.\nfatal: repository 'https://user:hunter2-pass@example.com/a.git/' not found\n",
            &remote,
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("remote: Repository not found."), "{shown}");
        assert!(
            shown.contains("fatal: repository 'https://***@example.com/a.git/' not found"),
            "{shown}"
        );
        // A local repository's `remote:` lines are its own files speaking.
        assert!(shown_stderr("remote: wp_secret\n", &local).contains("withheld"));
    }
}
