//! `warm_pool_setup`: runs the pool's own setup commands from `/home`, then takes the last look
//! before the VM is called ready: every background service of the boot, whichever step started
//! it, must still run (or have ended with 0).

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::state::StepName;

use super::commands::{check_background, restart_background, run_commands};
use super::{from_golden, Step, StepCx};
use crate::provision::GoldenPlan;

pub struct WarmPoolSetup;

#[async_trait]
impl Step for WarmPoolSetup {
    fn name(&self) -> StepName {
        StepName::WarmPoolSetup
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let cmds = cx.plan.pool_commands.clone();
        cx.meta.insert("commands".into(), json!(cmds.len()));
        run_commands(cx, &cmds, "/home", "warm pool setup commands").await?;
        check_background(cx, true).await
    }

    /// The golden ran the commands; its background services run again here where processes do
    /// not come with a clone, and the last look is taken as on any VM.
    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        from_golden(self.name(), None, cx, golden);
        let cmds = cx.plan.pool_commands.clone();
        restart_background(cx, &cmds, "/home").await?;
        check_background(cx, true).await
    }
}
