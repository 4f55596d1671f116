//! Projects and their repositories.

use std::sync::Arc;
use std::time::Duration;

use warmpool_store::{DevboxSpec, ProjectRow, RepoSpec};
use warmpool_types::api::{
    CreateProjectBody, ListProjectsResponse, ListReposResponse, Project, ProjectRepo, RepoDetail,
    UpdateProjectBody,
};
use warmpool_types::ids;
use warmpool_types::state::{EndReason, InstanceStatus};
use warmpool_types::time::fmt_ms;
use warmpool_types::validate;

use super::{check_repos, task_code, App, Caller, MAX_DESCRIPTION_CHARS, MAX_PROJECT_NAME_CHARS};
use crate::error::{AppError, AppResult, Problems};
use crate::git;

fn check_description(p: &mut Problems, d: &str) {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        p.add(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    }
    if d.contains('\0') {
        p.add("description", "must not contain NUL bytes");
    }
}

impl App {
    pub(crate) async fn project_for(&self, caller: &Caller, id: &str) -> AppResult<ProjectRow> {
        caller.check_project(id)?;
        if !ids::is_project_id(id) {
            return Err(AppError::not_found("project not found"));
        }
        self.store
            .get_project(id)
            .await?
            .ok_or_else(|| AppError::not_found("project not found"))
    }

    async fn project_view(&self, p: &ProjectRow) -> AppResult<Project> {
        let mut repos = Vec::with_capacity(p.repos.len());
        for r in &p.repos {
            let branch = match &r.branch {
                Some(b) => b.clone(),
                None => self
                    .store
                    .get_default_branch(&self.source_key(r))
                    .await?
                    .unwrap_or_default(),
            };
            repos.push(ProjectRepo {
                repo_full_name: r.full_name.clone(),
                branch,
            });
        }
        Ok(Project {
            id: p.id.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            task_code: p.task_code.clone(),
            repos,
            created_at: fmt_ms(p.created_at),
            updated_at: fmt_ms(p.updated_at),
        })
    }

    /// Learns each remote's default branch so the project can show it. Local repositories answer at
    /// once; network remotes are asked in the background so creating a project never waits on them.
    async fn learn_default_branches(self: &Arc<Self>, repos: &[RepoSpec]) {
        for r in repos.iter().filter(|r| r.branch.is_none()) {
            let Ok(src) = self.repo_source(r) else {
                continue;
            };
            // A source on the server's disk is read only once it passes its checks.
            if self.mirrors.check_source(&src).is_err() {
                continue;
            }
            let app = self.clone();
            let local = src.url.local_path.is_some();
            let task = async move {
                let out = git::git_remote(
                    &src,
                    None,
                    ["ls-remote", "--symref", "--", src.fetch_url(), "HEAD"],
                    Duration::from_secs(10),
                )
                .await;
                let Ok(out) = out else { return };
                let text = String::from_utf8_lossy(&out.stdout);
                let branch = text.lines().find_map(|l| {
                    l.strip_prefix("ref: refs/heads/")
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_string)
                });
                if let Some(b) = branch {
                    let _ = app.store.set_default_branch(&src.key, &b, app.now()).await;
                }
            };
            if local {
                task.await;
            } else {
                crate::tasks::spawn("default branch check", task);
            }
        }
    }

    pub async fn create_project(
        self: &Arc<Self>,
        caller: &Caller,
        body: CreateProjectBody,
    ) -> AppResult<Project> {
        caller.require_admin()?;
        let mut p = Problems::default();
        p.check(
            "name",
            validate::display_text(&body.name, MAX_PROJECT_NAME_CHARS),
        );
        if let Some(d) = &body.description {
            check_description(&mut p, d);
        }
        let clash = check_repos(&mut p, "repos", &body.repos);
        p.into_result()?;
        if let Some(c) = clash {
            return Err(AppError::Conflict(c));
        }
        let repos = self.repo_specs(caller, "repos", &body.repos, &[])?;
        let now = self.now();
        let row = ProjectRow {
            seq: 0,
            id: ids::new_project_id(),
            task_code: task_code(&body.name),
            name: body.name,
            description: body.description,
            repos,
            devbox: DevboxSpec::default(),
            resources: Default::default(),
            leases: Default::default(),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_project(&row).await?;
        tracing::info!(project = %row.id, name = %row.name, "project created");
        self.learn_default_branches(&row.repos).await;
        self.project_view(&row).await
    }

    pub async fn get_project(&self, caller: &Caller, id: &str) -> AppResult<Project> {
        let p = self.project_for(caller, id).await?;
        self.project_view(&p).await
    }

    pub async fn list_projects(
        &self,
        caller: &Caller,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> AppResult<ListProjectsResponse> {
        let mut p = Problems::default();
        let limit = limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            p.add("limit", "must be between 1 and 100");
        }
        let after = match cursor {
            None | Some("") => None,
            Some(c) => match c.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    p.add("cursor", "is not a cursor this server returned");
                    None
                }
            },
        };
        p.into_result()?;
        let only = match caller {
            Caller::Admin => None,
            Caller::Project(id) => Some(id.as_str()),
        };
        let mut rows = self.store.list_projects(after, limit + 1, only).await?;
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if has_more {
            rows.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            items.push(self.project_view(r).await?);
        }
        Ok(ListProjectsResponse {
            items,
            next_cursor,
            has_more,
        })
    }

    pub async fn update_project(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        body: UpdateProjectBody,
    ) -> AppResult<Project> {
        let mut p = Problems::default();
        if let Some(n) = &body.name {
            p.check("name", validate::display_text(n, MAX_PROJECT_NAME_CHARS));
        }
        if let Some(Some(d)) = &body.description {
            check_description(&mut p, d);
        }
        let clash = body
            .repos
            .as_ref()
            .and_then(|r| check_repos(&mut p, "repos", r));
        p.into_result()?;
        if let Some(c) = clash {
            return Err(AppError::Conflict(c));
        }
        // Optimistic concurrency: re-read and re-apply if another change landed in between.
        for _ in 0..5 {
            let mut row = self.project_for(caller, id).await?;
            if let Some(n) = &body.name {
                row.name = n.clone();
                row.task_code = task_code(n);
            }
            if let Some(d) = &body.description {
                row.description = d.clone();
            }
            if let Some(repos) = &body.repos {
                row.repos = self.repo_specs(caller, "repos", repos, &row.repos)?;
                let names: std::collections::HashSet<&str> =
                    row.repos.iter().map(|r| r.full_name.as_str()).collect();
                row.devbox.repos.retain(|k, _| names.contains(k.as_str()));
            }
            row.updated_at = self.now().max(row.updated_at);
            if self.store.update_project(&row).await? {
                self.learn_default_branches(&row.repos).await;
                self.nudge();
                return self.project_view(&row).await;
            }
        }
        Err(AppError::Conflict(
            "the project kept changing while this update was applied; try again".into(),
        ))
    }

    pub async fn delete_project(&self, caller: &Caller, id: &str) -> AppResult<()> {
        caller.require_admin()?;
        self.project_for(caller, id).await?;
        let live = [
            InstanceStatus::Provisioning,
            InstanceStatus::Ready,
            InstanceStatus::Claimed,
            InstanceStatus::Failed,
        ];
        for inst in self.store.instances_in(&live).await? {
            if inst.project_id == id {
                self.destroy_instance(&inst, &live, EndReason::ProjectDeleted)
                    .await?;
            }
        }
        self.store.delete_project(id).await?;
        tracing::info!(project = %id, "project deleted");
        Ok(())
    }

    pub async fn list_repos(&self, caller: &Caller, id: &str) -> AppResult<ListReposResponse> {
        let p = self.project_for(caller, id).await?;
        let mut items = Vec::new();
        for r in p.repos {
            items.push(RepoDetail {
                default_branch: self.store.get_default_branch(&self.source_key(&r)).await?,
                url: self.repo_display(&r),
                repo_full_name: r.full_name,
                branch: r.branch,
            });
        }
        Ok(ListReposResponse { items })
    }
}
