//! Validation of names users give us: branches (the rules of `git check-ref-format --branch`), repo
//! names, environment-variable names, repo URLs. Each check returns a message a person can act on.

/// `git check-ref-format --branch` rules, checked without running git.
pub fn branch_name(b: &str) -> Result<(), String> {
    if b.is_empty() {
        return Err("must not be empty".into());
    }
    if b.len() > 255 {
        return Err("must be at most 255 bytes".into());
    }
    if b.starts_with('-') {
        return Err("must not start with `-`".into());
    }
    if b == "@" || b == "HEAD" {
        return Err(format!("`{b}` is not a branch name"));
    }
    if let Some(c) = b.chars().find(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return Err(format!(
            "must not contain {}",
            if c.is_ascii_control() {
                "control characters".to_string()
            } else if c == ' ' {
                "spaces".to_string()
            } else {
                format!("`{c}`")
            }
        ));
    }
    if b.contains("..") {
        return Err("must not contain `..`".into());
    }
    if b.contains("@{") {
        return Err("must not contain `@{`".into());
    }
    if b.starts_with('/') || b.ends_with('/') || b.contains("//") {
        return Err("must not start or end with `/` or contain `//`".into());
    }
    if b.ends_with('.') {
        return Err("must not end with `.`".into());
    }
    for part in b.split('/') {
        if part.starts_with('.') {
            return Err("no path component may start with `.`".into());
        }
        if part.ends_with(".lock") {
            return Err("no path component may end with `.lock`".into());
        }
    }
    Ok(())
}

/// One segment of `owner/name`: `[A-Za-z0-9._-]+`, not only dots (`.`, `..`, `...` name no
/// directory of their own) and not `.git` (git's own directory, in any case).
fn repo_segment(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("has an empty segment".into());
    }
    if s.bytes().all(|c| c == b'.') {
        return Err(format!(
            "segment `{s}` is not allowed: a name made only of dots is not a directory of its own"
        ));
    }
    if s.eq_ignore_ascii_case(".git") {
        return Err(format!(
            "segment `{s}` is not allowed: it is the name of git's own directory"
        ));
    }
    if s.len() > 100 {
        return Err("segments must be at most 100 characters".into());
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err("segments may only contain letters, digits, `.`, `_` and `-`".into());
    }
    if s.starts_with('-') {
        return Err("segments must not start with `-`".into());
    }
    Ok(())
}

/// `owner/name`; returns `name`, the directory the repo is cloned to under `/home`.
pub fn repo_full_name(full: &str) -> Result<&str, String> {
    let mut parts = full.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("must be `owner/name` (exactly one `/`)".into());
    };
    repo_segment(owner)?;
    repo_segment(name)?;
    Ok(name)
}

/// A shell identifier `[A-Za-z_][A-Za-z0-9_]*`, at most 191 characters.
pub fn env_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 191 {
        return Err("must be 1 to 191 characters".into());
    }
    let mut bytes = n.bytes();
    let first = bytes.next().unwrap_or(b'0');
    if !(first.is_ascii_alphabetic() || first == b'_')
        || !bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    {
        return Err(
            "must be a shell identifier: a letter or `_`, then letters, digits or `_`".into(),
        );
    }
    Ok(())
}

/// Names an environment variable of a project may not have, because `/home/.env` is loaded by
/// every command of the VM: each would break (or take over) every command. With why.
pub fn reserved_env_name(n: &str) -> Option<&'static str> {
    Some(match n {
        "BASH_ENV" | "ENV" => "bash runs the file it names before every command",
        "SHELLOPTS" | "BASHOPTS" => {
            "it sets bash's options for every command (and is read-only in bash)"
        }
        "IFS" => "it changes how bash splits the words of every command",
        "LD_PRELOAD" | "LD_AUDIT" => "it loads a library into every program the VM runs",
        "BASH_XTRACEFD" => "it redirects bash's tracing of every command",
        "UID" | "EUID" | "PPID" | "BASH_VERSINFO" | "BASHPID" => {
            "it is read-only in bash: loading /home/.env would fail in every command"
        }
        _ => return None,
    })
}

/// A project environment variable's name: a shell identifier that is not reserved.
pub fn project_env_name(n: &str) -> Result<(), String> {
    env_name(n)?;
    match reserved_env_name(n) {
        Some(why) => Err(format!(
            "`{n}` cannot be a project variable: {why}; set it in a setup command or an exec's env instead"
        )),
        None => Ok(()),
    }
}

/// A repository URL as `git clone` takes it, minus the forms that run programs or read odd places.
pub fn repo_url(u: &str) -> Result<(), String> {
    if u.is_empty() {
        return Err("must not be empty".into());
    }
    if u.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    if u.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if u.starts_with('-') {
        return Err("must not start with `-`".into());
    }
    let lower = u.to_ascii_lowercase();
    // git reads `<transport>::<address>` as "run the remote helper <transport>": `ext::` runs an
    // arbitrary command and `fd::` reads a file descriptor. Never from user input.
    if let Some((helper, _)) = lower.split_once("::") {
        if !helper.is_empty()
            && helper
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
        {
            return Err(format!("transport `{helper}::` URLs are not allowed"));
        }
    }
    if let Some((scheme, rest)) = lower.split_once("://") {
        if !matches!(
            scheme,
            "https" | "http" | "ssh" | "git" | "file" | "git+ssh" | "ssh+git"
        ) {
            return Err(format!(
                "scheme `{scheme}` is not supported (use https, http, ssh, git, file or an absolute path)"
            ));
        }
        if rest.is_empty() {
            return Err("has nothing after the scheme".into());
        }
        return Ok(());
    }
    if u.starts_with('/') {
        return Ok(());
    }
    // scp-like `user@host:path` or `host:path`.
    if let Some((host, path)) = u.split_once(':') {
        if !host.is_empty() && !host.contains('/') && !path.is_empty() {
            return Ok(());
        }
    }
    Err("must be an absolute path on the server, a file:// URL, or a network URL git accepts (https://, ssh://, git://, user@host:path)".into())
}

/// Free text a user names things with: non-empty after trimming, bounded, no control characters
/// other than tab.
pub fn display_text(s: &str, max_chars: usize) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err("must not contain control characters (newlines, NUL, ...)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches() {
        for ok in ["main", "feature/x", "release-1.2", "ünïcode", "a@b"] {
            assert!(branch_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "/a", "a/",
            "a//b", "a.", ".a", "a/.b", "a.lock", "a@{1}", "@", "HEAD", "a\nb", "a\0b",
        ] {
            assert!(branch_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repo_names() {
        assert_eq!(repo_full_name("acme/api"), Ok("api"));
        assert_eq!(repo_full_name("Acme_1/my.repo-2"), Ok("my.repo-2"));
        assert_eq!(repo_full_name("acme/.github"), Ok(".github"));
        assert_eq!(repo_full_name("acme/app.git"), Ok("app.git"));
        for bad in [
            "api",
            "a/b/c",
            "../x",
            "a/..",
            "a/.",
            "/x",
            "a/",
            "a/b c",
            "a/-oProxyCommand=x",
            "a/é",
            "a/.git",
            "a/.GIT",
            ".../x",
            "a/...",
        ] {
            assert!(repo_full_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        assert!(env_name("A").is_ok());
        assert!(env_name("_a1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "É", "A=B"] {
            assert!(env_name(bad).is_err(), "{bad}");
        }
        assert!(env_name(&"A".repeat(192)).is_err());
        for reserved in [
            "SHELLOPTS",
            "BASHOPTS",
            "BASH_ENV",
            "IFS",
            "LD_PRELOAD",
            "EUID",
        ] {
            assert!(env_name(reserved).is_ok());
            let e = project_env_name(reserved).unwrap_err();
            assert!(e.contains(reserved), "{e}");
        }
        assert!(project_env_name("PATH").is_ok());
        assert!(project_env_name("LD_LIBRARY_PATH").is_ok());
    }

    #[test]
    fn urls() {
        for ok in [
            "/srv/git/api",
            "file:///srv/git/api",
            "https://example.com/a/b.git",
            "git@example.com:a/b.git",
            "ssh://git@example.com/a/b",
            "git://127.0.0.1:9418/x",
        ] {
            assert!(repo_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "relative/path",
            "ftp://x/y",
            "/a\nb",
        ] {
            assert!(repo_url(bad).is_err(), "{bad}");
        }
    }
}
