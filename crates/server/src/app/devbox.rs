//! Devbox settings: the setup commands of `project_setup` and of each repo's `repo_setup`.

use warmpool_types::api::{Devbox, DevboxRepo, UpdateDevboxBody};

use super::{check_commands, App, Caller};
use crate::error::{AppError, AppResult, Problems};

impl App {
    pub async fn get_devbox(&self, caller: &Caller, project_id: &str) -> AppResult<Devbox> {
        let p = self.project_for(caller, project_id).await?;
        Ok(Devbox {
            setup_commands: p.devbox.setup_commands.clone(),
            repos: p
                .repos
                .iter()
                .map(|r| DevboxRepo {
                    repo_full_name: r.full_name.clone(),
                    setup_commands: p
                        .devbox
                        .repos
                        .get(&r.full_name)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }

    pub async fn update_devbox(
        &self,
        caller: &Caller,
        project_id: &str,
        body: UpdateDevboxBody,
    ) -> AppResult<Devbox> {
        let mut p = Problems::default();
        if let Some(c) = &body.setup_commands {
            check_commands(&mut p, "setupCommands", c);
        }
        if let Some(repos) = &body.repos {
            for (i, r) in repos.iter().enumerate() {
                check_commands(
                    &mut p,
                    &format!("repos[{i}].setupCommands"),
                    &r.setup_commands,
                );
            }
        }
        p.into_result()?;
        for _ in 0..5 {
            let mut row = self.project_for(caller, project_id).await?;
            if let Some(repos) = &body.repos {
                let mut p = Problems::default();
                for (i, r) in repos.iter().enumerate() {
                    if !row.repos.iter().any(|x| x.full_name == r.repo_full_name) {
                        p.add(
                            format!("repos[{i}].repoFullName"),
                            format!("`{}` is not a repository of this project", r.repo_full_name),
                        );
                    }
                }
                p.into_result()?;
                for r in repos {
                    row.devbox
                        .repos
                        .insert(r.repo_full_name.clone(), r.setup_commands.clone());
                }
            }
            if let Some(c) = &body.setup_commands {
                row.devbox.setup_commands = c.clone();
            }
            row.updated_at = self.now().max(row.updated_at);
            if self.store.update_project(&row).await? {
                self.nudge();
                return self.get_devbox(caller, project_id).await;
            }
        }
        Err(AppError::Conflict(
            "the project kept changing while this update was applied; try again".into(),
        ))
    }
}
