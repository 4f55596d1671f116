//! Handlers of the pool extensions: claiming VMs, reaching them, stats, live events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{BoxStream, StreamExt};
use warmpool_types::api::{
    Autoscale, ClaimBody, ClaimResponse, ErrorResponse, InstanceLifecycle, PoolHistory, PoolStats,
    RenewBody, UpdateAutoscaleBody, VmAccess,
};

use super::extract::{ApiJson, ApiPath};
use super::{ApiResult, StdErrors};
use crate::app::events::Sequenced;
use crate::app::{App, Caller};

#[utoipa::path(
    post, path = "/v1/projects/{projectId}/warm-pool/claim", tag = "instances", operation_id = "claimWarmPoolInstance",
    summary = "Claim a VM for a task: a ready one at once, else one booted for the claim",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = ClaimBody,
    responses(
        (status = 200, description = "The VM is yours", body = ClaimResponse),
        (status = 202, description = "None was ready; the VM booted for this claim is not ready yet (or failed): poll the instance", body = ClaimResponse),
        StdErrors
    ),
    security(("bearerAuth" = []))
)]
pub async fn claim(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<(StatusCode, Json<ClaimResponse>)> {
    let (done, r) = app.claim(&caller, &project_id, body).await?;
    Ok((
        if done {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        },
        Json(r),
    ))
}

#[utoipa::path(
    post, path = "/v1/projects/{projectId}/warm-pool/instances/{id}/renew", tag = "instances",
    operation_id = "renewWarmPoolInstance",
    summary = "Extend a claimed VM's lease, from now",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    request_body = RenewBody,
    responses(
        (status = 200, description = "Success", body = InstanceLifecycle),
        (status = 409, description = "Not claimed, or its lease ran out", body = ErrorResponse),
        StdErrors
    ),
    security(("bearerAuth" = []))
)]
pub async fn renew(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RenewBody>,
) -> ApiResult<Json<InstanceLifecycle>> {
    app.renew(&caller, &project_id, &id, body).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/instances/{id}/lifecycle", tag = "instances",
    operation_id = "getWarmPoolInstanceLifecycle",
    summary = "What happened to an instance beyond its boot: who claimed it, when and why it was ended",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    responses((status = 200, description = "Success", body = InstanceLifecycle), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn lifecycle(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<InstanceLifecycle>> {
    app.instance_lifecycle(&caller, &project_id, &id)
        .await
        .map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/instances/{id}/vm", tag = "instances", operation_id = "getWarmPoolInstanceVm",
    summary = "How to reach a claimed VM's server directly",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    responses(
        (status = 200, description = "Success", body = VmAccess),
        (status = 409, description = "The instance is not claimed", body = ErrorResponse),
        StdErrors
    ),
    security(("bearerAuth" = []))
)]
pub async fn vm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<VmAccess>> {
    app.vm_access(&caller, &project_id, &id).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/stats", tag = "warm-pool", operation_id = "getWarmPoolStats",
    summary = "The pool in numbers: counts, staleness, degradation, claims, boot times",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = PoolStats), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn stats(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<PoolStats>> {
    app.pool_stats(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/autoscale", tag = "warm-pool", operation_id = "getAutoscale",
    summary = "Whether the pool sizes itself from the claims it sees, and within which bounds",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = Autoscale), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_autoscale(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<Autoscale>> {
    app.get_autoscale(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    patch, path = "/v1/projects/{projectId}/warm-pool/autoscale", tag = "warm-pool", operation_id = "updateAutoscale",
    summary = "Turn autoscale on or off, or change its bounds; `stats` then shows the effective target",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = UpdateAutoscaleBody,
    responses((status = 200, description = "Success", body = Autoscale), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn update_autoscale(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateAutoscaleBody>,
) -> ApiResult<Json<Autoscale>> {
    app.update_autoscale(&caller, &project_id, body)
        .await
        .map(Json)
}

/// One server-sent event as it arrives: `event` is `step`, `output` or `done`; `data` is its JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ServerSentEvent {
    /// `step` (a step started or ended), `output` (new output of the running step) or `done`.
    event: String,
    /// Position in the instance's stream.
    id: String,
    /// The event as JSON: `{instanceId, name, status, metadata, durationMs?, error?}` for `step`,
    /// `{instanceId, step, data}` for `output`, `{instanceId, status, summary}` for `done`.
    data: String,
}

type EventStream =
    Sse<axum::response::sse::KeepAliveStream<BoxStream<'static, Result<SseEvent, Infallible>>>>;

fn sse(events: BoxStream<'static, Arc<Sequenced>>) -> EventStream {
    let stream = events
        .map(|e| {
            let ev = SseEvent::default()
                .event(e.event.kind().as_str())
                .id(e.seq.to_string())
                .json_data(&e.event)
                .unwrap_or_else(|_| SseEvent::default().comment("unserializable event"));
            Ok(ev)
        })
        .boxed();
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/instances/{id}/events", tag = "instances",
    operation_id = "streamWarmPoolInstanceEvents",
    summary = "Server-sent events of a boot: `step` (start and end), `output`, then `done`; late clients get everything so far first",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    responses((status = 200, description = "A stream of server-sent events", content_type = "text/event-stream", body = ServerSentEvent), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn instance_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    // A boot's live events are held by the node running it.
    if let Some(r) =
        super::forward::if_remote(&app, &caller, &project_id, &id, &headers, &uri, None).await?
    {
        return Ok(r);
    }
    Ok(sse(app.instance_events(&caller, &project_id, &id).await?).into_response())
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/events", tag = "warm-pool",
    operation_id = "streamWarmPoolEvents",
    summary = "Server-sent events of every boot of the project, from now on (each carries its instanceId)",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "A stream of server-sent events", content_type = "text/event-stream", body = ServerSentEvent), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn project_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<EventStream> {
    Ok(sse(app.project_events(&caller, &project_id).await?))
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/history", tag = "warm-pool", operation_id = "getWarmPoolHistory",
    summary = "The pool's size over the last hour (ready, booting, claimed, failed), sampled at most every 15 s",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = PoolHistory), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn history(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<PoolHistory>> {
    app.pool_history(&caller, &project_id).await.map(Json)
}
