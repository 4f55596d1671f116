//! `set_env_vars`: writes the project's environment variables to `/home/.env` (mode 0600), quoted
//! for a shell to `source`; the log names them, never their values.

use async_trait::async_trait;
use serde_json::json;
use warmpool_types::state::StepName;

use super::{Step, StepCx};
use crate::provision::{envfile, GoldenPlan};

pub struct SetEnvVars;

#[async_trait]
impl Step for SetEnvVars {
    fn name(&self) -> StepName {
        StepName::SetEnvVars
    }

    /// A clone writes the file for real, from the variables as they are now.
    async fn on_clone(&self, cx: &mut StepCx<'_>, _golden: &GoldenPlan) -> Result<(), String> {
        self.run(cx).await
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let agent = cx.agent()?;
        let vars = &cx.plan.env;
        cx.meta.insert("count".into(), json!(vars.len()));
        let content = envfile::render(vars.iter().map(|v| (v.name.as_str(), v.value.as_str())));
        agent
            .write_file("/home/.env", content.into_bytes(), 0o600)
            .await
            .map_err(|e| format!("could not write /home/.env: {e}"))?;
        if vars.is_empty() {
            cx.log
                .line("no environment variables are configured; wrote an empty /home/.env");
        } else {
            let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            cx.log.line(&format!(
                "wrote {} variable{} to /home/.env (mode 0600): {}",
                vars.len(),
                if vars.len() == 1 { "" } else { "s" },
                names.join(", ")
            ));
        }
        Ok(())
    }
}
