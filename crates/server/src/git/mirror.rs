//! Bare mirrors of project repositories under `<data-dir>/mirrors/<source key>.git`. A sync
//! clones or fetches; concurrent syncs of one mirror share a single fetch; VMs clone under a read
//! lock so a fetch never changes refs under a running clone. A mirror's own configuration never
//! holds credentials (they are handed to each fetch), and a source on the server's disk is
//! checked before every fetch (see [`super::source`]). What git says when a fetch fails is shown
//! only as far as it cannot quote a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::source::{inspect_local_repo, LocalPolicy, RepoSource};
use super::{classify_failure, git, git_remote, shown_stderr};

/// How many hex digits of a source's key name its mirror.
pub const ID_LEN: usize = 32;

#[derive(Default)]
struct Slot {
    lock: Arc<RwLock<()>>,
    /// When the latest successful sync started; a sync requested before that can use its
    /// result (a failed one is no result: the next sync tries again and says why).
    last_ok: Mutex<Option<Instant>>,
    /// The remote's default branch as the latest sync found it: what a sync that uses another's
    /// result answers, without running git under the write lock (a burst of boots queues on
    /// it, and each waiting reader behind it).
    default_branch: Mutex<Option<String>>,
    /// When the latest failed sync started, what it noted and its error: a sync requested
    /// before that fails with it, instead of each of a burst of boots trying again one after
    /// another (against a remote that hangs, each would wait for the timeout in turn).
    last_err: Mutex<Option<(Instant, Vec<String>, String)>>,
}

pub struct Mirrors {
    root: PathBuf,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    timeout: Duration,
    local: LocalPolicy,
}

/// A mirror that was just brought up to date.
#[derive(Debug, Clone)]
pub struct Synced {
    pub id: String,
    /// The remote's default branch, when it has one.
    pub default_branch: Option<String>,
}

impl Mirrors {
    pub fn new(root: PathBuf, timeout: Duration, local: LocalPolicy) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        // Half-made clones of a run that crashed, and mirrors named the way older versions did
        // (by a plain hash of the URL, credentials included in their configuration).
        for e in std::fs::read_dir(&root)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let current = name
                .strip_suffix(".git")
                .is_some_and(|id| id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit()));
            if !current {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Self {
            root,
            slots: Mutex::new(HashMap::new()),
            timeout,
            local,
        })
    }

    /// The rules for sources on the server's own disk.
    pub fn local_policy(&self) -> &LocalPolicy {
        &self.local
    }

    /// Checks a source before git reads it: one on the server's disk must have been given by the
    /// admin, be where the operator allows, and keep to itself.
    pub fn check_source(&self, src: &RepoSource) -> Result<(), String> {
        let Some(path) = &src.url.local_path else {
            return Ok(());
        };
        if !src.admin {
            return Err(
                "a repository on the server's disk must be configured with the admin token".into(),
            );
        }
        let real = self.local.check(path)?;
        inspect_local_repo(&real)
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.git"))
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Clones or fetches the mirror of `src`, unless a fetch begun after `since` has brought it
    /// up to date (then waits for that one). `note` receives lines worth showing in a step log.
    /// The error is one line a person can act on.
    pub async fn sync(
        &self,
        src: &RepoSource,
        since: Instant,
        note: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Synced, String> {
        let id = src.key[..ID_LEN.min(src.key.len())].to_string();
        let slot = self.slot(&id);
        let _write = slot.lock.write().await;
        let path = self.path(&id);
        let fresh = slot
            .last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t > since);
        if fresh && path.exists() {
            note("the server's mirror was updated just now");
            let known = slot
                .default_branch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let default_branch = match known {
                Some(b) => Some(b),
                None => self.head_branch(&path).await,
            };
            return Ok(Synced { id, default_branch });
        }
        let failed = slot
            .last_err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(t, _, _)| *t > since);
        if let Some((_, lines, error)) = failed {
            note("the server's mirror could not be updated just now:");
            for l in &lines {
                note(l);
            }
            return Err(error);
        }
        let started = Instant::now();
        let mut lines = Vec::new();
        let fetched = self
            .fetch(src, &id, &path, &mut |l| {
                lines.push(l.to_string());
                note(l);
            })
            .await;
        match fetched {
            Ok(default_branch) => {
                *slot
                    .default_branch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = default_branch.clone();
                *slot.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
                Ok(Synced { id, default_branch })
            }
            Err(e) => {
                *slot.last_err.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((started, lines, e.clone()));
                Err(e)
            }
        }
    }

    /// Clones or fetches the mirror of `src` at `path` now: the remote's default branch.
    async fn fetch(
        &self,
        src: &RepoSource,
        id: &str,
        path: &Path,
        note: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<String>, String> {
        // Checked before every fetch: a repository may change between two.
        self.check_source(src)?;
        let failed = |note: &mut (dyn FnMut(&str) + Send), stderr: &[u8]| {
            let stderr = String::from_utf8_lossy(stderr);
            let shown = shown_stderr(&stderr, src);
            if !shown.is_empty() {
                note("git said:");
                note(&shown);
            }
            classify_failure(&stderr)
        };
        if path.exists() {
            note("fetching into the server's mirror");
            let out = git_remote(
                src,
                Some(path),
                ["fetch", "--prune", "--quiet", "origin"],
                self.timeout,
            )
            .await?;
            if !out.status.success() {
                return Err(failed(note, &out.stderr));
            }
        } else {
            note("cloning into the server's mirror");
            let tmp = self.root.join(format!(
                ".{id}.tmp-{}",
                warmpool_types::ids::random_secret(8)
            ));
            // `--no-local`: a path is read through git's own protocol, which sends objects,
            // instead of copying or hard-linking the source's files into the mirror.
            let out = git_remote(
                src,
                None,
                [
                    "clone".as_ref(),
                    "--mirror".as_ref(),
                    "--no-local".as_ref(),
                    "--quiet".as_ref(),
                    "--".as_ref(),
                    std::ffi::OsStr::new(src.fetch_url()),
                    tmp.as_os_str(),
                ],
                self.timeout,
            )
            .await;
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let _ = tokio::fs::remove_dir_all(&tmp).await;
                    return Err(e);
                }
            };
            if !out.status.success() {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(failed(note, &out.stderr));
            }
            tokio::fs::rename(&tmp, path)
                .await
                .map_err(|e| format!("cannot move the mirror into place: {e}"))?;
        }
        self.follow_remote_head(src, path).await;
        Ok(self.head_branch(path).await)
    }

    /// Points the mirror's HEAD at the remote's current default branch (a fetch does not).
    async fn follow_remote_head(&self, src: &RepoSource, path: &Path) {
        let Ok(out) = git_remote(
            src,
            Some(path),
            ["ls-remote", "--symref", "origin", "HEAD"],
            self.timeout,
        )
        .await
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let target = text.lines().find_map(|l| {
            l.strip_prefix("ref: ")
                .and_then(|r| r.split_whitespace().next())
                .filter(|r| r.starts_with("refs/heads/"))
        });
        if let Some(target) = target {
            let _ = git(Some(path), ["symbolic-ref", "HEAD", target], self.timeout).await;
        }
    }

    async fn head_branch(&self, path: &Path) -> Option<String> {
        let out = git(
            Some(path),
            ["symbolic-ref", "--quiet", "--short", "HEAD"],
            self.timeout,
        )
        .await
        .ok()?;
        let b = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !b.is_empty()).then_some(b)
    }

    /// The commit `branch` points at in the mirror, if the branch exists.
    pub async fn resolve(&self, id: &str, branch: &str) -> Option<String> {
        let out = git(
            Some(&self.path(id)),
            [
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
            self.timeout,
        )
        .await
        .ok()?;
        let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !c.is_empty()).then_some(c)
    }

    /// Held while a VM clones, so no fetch moves refs under it.
    pub async fn read(&self, id: &str) -> OwnedRwLockReadGuard<()> {
        self.slot(id).lock.clone().read_owned().await
    }

    /// Whether `id` names an existing mirror (ids come from VM requests).
    pub fn exists(&self, id: &str) -> bool {
        id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit()) && self.path(id).is_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs git in `dir`: its output.
    fn git_in(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn source(path: &Path) -> RepoSource {
        RepoSource {
            key: "ab".repeat(ID_LEN / 2),
            url: warmpool_types::repo_url::parse(&path.display().to_string()).unwrap(),
            admin: true,
        }
    }

    /// A sync asked for since a moment is served by a fetch begun after it — without running
    /// git, the default branch as that fetch found it — or fails with it, when it failed.
    #[tokio::test]
    async fn a_sync_begun_after_the_request_serves_it_or_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git_in(&repo, &["init", "-q", "-b", "trunk"]);
        std::fs::write(repo.join("f"), "1").unwrap();
        git_in(&repo, &["add", "f"]);
        git_in(&repo, &["commit", "-qm", "one"]);
        let m = Mirrors::new(
            dir.path().join("mirrors"),
            Duration::from_secs(30),
            LocalPolicy::default(),
        )
        .unwrap();
        let src = source(&repo);
        let mut notes = Vec::new();
        let asked = Instant::now();
        let first = m
            .sync(&src, asked, &mut |n| notes.push(n.to_string()))
            .await
            .unwrap();
        assert_eq!(first.default_branch.as_deref(), Some("trunk"));
        assert_eq!(notes, ["cloning into the server's mirror"]);

        // Asked for before that sync began: its result will do.
        notes.clear();
        let again = m
            .sync(&src, asked, &mut |n| notes.push(n.to_string()))
            .await
            .unwrap();
        assert_eq!(again.default_branch.as_deref(), Some("trunk"));
        assert_eq!(notes, ["the server's mirror was updated just now"]);

        // Asked for now: a fetch of its own, which sees the new commit.
        git_in(&repo, &["commit", "-q", "--allow-empty", "-m", "two"]);
        notes.clear();
        let now = Instant::now();
        m.sync(&src, now, &mut |n| notes.push(n.to_string()))
            .await
            .unwrap();
        assert_eq!(notes, ["fetching into the server's mirror"]);
        let head = git_in(&repo, &["rev-parse", "HEAD"]);
        assert_eq!(m.resolve(&first.id, "trunk").await, Some(head));

        // A fetch that fails is the answer to those asked for before it began: they fail with
        // its error and its notes, without trying again one after another.
        let later = Instant::now();
        std::fs::rename(&repo, dir.path().join("gone")).unwrap();
        let mut failing = Vec::new();
        let e1 = m
            .sync(&src, later, &mut |n| failing.push(n.to_string()))
            .await
            .unwrap_err();
        notes.clear();
        let e2 = m
            .sync(&src, later, &mut |n| notes.push(n.to_string()))
            .await
            .unwrap_err();
        assert_eq!(e1, e2);
        assert_eq!(
            notes[0],
            "the server's mirror could not be updated just now:"
        );
        assert_eq!(notes[1..], failing[..]);

        // One asked for after the failure tries again: the repository is back.
        std::fs::rename(dir.path().join("gone"), &repo).unwrap();
        notes.clear();
        m.sync(&src, Instant::now(), &mut |n| notes.push(n.to_string()))
            .await
            .unwrap();
        assert_eq!(notes, ["fetching into the server's mirror"]);
    }
}
