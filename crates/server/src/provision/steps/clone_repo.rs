//! `clone_repo`: clones one repository into `/home/<name>` through the server's mirror, at the
//! pool's branch (else the repo's, else the remote's default), with `origin` set to the real URL
//! and any credentials in a file only root reads. On a golden's clone the repository is already
//! there: it is fetched and checked out only when the branch has moved since.

use async_trait::async_trait;
use serde_json::json;
use warmpool_store::RepoCommit;
use warmpool_types::state::StepName;

use super::commands::git_in_vm;
use super::{Step, StepCx};
use crate::git::source::RepoSource;
use crate::provision::repos::RepoHead;
use crate::provision::GoldenPlan;

/// Clones the project's repository number `.0`.
pub struct CloneRepo(pub usize);

fn strings<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.map(String::from).to_vec()
}

impl CloneRepo {
    /// The repository, its source and its head (the mirror held still while `head` lives).
    async fn head(
        &self,
        cx: &mut StepCx<'_>,
        fail: &(dyn Fn(&str) -> String + Send + Sync),
    ) -> Result<(RepoSource, RepoHead), String> {
        let repo = cx.repo(self.0)?;
        let src = cx
            .plan
            .sources
            .get(self.0)
            .cloned()
            .ok_or_else(|| format!("internal error: no source for {}", repo.full_name))?;
        let branch = cx.plan.pool_branch.clone().or(repo.branch.clone());
        let log = &mut *cx.log;
        let head = cx
            .svc
            .repos
            .head(&src, branch.as_deref(), cx.began, &mut |l| log.line(l))
            .await
            .map_err(|r| fail(&r))?;
        cx.meta.insert("branch".into(), json!(head.branch));
        Ok((src, head))
    }
}

#[async_trait]
impl Step for CloneRepo {
    fn name(&self) -> StepName {
        StepName::CloneRepo
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let repo = cx.repo(self.0)?.clone();
        let full = repo.full_name.clone();
        cx.meta.insert("repo".into(), json!(full));
        let fail = |reason: &str| format!("git clone of {full} failed: {reason}");
        let src = cx.plan.sources.get(self.0).map(|s| s.display());
        cx.log.line(&format!(
            "$ git clone {} (through the server's mirror)",
            src.unwrap_or_default()
        ));
        let (src, head) = self.head(cx, &fail).await?;
        let dir = format!("/home/{}", repo.dir_name());
        let mut cmds = vec![
            strings([
                "git",
                "clone",
                "--branch",
                &head.branch,
                "--",
                &head.url,
                &dir,
            ]),
            // `origin` is the real URL, without its credentials: a remote's URL is in
            // `.git/config`, which every user of the VM can read.
            strings([
                "git",
                "-C",
                &dir,
                "remote",
                "set-url",
                "--",
                "origin",
                src.fetch_url(),
            ]),
        ];
        if let Some(secret) = &src.url.secret {
            // The credentials go to a file only root can read, named by the repo's own git
            // configuration: root fetches and pushes as the URL allowed, nobody else sees them.
            let file = format!("/root/.config/git/warmpool/{}.credentials", repo.dir_name());
            let line = format!("{}\n", src.url.with_secret(secret));
            cx.agent()?
                .write_file(&file, line.into_bytes(), 0o600)
                .await
                .map_err(|e| {
                    fail(&format!(
                        "could not write the repository's credentials: {e}"
                    ))
                })?;
            cmds.push(strings([
                "git",
                "-C",
                &dir,
                "config",
                "credential.helper",
                &format!("store --file={file}"),
            ]));
            cx.log.line(&format!(
                "the URL's credentials are in {file} (mode 0600), used by git as root for this repository"
            ));
        }
        git_in_vm(cx, cmds, "git clone", &fail).await?;
        let RepoHead { branch, commit, .. } = head;
        cx.meta.insert("commit".into(), json!(commit));
        cx.log.line(&format!(
            "cloned {full} into {dir} at {branch} ({commit}); origin is {}",
            src.display()
        ));
        cx.vm.commits.insert(full, RepoCommit { branch, commit });
        Ok(())
    }

    /// As the golden left it if that is still the branch head, else fetched and checked out at
    /// the head.
    async fn on_clone(&self, cx: &mut StepCx<'_>, g: &GoldenPlan) -> Result<(), String> {
        let repo = cx.repo(self.0)?.clone();
        let full = repo.full_name.clone();
        cx.meta.insert("repo".into(), json!(full));
        cx.meta.insert("fromGolden".into(), json!(g.golden.id));
        let fail = |reason: &str| format!("git fetch of {full} failed: {reason}");
        let (src, head) = self.head(cx, &fail).await?;
        cx.meta.insert("commit".into(), json!(head.commit));
        let had = g.golden.commits.get(&full);
        cx.vm.commits.insert(
            full.clone(),
            RepoCommit {
                branch: head.branch.clone(),
                commit: head.commit.clone(),
            },
        );
        if had.is_some_and(|c| c.commit == head.commit && c.branch == head.branch) {
            cx.log.line(&format!(
                "cloned by golden {} at {}; still the head of {}",
                g.golden.id, head.commit, head.branch
            ));
            return Ok(());
        }
        if let Some(c) = had {
            cx.meta.insert("goldenCommit".into(), json!(c.commit));
        }
        let dir = format!("/home/{}", repo.dir_name());
        let refspec = format!("refs/heads/{}", head.branch);
        let cmds = vec![
            strings([
                "git", "-C", &dir, "fetch", "--quiet", "--", &head.url, &refspec,
            ]),
            strings([
                "git",
                "-C",
                &dir,
                "checkout",
                "-q",
                "-B",
                &head.branch,
                "FETCH_HEAD",
            ]),
            strings([
                "git",
                "-C",
                &dir,
                "update-ref",
                &format!("refs/remotes/origin/{}", head.branch),
                "FETCH_HEAD",
            ]),
        ];
        cx.log.line(&format!(
            "$ git fetch {} {} (through the server's mirror)",
            src.display(),
            head.branch
        ));
        git_in_vm(cx, cmds, "git", &fail).await?;
        cx.log.line(&format!(
            "{full} was at {} in golden {}; now at {} ({})",
            had.map(|c| c.commit.as_str()).unwrap_or("?"),
            g.golden.id,
            head.commit,
            head.branch
        ));
        Ok(())
    }
}
