//! Repository sources as the app keeps them: who may give which (a path on the server's disk
//! only from the admin token; a project token's sources are network URLs fetched with nothing of
//! the server's), credentials taken out of URLs and sealed, and how a source is shown (`***`).

use warmpool_store::{RepoSpec, SealedCredentials};
use warmpool_types::api::RepoInput;
use warmpool_types::repo_url::{self, RepoUrl};

use super::{App, Caller};
use crate::error::{AppError, AppResult, Problems};
use crate::git::mirror::ID_LEN;
use crate::git::source::RepoSource;

impl App {
    /// The key naming a source's mirror and cached facts (default branch, heads): a keyed
    /// digest of who gave it, its URL and its credentials' digest. Needs no secret opened.
    pub(crate) fn source_key(&self, r: &RepoSpec) -> String {
        let who = if r.admin_source { "admin" } else { "project" };
        let creds = r.credentials.as_ref().map(|c| c.digest.as_str());
        let mut key = self
            .sealer
            .digest(&["mirror", who, &r.url, creds.unwrap_or("")]);
        key.truncate(ID_LEN);
        key
    }

    /// A repo's source with its credentials opened, for git.
    pub(crate) fn repo_source(&self, r: &RepoSpec) -> AppResult<RepoSource> {
        let full = match &r.credentials {
            Some(c) => {
                let info = self.sealer.open(&c.sealed).map_err(AppError::internal)?;
                repo_url::join(&r.url, &info)
            }
            None => r.url.clone(),
        };
        let url = repo_url::parse(&full).map_err(|e| {
            AppError::internal(anyhow::anyhow!(
                "a stored repository URL does not parse: {e}"
            ))
        })?;
        Ok(RepoSource {
            key: self.source_key(r),
            url,
            admin: r.admin_source,
        })
    }

    /// The URL as shown to anyone: credentials as `***`.
    pub(crate) fn repo_display(&self, r: &RepoSpec) -> String {
        match self.repo_source(r) {
            Ok(s) => s.display(),
            Err(_) => repo_url::display(&r.url, r.credentials.is_some(), None),
        }
    }

    /// The secrets of a project's repository URLs, named for redaction.
    pub(crate) fn repo_secrets(&self, repos: &[RepoSpec]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for r in repos.iter().filter(|r| r.credentials.is_some()) {
            if let Ok(src) = self.repo_source(r) {
                for s in src.secrets() {
                    out.push((format!("credentials of {}", r.full_name), s));
                }
            }
        }
        out
    }

    /// Seals the credentials an older version kept inside stored repository URLs, as new ones
    /// are (run once at every start; a project already sealed is left alone). The number of
    /// projects changed.
    pub async fn seal_stored_credentials(&self) -> AppResult<usize> {
        let mut after = None;
        let mut changed = 0;
        loop {
            let rows = self.store.list_projects(after, 100, None).await?;
            let Some(last) = rows.last() else {
                return Ok(changed);
            };
            after = Some(last.seq);
            for mut row in rows {
                let mut found = false;
                for r in row.repos.iter_mut().filter(|r| r.credentials.is_none()) {
                    let Ok(u) = repo_url::parse(&r.url) else {
                        continue;
                    };
                    if let Some(info) = &u.userinfo {
                        r.credentials = Some(SealedCredentials {
                            sealed: self.seal(info),
                            digest: self.sealer.digest(&["credentials", info]),
                        });
                        r.url = u.url;
                        found = true;
                    }
                }
                // A project changed meanwhile by a request was saved by this version: sealed.
                if found && self.store.update_project(&row).await? {
                    changed += 1;
                }
            }
        }
    }

    /// Turns the repositories of a request into what is stored, as `caller` may give them:
    /// credentials sealed (`***` keeps those already stored for the same URL), sources on the
    /// server's disk only from the admin and only where the operator allows, no project token
    /// source on this machine's own addresses. `existing` are the project's repositories now.
    pub(crate) fn repo_specs(
        &self,
        caller: &Caller,
        field: &str,
        inputs: &[RepoInput],
        existing: &[RepoSpec],
    ) -> AppResult<Vec<RepoSpec>> {
        let mut p = Problems::default();
        let mut refused = Vec::new();
        let mut out = Vec::with_capacity(inputs.len());
        // The project's sources, opened once: an input naming one of them keeps it as it is.
        let opened: Vec<(&RepoSpec, RepoUrl)> = existing
            .iter()
            .filter_map(|e| self.repo_source(e).ok().map(|s| (e, s.url)))
            .collect();
        for (i, r) in inputs.iter().enumerate() {
            let f = format!("{field}[{i}].url");
            let parsed: RepoUrl = match repo_url::parse(&r.url) {
                Ok(u) => u,
                Err(m) => {
                    p.add(f, m);
                    continue;
                }
            };
            let mut same_url = opened.iter().filter(|(e, _)| e.url == parsed.url);
            // The same source as one the project has: kept as it is, whoever sends it back.
            let kept = if parsed.secret_is_hidden() {
                let found = same_url
                    .find(|(e, u)| e.credentials.is_some() && u.username == parsed.username);
                match found {
                    Some((e, _)) => Some(*e),
                    None => {
                        p.add(
                            f,
                            "`***` stands for credentials this project already has for this URL, and it has none: write the credentials themselves",
                        );
                        continue;
                    }
                }
            } else {
                same_url
                    .find(|(_, u)| u.userinfo == parsed.userinfo)
                    .map(|(e, _)| *e)
            };
            if let Some(e) = kept {
                out.push(RepoSpec {
                    full_name: r.repo_full_name.clone(),
                    url: e.url.clone(),
                    branch: r.branch.clone(),
                    credentials: e.credentials.clone(),
                    admin_source: e.admin_source,
                });
                continue;
            }
            let admin = matches!(caller, Caller::Admin);
            if let Some(path) = &parsed.local_path {
                if !admin {
                    refused.push(format!(
                        "{f}: a repository on the server's own disk (a path or a file:// URL) can only be configured with the admin token; project tokens may use network URLs (https://, ssh://, git://)"
                    ));
                    continue;
                }
                if let Err(m) = self.mirrors.local_policy().check(path) {
                    p.add(f, m);
                    continue;
                }
            } else if !admin && parsed.host.as_deref().is_some_and(repo_url::is_local_host) {
                refused.push(format!(
                    "{f}: `{}` is this server's own machine (loopback, link-local or unspecified address); project tokens may only use remote hosts",
                    parsed.host.as_deref().unwrap_or_default()
                ));
                continue;
            }
            let credentials = parsed.userinfo.as_ref().map(|info| SealedCredentials {
                sealed: self.seal(info),
                digest: self.sealer.digest(&["credentials", info]),
            });
            out.push(RepoSpec {
                full_name: r.repo_full_name.clone(),
                url: parsed.url,
                branch: r.branch.clone(),
                credentials,
                admin_source: admin,
            });
        }
        p.into_result()?;
        if !refused.is_empty() {
            return Err(AppError::Forbidden(refused.join("; ")));
        }
        Ok(out)
    }
}
