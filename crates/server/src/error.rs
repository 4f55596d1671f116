//! The one error type of the server. Use cases return it; the API turns it into the documented
//! HTTP error shape in exactly one place (`api::error`). Internal failures keep their whole chain
//! for the log and say nothing internal to the client; temporary unavailability is kept apart so
//! clients know to retry.

use warmpool_store::StoreError;
use warmpool_types::api::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{}", validation_message(.0))]
    Validation(Vec<FieldError>),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn validation_message(details: &[FieldError]) -> String {
    match details {
        [] => "the request is not valid".to_string(),
        [one] => format!("invalid request: {}: {}", one.field, one.message),
        [first, rest @ ..] => format!(
            "invalid request: {}: {} (and {} more problem{})",
            first.field,
            first.message,
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

impl AppError {
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    /// Whether a client may simply try again.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::RateLimited { .. })
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!("store unavailable: {m}");
                Self::Unavailable("the store is temporarily unavailable; retry shortly".into())
            }
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

/// Collects validation problems so a request gets all of them at once.
#[derive(Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn check(&mut self, field: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.add(field, m);
        }
    }

    pub fn into_result(self) -> Result<(), AppError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.0))
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;
