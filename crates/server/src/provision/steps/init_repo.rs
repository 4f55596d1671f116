//! `init_repo`: runs a repository's own setup hooks — `hooks.setup` of its
//! `.capy/settings.json`, if it has one — from the repository's directory.

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::api::SetupCommand;
use warmpool_types::state::StepName;

use super::commands::run_commands;
use super::{from_golden, Step, StepCx};
use crate::provision::{settings, GoldenPlan};

/// Runs the hooks of the project's repository number `.0`.
pub struct InitRepo(pub usize);

#[async_trait]
impl Step for InitRepo {
    fn name(&self) -> StepName {
        StepName::InitRepo
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let agent = cx.agent()?;
        let repo = cx.repo(self.0)?.clone();
        let full = &repo.full_name;
        cx.meta.insert("repo".into(), json!(full));
        cx.meta.insert("hooks".into(), json!(0));
        let dir = format!("/home/{}", repo.dir_name());
        let path = format!("{dir}/.capy/settings.json");
        let Some(bytes) = agent
            .read_file(&path)
            .await
            .map_err(|e| format!("could not read {path}: {e}"))?
        else {
            cx.log.line(&format!(
                "{full} has no .capy/settings.json; no hooks to run"
            ));
            return Ok(());
        };
        let hooks = match settings::setup_hooks(&bytes) {
            Ok(Some(h)) => h,
            Ok(None) => {
                cx.log.line(&format!(
                    "the .capy/settings.json of {full} has no hooks.setup; no hooks to run"
                ));
                return Ok(());
            }
            Err(e) => return Err(format!("{e} in .capy/settings.json of {full}")),
        };
        cx.meta.insert("hooks".into(), json!(hooks.len()));
        let cmds: Vec<SetupCommand> = hooks
            .into_iter()
            .map(|h| SetupCommand {
                name: String::new(),
                command: h,
                background: None,
            })
            .collect();
        run_commands(cx, &cmds, &dir, &format!("hooks.setup of {full}")).await
    }

    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        let repo = cx.repo(self.0)?.full_name.clone();
        from_golden(self.name(), Some(&repo), cx, golden);
        Ok(())
    }
}
