//! Extractors that turn every malformed request into the documented error shape: a body that is not
//! JSON, has the wrong content type, unknown fields or wrong types is a 422 with `details` naming
//! the field; a body over the limit is a 413; a path id that cannot exist is a 404.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// A JSON body: required, a JSON object, `Content-Type: application/json`.
pub struct ApiJson<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Names the field a serde error is about: its path (which for an unknown field ends with it),
/// plus the field itself when one is missing.
fn field_of(path: &str, message: &str) -> String {
    let base = if path == "." { "" } else { path };
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|m| m.split('`').next())
            .map(str::to_string)
    };
    if let Some(missing) = named("missing field `") {
        return if base.is_empty() {
            missing
        } else {
            format!("{base}.{missing}")
        };
    }
    if !base.is_empty() {
        return base.to_string();
    }
    named("unknown field `").unwrap_or_else(|| "body".to_string())
}

/// Finds an array directly inside an array. serde would read such an array as a struct (fields by
/// position); no request body of this API has arrays of arrays, so it can only be a struct given in
/// the wrong shape, and is refused like any other type error.
fn nested_array(v: &serde_json::Value, path: &str) -> Option<String> {
    match v {
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let p = format!("{path}[{i}]");
            if item.is_array() {
                Some(p)
            } else {
                nested_array(item, &p)
            }
        }),
        serde_json::Value::Object(m) => m.iter().find_map(|(k, item)| {
            nested_array(
                item,
                &if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                },
            )
        }),
        _ => None,
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::invalid(
            "body",
            "a JSON object is required (send {} when there is nothing to set)",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| AppError::invalid("body", format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(AppError::invalid("body", "must be a JSON object"));
    }
    if let Some(path) = nested_array(&value, "") {
        return Err(AppError::invalid(
            path,
            "invalid type: array, expected an object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        AppError::invalid(field_of(&e.path().to_string(), &message), message)
    })
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge(
                    "the request body is larger than this server accepts".into(),
                )
            } else {
                AppError::invalid("body", format!("cannot read the body: {}", e.body_text()))
            }
        })?;
        let empty = bytes.iter().all(u8::is_ascii_whitespace);
        match content_type.as_deref() {
            Some(ct) if !is_json(ct) => {
                return Err(AppError::invalid(
                    "body",
                    format!("Content-Type must be application/json, not `{ct}`"),
                ))
            }
            None if !empty => {
                return Err(AppError::invalid(
                    "body",
                    "Content-Type must be application/json",
                ))
            }
            _ => {}
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(AppError::invalid("body", "the body is not UTF-8"));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Query parameters; a malformed one is a 422 naming it.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| AppError::invalid("query", e.body_text()))
    }
}

/// Path parameters; anything that does not parse is a 404, like an unknown id.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|_| AppError::not_found("not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_types::api::UpdateWarmPoolBody;

    fn field(body: &str) -> String {
        match parse_json::<UpdateWarmPoolBody>(body.as_bytes()) {
            Err(AppError::Validation(d)) => d[0].field.clone(),
            _ => panic!("expected a validation error for {body}"),
        }
    }

    #[test]
    fn names_the_field() {
        assert_eq!(field(r#"{"bogus": 1}"#), "bogus");
        assert_eq!(field(r#"{"enabled": "yes"}"#), "enabled");
        assert_eq!(
            field(r#"{"setupCommands": [{"name": "a"}]}"#),
            "setupCommands[0].command"
        );
        assert_eq!(
            field(r#"{"setupCommands": [{"name": "a", "command": "b", "x": 1}]}"#),
            "setupCommands[0].x"
        );
        assert_eq!(field(r#"{} {}"#), "body");
        assert_eq!(field(r#"[1]"#), "body");
        assert_eq!(
            field(r#"{"setupCommands": [["a", "b"]]}"#),
            "setupCommands[0]"
        );
        assert_eq!(field(r#"{"targetSize": "3"}"#), "targetSize");
    }

    #[test]
    fn a_body_is_required_and_null_is_kept_apart_from_absent() {
        assert_eq!(field(""), "body");
        assert_eq!(field("  "), "body");
        let b: UpdateWarmPoolBody = parse_json(b"{}").unwrap();
        assert!(b.enabled.is_none() && b.branch.is_none());
        let b: UpdateWarmPoolBody = parse_json(br#"{"branch": null}"#).unwrap();
        assert_eq!(b.branch, Some(None));
    }
}
