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

/// The `charset` a JSON content type names, if any (lower-cased, unquoted). JSON is UTF-8
/// (RFC 8259): a body announced in any other charset would be read as something it is not.
fn charset(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (k, v) = param.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    })
}

/// Reads JSON into a [`serde_json::Value`] like `serde_json::from_slice`, but refuses an object
/// that gives one key twice — which a plain parse would resolve silently, the last one winning —
/// naming where.
struct NoDuplicates<'a> {
    path: String,
    duplicate: &'a std::cell::RefCell<Option<String>>,
}

impl NoDuplicates<'_> {
    fn at(&self, path: String) -> Self {
        NoDuplicates {
            path,
            duplicate: self.duplicate,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicates<'_> {
    type Value = serde_json::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicates<'_> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) =
            seq.next_element_seed(self.at(format!("{}[{}]", self.path, items.len())))?
        {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom(format!(
                    "the key `{key}` is given twice"
                )));
            }
            let v = map.next_value_seed(self.at(path))?;
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// Parses a JSON document, refusing duplicate keys: `Err((field, message))`.
fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, (String, String)> {
    use serde::de::DeserializeSeed;
    let duplicate = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = NoDuplicates {
        path: String::new(),
        duplicate: &duplicate,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| match duplicate.take() {
        Some(field) => (
            field,
            "is given twice in this object; give each key once".to_string(),
        ),
        None => ("body".to_string(), format!("not valid JSON: {e}")),
    })
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
    let value = parse_value(bytes).map_err(|(field, m)| AppError::invalid(field, m))?;
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
            Some(ct) => {
                if let Some(cs) = charset(ct).filter(|c| c != "utf-8" && c != "utf8") {
                    return Err(AppError::invalid(
                        "body",
                        format!("JSON bodies must be UTF-8, not charset `{cs}`: send `Content-Type: application/json` (or `; charset=utf-8`)"),
                    ));
                }
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
        assert_eq!(field(r#"{"enabled": true, "enabled": false}"#), "enabled");
        assert_eq!(
            field(r#"{"setupCommands": [{"name": "a", "command": "b", "name": "c"}]}"#),
            "setupCommands[0].name"
        );
    }

    #[test]
    fn charsets() {
        assert_eq!(charset("application/json"), None);
        assert_eq!(
            charset("application/json; charset=UTF-8").as_deref(),
            Some("utf-8")
        );
        assert_eq!(
            charset("application/json;charset=\"utf-16\"").as_deref(),
            Some("utf-16")
        );
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
