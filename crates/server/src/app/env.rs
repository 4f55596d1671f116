//! Environment variables: written to `/home/.env` at boot. Values go in and never come out.

use std::collections::HashSet;

use warmpool_types::api::{DeleteEnvVarResponse, EnvVarItem, EnvVarsResponse, PutEnvVarsBody};
use warmpool_types::time::fmt_ms;
use warmpool_types::validate;

use super::{App, Caller};
use crate::error::{AppError, AppResult, Problems};

const MAX_VALUE_CHARS: usize = 100_000;

impl App {
    pub async fn list_env_vars(
        &self,
        caller: &Caller,
        project_id: &str,
    ) -> AppResult<EnvVarsResponse> {
        self.project_for(caller, project_id).await?;
        let items = self
            .store
            .list_env_vars(project_id)
            .await?
            .into_iter()
            .map(|v| EnvVarItem {
                name: v.name,
                configured: true,
                updated_at: fmt_ms(v.updated_at),
            })
            .collect();
        Ok(EnvVarsResponse { items })
    }

    pub async fn put_env_vars(
        &self,
        caller: &Caller,
        project_id: &str,
        body: PutEnvVarsBody,
    ) -> AppResult<EnvVarsResponse> {
        self.project_for(caller, project_id).await?;
        let mut p = Problems::default();
        if body.variables.is_empty() || body.variables.len() > 100 {
            p.add("variables", "must hold 1 to 100 variables");
        }
        let mut seen = HashSet::new();
        for (i, v) in body.variables.iter().enumerate() {
            if let Err(m) = validate::project_env_name(&v.name) {
                p.add(format!("variables[{i}].name"), m);
            } else if !seen.insert(v.name.as_str()) {
                p.add(
                    format!("variables[{i}].name"),
                    format!("`{}` is given twice", v.name),
                );
            }
            if v.value.chars().count() > MAX_VALUE_CHARS {
                p.add(
                    format!("variables[{i}].value"),
                    format!("must be at most {MAX_VALUE_CHARS} characters"),
                );
            }
            if v.value.contains('\0') {
                p.add(
                    format!("variables[{i}].value"),
                    "must not contain NUL bytes",
                );
            }
        }
        p.into_result()?;
        // Sealed before they reach the store; the plain values live only in memory.
        let vars: Vec<(String, String)> = body
            .variables
            .into_iter()
            .map(|v| (v.name, self.seal(&v.value)))
            .collect();
        self.store
            .upsert_env_vars(project_id, &vars, self.now())
            .await?;
        tracing::info!(project = %project_id, count = vars.len(), "environment variables set");
        self.nudge();
        self.list_env_vars(caller, project_id).await
    }

    pub async fn delete_env_var(
        &self,
        caller: &Caller,
        project_id: &str,
        name: &str,
    ) -> AppResult<DeleteEnvVarResponse> {
        self.project_for(caller, project_id).await?;
        if !self.store.delete_env_var(project_id, name).await? {
            return Err(AppError::not_found("environment variable not found"));
        }
        self.nudge();
        Ok(DeleteEnvVarResponse {
            deleted: true,
            name: name.to_string(),
        })
    }
}
