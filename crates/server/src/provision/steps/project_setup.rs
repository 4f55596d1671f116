//! `project_setup`: runs the project's devbox setup commands, in order, from `/home`.

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::state::StepName;

use super::commands::{restart_background, run_commands};
use super::{from_golden, Step, StepCx};
use crate::provision::GoldenPlan;

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

    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        from_golden(self.name(), None, cx, golden);
        let cmds = cx.plan.project.devbox.setup_commands.clone();
        restart_background(cx, &cmds, "/home").await
    }
}
