//! `repo_setup`: runs the setup commands the project's devbox gives for one repository, in order,
//! from that repository's directory.

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::api::SetupCommand;
use warmpool_types::state::StepName;

use super::commands::{restart_background, run_commands};
use super::{from_golden, Step, StepCx};
use crate::provision::GoldenPlan;

/// Runs the setup commands of the project's repository number `.0`.
pub struct RepoSetup(pub usize);

impl RepoSetup {
    /// The repository's name, its setup commands and where they run.
    fn commands(&self, cx: &StepCx<'_>) -> Result<(String, Vec<SetupCommand>, String), String> {
        let repo = cx.repo(self.0)?;
        let cmds = cx.plan.project.devbox.repos.get(&repo.full_name);
        Ok((
            repo.full_name.clone(),
            cmds.cloned().unwrap_or_default(),
            format!("/home/{}", repo.dir_name()),
        ))
    }
}

#[async_trait]
impl Step for RepoSetup {
    fn name(&self) -> StepName {
        StepName::RepoSetup
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let (repo, cmds, cwd) = self.commands(cx)?;
        cx.meta.insert("repo".into(), json!(repo));
        cx.meta.insert("commands".into(), json!(cmds.len()));
        let what = format!("setup commands for {repo}");
        run_commands(cx, &cmds, &cwd, &what).await
    }

    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        let (repo, cmds, cwd) = self.commands(cx)?;
        from_golden(self.name(), Some(&repo), cx, golden);
        restart_background(cx, &cmds, &cwd).await
    }
}
