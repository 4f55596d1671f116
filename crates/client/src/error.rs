//! What can go wrong talking to a warmpool server: the server said no (its status and, when it sent
//! one, its `ErrorResponse`), or the request never got an answer that could be read.

use std::path::PathBuf;

use reqwest::StatusCode;
use warmpool_types::api::{ErrorResponse, FieldError};

/// An error of a [`crate::Client`] call.
///
/// Each message already carries the text of the error underneath it, so no variant exposes that
/// error as its `source()`: a caller printing the whole chain (`anyhow`'s `{:#}`) would otherwise
/// print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status. `error` is its answer when that was the
    /// documented error shape; `body` is the answer as it came either way.
    #[error("{}", api_message(*status, error.as_ref(), body))]
    Api {
        status: StatusCode,
        error: Option<ErrorResponse>,
        body: String,
    },
    /// No connection could be made to the server.
    #[error("cannot reach the warmpool server at {base}: is `warmpool serve` running? ({cause})")]
    Unreachable { base: String, cause: reqwest::Error },
    /// The request was sent, or started, but failed on the way (reset, timeout, TLS).
    #[error("request to {url} failed: {cause}")]
    Transport { url: String, cause: reqwest::Error },
    /// The answer's body could not be read to its end.
    #[error("cannot read the answer: {0}")]
    Read(reqwest::Error),
    /// A successful answer that is not the shape this client was built against.
    #[error("the server's answer is not what this client expects: {0}")]
    Decode(serde_json::Error),
    /// An event stream broke off in the middle.
    #[error("the event stream broke: {0}")]
    Stream(String),
    /// An event of a stream that is not one of `warmpool_types::events`.
    #[error("the server sent an event this client cannot read: {0}")]
    Event(String),
    /// The CA certificate to trust could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    CaCert {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The CA certificate to trust is not a PEM certificate.
    #[error("{} is not a PEM certificate: {cause}", path.display())]
    Pem {
        path: PathBuf,
        cause: reqwest::Error,
    },
    /// The token has characters an HTTP header cannot carry.
    #[error("the token cannot be sent in an HTTP header (it has a control character)")]
    Token,
    /// The HTTP client could not be built (its TLS setup, typically).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(reqwest::Error),
}

impl ClientError {
    /// An error answer of the server, from its status and body as they came.
    pub(crate) fn api(status: StatusCode, body: &[u8]) -> Self {
        ClientError::Api {
            status,
            error: serde_json::from_slice(body).ok(),
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error answer, when it sent one in the documented shape.
    pub fn error_response(&self) -> Option<&ErrorResponse> {
        match self {
            ClientError::Api { error, .. } => error.as_ref(),
            _ => None,
        }
    }

    /// The fields a validation error (422) names, with why each was refused.
    pub fn field_errors(&self) -> Vec<FieldError> {
        self.error_response().map(field_errors).unwrap_or_default()
    }

    /// Whether the request got no answer at all (as opposed to an answer saying no).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Transport { .. }
                | ClientError::Read(_)
                | ClientError::Stream(_)
        )
    }
}

fn field_errors(e: &ErrorResponse) -> Vec<FieldError> {
    e.error
        .details
        .as_ref()
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_default()
}

/// The server's message and code, then one line per field it refused; or, for an answer that is
/// not the error shape (a proxy's page, say), the status and the answer itself.
fn api_message(status: StatusCode, error: Option<&ErrorResponse>, body: &str) -> String {
    match error {
        Some(e) => {
            let mut msg = format!("{} ({})", e.error.message, e.error.code);
            for d in field_errors(e) {
                msg.push_str(&format!("\n  {}: {}", d.field, d.message));
            }
            msg
        }
        None => format!("the server answered {status}: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_reads_as_the_server_wrote_it() {
        let body = br#"{"error": {"code": "validation_error", "message": "invalid request",
            "details": [{"field": "targetSize", "message": "must be between 1 and 20"}]}}"#;
        let e = ClientError::api(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(
            e.to_string(),
            "invalid request (validation_error)\n  targetSize: must be between 1 and 20"
        );
        assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(e.field_errors()[0].field, "targetSize");
        assert!(!e.is_transport());

        let e = ClientError::api(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "the server answered 502 Bad Gateway: <html>bad gateway</html>"
        );
        assert!(e.error_response().is_none());
        assert!(e.field_errors().is_empty());
    }
}
