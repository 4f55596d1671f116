//! The one place where an [`AppError`] becomes an HTTP answer in the documented error shape.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use warmpool_types::api::{ErrorBody, ErrorResponse};

use crate::error::AppError;

impl AppError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            AppError::Internal(e) => {
                // The whole chain goes to the log; the client learns nothing internal.
                tracing::error!("internal error: {e:#}");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let details = match &self {
            AppError::Validation(d) => serde_json::to_value(d).ok(),
            _ => None,
        };
        let body = Json(ErrorResponse {
            error: ErrorBody {
                code: code.to_string(),
                message,
                details,
            },
        });
        match self {
            // The rest of the body was never read: the connection cannot carry another request.
            AppError::PayloadTooLarge(_) => {
                (status, [(header::CONNECTION, "close")], body).into_response()
            }
            AppError::RateLimited {
                retry_after_secs, ..
            } => (
                status,
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                body,
            )
                .into_response(),
            _ => (status, body).into_response(),
        }
    }
}
