//! Handlers of the compatible warm-pool endpoints and of the instance extensions.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use warmpool_types::api::{
    ClearWarmPoolBody, ClearWarmPoolResponse, ExecBody, ExecResponse, GetWarmPoolResponse,
    ListInstancesQuery, ListWarmPoolInstancesResponse, TestWarmPoolBootBody,
    TestWarmPoolBootResponse, UpdateWarmPoolBody, UpdateWarmPoolResponse, WarmPoolInstanceDetail,
};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiResult, StdErrors};
use crate::app::{App, Caller};
use crate::error::AppError;

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool", tag = "warm-pool", operation_id = "getWarmPool",
    summary = "Get warm pool config",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = GetWarmPoolResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_warm_pool(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<GetWarmPoolResponse>> {
    app.get_warm_pool(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    patch, path = "/v1/projects/{projectId}/warm-pool", tag = "warm-pool", operation_id = "updateWarmPool",
    summary = "Update warm pool config (partial)",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = UpdateWarmPoolBody,
    responses((status = 200, description = "Success", body = UpdateWarmPoolResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn update_warm_pool(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateWarmPoolBody>,
) -> ApiResult<Json<UpdateWarmPoolResponse>> {
    app.update_warm_pool(&caller, &project_id, body)
        .await
        .map(Json)
}

#[utoipa::path(
    post, path = "/v1/projects/{projectId}/warm-pool/test", tag = "warm-pool", operation_id = "testWarmPoolBoot",
    summary = "Start a test boot now; poll the instance for its result",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = TestWarmPoolBootBody,
    responses((status = 200, description = "Success", body = TestWarmPoolBootResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn test_boot(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<TestWarmPoolBootBody>,
) -> ApiResult<Json<TestWarmPoolBootResponse>> {
    app.test_boot(&caller, &project_id, body).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/instances", tag = "warm-pool",
    operation_id = "listWarmPoolInstances", summary = "List instances, newest first",
    params(("projectId" = String, Path, description = "Project ID."), ListInstancesQuery),
    responses((status = 200, description = "Success", body = ListWarmPoolInstancesResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn list_instances(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListInstancesQuery>,
) -> ApiResult<Json<ListWarmPoolInstancesResponse>> {
    app.list_instances(&caller, &project_id, q.limit, q.status.as_deref())
        .await
        .map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/warm-pool/instances/{id}", tag = "warm-pool",
    operation_id = "getWarmPoolInstance", summary = "An instance's status, summary and step log",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    responses((status = 200, description = "Success", body = WarmPoolInstanceDetail), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<WarmPoolInstanceDetail>> {
    app.get_instance(&caller, &project_id, &id).await.map(Json)
}

#[utoipa::path(
    delete, path = "/v1/projects/{projectId}/warm-pool/instances/{id}", tag = "instances",
    operation_id = "deleteWarmPoolInstance", summary = "Destroy an instance and its VM",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    responses((status = 204, description = "Destroyed"), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn delete_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    app.delete_instance(&caller, &project_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/v1/projects/{projectId}/warm-pool/instances/{id}/exec", tag = "instances",
    operation_id = "execInWarmPoolInstance",
    summary = "Run a command in a ready test instance or a claimed instance",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("id" = String, Path, description = "Warm pool instance ID (wpi_...)."),
    ),
    request_body = ExecBody,
    responses(
        (status = 200, description = "Success", body = ExecResponse),
        (status = 409, body = warmpool_types::api::ErrorResponse, description = "The instance does not accept commands"),
        StdErrors
    ),
    security(("bearerAuth" = []))
)]
pub async fn exec(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Response> {
    let json = serde_json::to_vec(&body).map_err(AppError::internal)?;
    if let Some(r) =
        super::forward::if_remote(&app, &caller, &project_id, &id, &headers, &uri, Some(json))
            .await?
    {
        return Ok(r);
    }
    Ok(Json(app.exec(&caller, &project_id, &id, body).await?).into_response())
}

#[utoipa::path(
    post, path = "/v1/projects/{projectId}/warm-pool/clear", tag = "warm-pool", operation_id = "clearWarmPool",
    summary = "Destroy the pool's unclaimed instances; refill or disable",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = ClearWarmPoolBody,
    responses((status = 200, description = "Success", body = ClearWarmPoolResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn clear(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<ClearWarmPoolBody>,
) -> ApiResult<Json<ClearWarmPoolResponse>> {
    app.clear_warm_pool(&caller, &project_id, body)
        .await
        .map(Json)
}
