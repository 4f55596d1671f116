//! `repo_setup`: runs the setup commands the project's devbox gives for one repository, in order,
//! from that repository's directory.

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::state::StepName;

use super::commands::run_commands;
use super::{from_golden, Step, StepCx};
use crate::provision::GoldenPlan;

/// Runs the setup commands of the project's repository number `.0`.
pub struct RepoSetup(pub usize);

#[async_trait]
impl Step for RepoSetup {
    fn name(&self) -> StepName {
        StepName::RepoSetup
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let repo = cx.repo(self.0)?.clone();
        let cmds = cx
            .plan
            .project
            .devbox
            .repos
            .get(&repo.full_name)
            .cloned()
            .unwrap_or_default();
        cx.meta.insert("repo".into(), json!(repo.full_name));
        cx.meta.insert("commands".into(), json!(cmds.len()));
        let cwd = format!("/home/{}", repo.dir_name());
        let what = format!("setup commands for {}", repo.full_name);
        run_commands(cx, &cmds, &cwd, &what).await
    }

    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        let repo = cx.repo(self.0)?.full_name.clone();
        from_golden(self.name(), Some(&repo), cx, golden);
        Ok(())
    }
}
