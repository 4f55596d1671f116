//! Project tokens: bearer tokens that act on one project only. Only their hash is stored; the
//! secret is shown once, when created.

use warmpool_store::TokenRow;
use warmpool_types::api::{CreatedToken, ListTokensResponse, TokenItem};
use warmpool_types::ids;
use warmpool_types::time::fmt_ms;

use super::{hash_token, App, Caller};
use crate::error::{AppError, AppResult};

/// How stale `lastUsedAt` may get: it is written at most this often per token.
const TOUCH_EVERY_MS: i64 = 30_000;

impl App {
    pub async fn create_token(&self, caller: &Caller, project_id: &str) -> AppResult<CreatedToken> {
        caller.require_admin()?;
        self.project_for(caller, project_id).await?;
        let token = format!("wp_{}", ids::random_secret(40));
        let row = TokenRow {
            id: ids::new_token_id(),
            project_id: project_id.to_string(),
            hash: hex::encode(hash_token(&token)),
            created_at: self.now(),
            last_used_at: None,
        };
        self.store.insert_token(&row).await?;
        tracing::info!(project = %project_id, token = %row.id, "project token created");
        Ok(CreatedToken {
            id: row.id,
            token,
            created_at: fmt_ms(row.created_at),
        })
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        project_id: &str,
    ) -> AppResult<ListTokensResponse> {
        caller.require_admin()?;
        self.project_for(caller, project_id).await?;
        let items = self
            .store
            .list_tokens(project_id)
            .await?
            .into_iter()
            .map(|t| TokenItem {
                id: t.id,
                created_at: fmt_ms(t.created_at),
                last_used_at: t.last_used_at.map(fmt_ms),
            })
            .collect();
        Ok(ListTokensResponse { items })
    }

    pub async fn delete_token(&self, caller: &Caller, project_id: &str, id: &str) -> AppResult<()> {
        caller.require_admin()?;
        self.project_for(caller, project_id).await?;
        if !ids::is_token_id(id) || !self.store.delete_token(project_id, id).await? {
            return Err(AppError::not_found("token not found"));
        }
        tracing::info!(project = %project_id, token = %id, "project token revoked");
        Ok(())
    }

    /// A project token's caller, if `token` is one.
    pub(crate) async fn project_caller(&self, token: &str) -> AppResult<Option<Caller>> {
        let hash = hex::encode(hash_token(token));
        let Some(row) = self.store.token_by_hash(&hash).await? else {
            return Ok(None);
        };
        let now = self.now();
        if row.last_used_at.is_none_or(|t| t + TOUCH_EVERY_MS <= now) {
            self.store.touch_token(&row.id, now).await?;
        }
        Ok(Some(Caller::Project(row.project_id)))
    }
}
