//! `project_setup`: runs the project's devbox setup commands, in order, from `/home`.

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::state::StepName;

use super::commands::run_commands;
use super::{Step, StepCx};

pub struct ProjectSetup;

#[async_trait]
impl Step for ProjectSetup {
    fn name(&self) -> StepName {
        StepName::ProjectSetup
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let cmds = cx.plan.project.devbox.setup_commands.clone();
        cx.meta.insert("commands".into(), json!(cmds.len()));
        run_commands(cx, &cmds, "/home", "project setup commands").await
    }
}
