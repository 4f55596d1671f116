//! Where a repository comes from, and what the server lets git do to reach it.
//!
//! A source given by the admin token may be a path on the server's own disk (under the roots the
//! operator allows, never in the server's data or cache dir) and is fetched with the server's
//! own git credentials (ssh keys, credential helpers). A source given by a project token is a
//! network URL, fetched with nothing of the server's: no ssh key or agent, no credential helper,
//! no `.netrc`, no configuration — only the credentials written in its own URL. Before each fetch
//! of a local source, the repository is checked for anything that would make git read outside
//! it (symlinks, `objects/info/alternates`, a `.git` file or `commondir` pointing elsewhere).

use std::path::{Component, Path, PathBuf};

use warmpool_types::repo_url::RepoUrl;

/// A repository source with its credentials opened, ready for git.
#[derive(Clone)]
pub struct RepoSource {
    /// Names its mirror and its cached facts: a keyed digest of who gave it, its URL and its
    /// credentials, so sources differing in any of them never share a mirror.
    pub key: String,
    pub url: RepoUrl,
    /// Given by the admin token.
    pub admin: bool,
}

impl std::fmt::Debug for RepoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoSource")
            .field("key", &self.key)
            .field("url", &self.url.display())
            .field("admin", &self.admin)
            .finish()
    }
}

impl RepoSource {
    /// The URL as people see it: credentials as `***`.
    pub fn display(&self) -> String {
        self.url.display()
    }

    /// What git is pointed at (credentials are handed over apart from it).
    pub fn fetch_url(&self) -> &str {
        &self.url.url
    }

    /// The secret strings that must never be shown: the credentials as written and decoded.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.url.secret {
            out.push(s.clone());
        }
        if let Some((user, pass)) = self.url.credentials() {
            if self.url.username.is_none() {
                out.push(user);
            }
            if !pass.is_empty() {
                out.push(pass);
            }
        }
        out.sort();
        out.dedup();
        out.retain(|s| !s.is_empty());
        out
    }
}

/// The operator's rules for sources on the server's own disk.
#[derive(Debug, Clone, Default)]
pub struct LocalPolicy {
    /// When not empty, local sources must be under one of these (canonical) directories.
    pub allowed_roots: Vec<PathBuf>,
    /// Never a source, nor anything under them: the server's data and cache dirs (canonical).
    pub forbidden: Vec<PathBuf>,
}

/// `p` made absolute and free of `.`/`..` without touching the disk.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The real path of `p`: its deepest existing ancestor with symlinks resolved, and the rest as
/// written (a source may be created after it is configured; it is checked again then).
fn resolve(p: &Path) -> PathBuf {
    let p = normalize(p);
    let mut existing = p.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return normalize(&out);
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p,
        }
    }
}

impl LocalPolicy {
    pub fn new(allowed_roots: &[PathBuf], forbidden: &[PathBuf]) -> Self {
        Self {
            allowed_roots: allowed_roots.iter().map(|r| resolve(r)).collect(),
            forbidden: forbidden.iter().map(|r| resolve(r)).collect(),
        }
    }

    /// Checks a source path on the server; returns its real path, or why it is refused (in
    /// words for the admin, who alone may give such sources).
    pub fn check(&self, path: &str) -> Result<PathBuf, String> {
        let real = resolve(Path::new(path));
        if let Some(dir) = self.forbidden.iter().find(|d| real.starts_with(d)) {
            return Err(format!(
                "{} is inside the server's own data or cache dir ({}), which is never a repository source",
                real.display(),
                dir.display()
            ));
        }
        if !self.allowed_roots.is_empty() && !self.allowed_roots.iter().any(|r| real.starts_with(r))
        {
            let roots: Vec<String> = self
                .allowed_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            return Err(format!(
                "{} is outside the directories this server takes local repositories from ({}; see --allow-local-repos)",
                real.display(),
                roots.join(", ")
            ));
        }
        Ok(real)
    }
}

/// Checks that a repository on the server's disk keeps to itself: git reading it for a fetch
/// must not be led outside `root` by a symlink, `objects/info/alternates`, a `.git` file or a
/// `commondir` file. An error says what was found, in our own words.
pub fn inspect_local_repo(root: &Path) -> Result<(), String> {
    let root = std::fs::canonicalize(root).map_err(|_| "repository not found".to_string())?;
    let dot_git = root.join(".git");
    let git_dir = match std::fs::symlink_metadata(&dot_git) {
        Ok(m) if m.is_dir() => dot_git,
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(&dot_git)
                .map_err(|_| "its .git is a symlink that leads nowhere".to_string())?;
            if !target.starts_with(&root) {
                return Err("its .git is a symlink to outside the repository".into());
            }
            target
        }
        Ok(_) => {
            return Err(
                "its .git is a file pointing at a git directory elsewhere (a worktree or submodule): give the repository itself"
                    .into(),
            )
        }
        // A bare repository is its own git directory; anything else is not a repository (and
        // is not walked: it may be any directory of the server's).
        Err(_) if root.join("HEAD").is_file() && root.join("objects").is_dir() => root.clone(),
        Err(_) => return Err("repository not found".into()),
    };
    // git reads the repository's configuration too, and an include there names any file.
    let config = std::fs::read_to_string(git_dir.join("config")).unwrap_or_default();
    if config
        .lines()
        .map(|l| l.trim_start().to_ascii_lowercase())
        .any(|l| l.starts_with("[include"))
    {
        return Err(
            "its git configuration includes other files ([include] or [includeIf]); remove them"
                .into(),
        );
    }
    if git_dir.join("commondir").exists() {
        return Err("it is a linked worktree whose objects live elsewhere (commondir): give the main repository".into());
    }
    let alternates = git_dir.join("objects/info/alternates");
    if std::fs::symlink_metadata(&alternates).is_ok() {
        let text = std::fs::read_to_string(&alternates).unwrap_or_default();
        let objects = git_dir.join("objects");
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let target = std::fs::canonicalize(objects.join(line)).ok();
            if !target.is_some_and(|t| t.starts_with(&root)) {
                return Err(
                    "it borrows objects from outside itself (objects/info/alternates); repack it with `git repack -a -d` and remove the file"
                        .into(),
                );
            }
        }
    }
    // Every symlink inside the git directory must stay inside the repository.
    let mut stack = vec![git_dir];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|_| "part of its git directory cannot be read".to_string())?;
        for e in entries.flatten() {
            seen += 1;
            if seen > 1_000_000 {
                return Err("its git directory has over a million files; pack it first".into());
            }
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_symlink() {
                let ok = std::fs::canonicalize(&path).is_ok_and(|t| t.starts_with(&root));
                if !ok {
                    let rel = path.strip_prefix(&root).unwrap_or(&path);
                    return Err(format!(
                        "{} is a symlink to outside the repository",
                        rel.display()
                    ));
                }
            } else if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_policy() {
        let data = tempfile::tempdir().unwrap();
        let srv = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(srv.path().join("repo")).unwrap();
        let open = LocalPolicy::new(&[], &[data.path().to_path_buf()]);
        assert!(open
            .check(&srv.path().join("repo").display().to_string())
            .is_ok());
        for bad in [
            data.path().display().to_string(),
            data.path().join("mirrors/x").display().to_string(),
            format!("{}/mirrors/../x", data.path().display()),
            format!(
                "{}/x/../../{}",
                data.path().display(),
                data.path().file_name().unwrap().to_string_lossy()
            ),
        ] {
            assert!(open.check(&bad).is_err(), "{bad}");
        }
        // A symlink into the data dir is the data dir.
        let link = srv.path().join("link");
        std::os::unix::fs::symlink(data.path(), &link).unwrap();
        assert!(open.check(&link.display().to_string()).is_err());
        let rooted = LocalPolicy::new(&[srv.path().to_path_buf()], &[data.path().to_path_buf()]);
        assert!(rooted
            .check(&srv.path().join("repo").display().to_string())
            .is_ok());
        assert!(rooted
            .check(&srv.path().join("not-yet").display().to_string())
            .is_ok());
        assert!(rooted.check(&other.path().display().to_string()).is_err());
    }

    #[test]
    fn repos_that_lead_outside_are_refused() {
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("token"), "wp_secret\n").unwrap();
        let repo = tempfile::tempdir().unwrap();
        let git = repo.path().join(".git");
        std::fs::create_dir_all(git.join("objects/info")).unwrap();
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        assert!(inspect_local_repo(repo.path()).is_ok());
        assert!(inspect_local_repo(&git).is_ok(), "a bare repository");
        assert_eq!(
            inspect_local_repo(secret.path()).unwrap_err(),
            "repository not found"
        );
        // A symlink inside the repository is fine.
        std::os::unix::fs::symlink(git.join("HEAD"), git.join("ORIG")).unwrap();
        assert!(inspect_local_repo(repo.path()).is_ok());
        std::os::unix::fs::symlink(secret.path().join("token"), git.join("packed-refs")).unwrap();
        let e = inspect_local_repo(repo.path()).unwrap_err();
        assert!(e.contains("packed-refs") && !e.contains("wp_secret"), "{e}");
        std::fs::remove_file(git.join("packed-refs")).unwrap();
        std::fs::write(
            git.join("objects/info/alternates"),
            format!("{}\n", secret.path().display()),
        )
        .unwrap();
        assert!(inspect_local_repo(repo.path())
            .unwrap_err()
            .contains("alternates"));
        std::fs::remove_file(git.join("objects/info/alternates")).unwrap();
        std::fs::write(
            git.join("config"),
            format!(
                "[core]\n\tbare = false\n[Include]\n\tpath = {}/token\n",
                secret.path().display()
            ),
        )
        .unwrap();
        assert!(inspect_local_repo(repo.path())
            .unwrap_err()
            .contains("include"));
        std::fs::remove_file(git.join("config")).unwrap();
        std::fs::remove_dir_all(&git).unwrap();
        std::fs::write(&git, format!("gitdir: {}\n", secret.path().display())).unwrap();
        assert!(inspect_local_repo(repo.path())
            .unwrap_err()
            .contains(".git is a file"));
    }
}
