//! Requests about a VM hosted by another node (`exec`, events) are passed on to that node, with
//! the caller's own token, and its answer streamed back as it comes.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::app::{App, Caller};
use crate::error::{AppError, AppResult};

/// Marks a forwarded request, so that it is never forwarded again (no loops between nodes that
/// disagree for a moment about where a VM is).
pub const FORWARDED: &str = "x-warmpool-forwarded-by";

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("an HTTP client")
    })
}

/// Passes the request on when instance `id` is hosted by another live node; `None` when it is
/// this node's to answer.
pub async fn if_remote(
    app: &Arc<App>,
    caller: &Caller,
    project_id: &str,
    id: &str,
    headers: &HeaderMap,
    uri: &Uri,
    body: Option<Vec<u8>>,
) -> AppResult<Option<Response>> {
    let inst = app.instance_for(caller, project_id, id).await?;
    let Some(base) = app.remote_node_url(&inst).await? else {
        return Ok(None);
    };
    if headers.contains_key(FORWARDED) {
        return Err(AppError::Unavailable(
            "the nodes disagree about where this VM is; retry shortly".into(),
        ));
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let method = if body.is_some() {
        reqwest::Method::POST
    } else {
        reqwest::Method::GET
    };
    let mut req = client()
        .request(method, format!("{base}{path}"))
        .header(FORWARDED, &app.cfg.node.name);
    for name in [header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let node = inst.node.clone().unwrap_or_default();
    let resp = req.send().await.map_err(|e| {
        tracing::warn!(%node, "forwarding to the VM's node failed: {e}");
        AppError::Unavailable(format!(
            "the VM's node {node} cannot be reached now; retry shortly"
        ))
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let mut out = (status, Body::from_stream(resp.bytes_stream())).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(Some(out))
}
