//! Handlers of the project extensions: projects, repositories, environment variables, devbox,
//! resources.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use warmpool_types::api::{
    CreateProjectBody, CreateTokenBody, CreatedToken, DeleteEnvVarResponse, Devbox,
    EnvVarsResponse, Leases, ListProjectsQuery, ListProjectsResponse, ListReposResponse,
    ListTokensResponse, Project, PutEnvVarsBody, Resources, UpdateDevboxBody, UpdateLeasesBody,
    UpdateProjectBody, UpdateResourcesBody,
};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiResult, StdErrors};
use crate::app::{App, Caller};

#[utoipa::path(
    post, path = "/v1/projects", tag = "projects", operation_id = "createProject",
    summary = "Create a project from repositories (admin)",
    request_body = CreateProjectBody,
    responses(
        (status = 201, description = "Created", body = Project),
        (status = 409, body = warmpool_types::api::ErrorResponse, description = "Two repositories share a name"),
        StdErrors
    ),
    security(("bearerAuth" = []))
)]
pub async fn create_project(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateProjectBody>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let p = app.create_project(&caller, body).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[utoipa::path(
    get, path = "/v1/projects", tag = "projects", operation_id = "listProjects",
    summary = "List the projects this token may see",
    params(ListProjectsQuery),
    responses((status = 200, description = "Success", body = ListProjectsResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn list_projects(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListProjectsQuery>,
) -> ApiResult<Json<ListProjectsResponse>> {
    app.list_projects(&caller, q.limit, q.cursor.as_deref())
        .await
        .map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}", tag = "projects", operation_id = "getProject",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = Project), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_project(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<Project>> {
    app.get_project(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    patch, path = "/v1/projects/{projectId}", tag = "projects", operation_id = "updateProject",
    summary = "Change name, description or the repository list (replaced whole)",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = UpdateProjectBody,
    responses(
        (status = 200, description = "Success", body = Project),
        (status = 409, body = warmpool_types::api::ErrorResponse, description = "Two repositories share a name"),
        StdErrors
    ),
    security(("bearerAuth" = []))
)]
pub async fn update_project(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateProjectBody>,
) -> ApiResult<Json<Project>> {
    app.update_project(&caller, &project_id, body)
        .await
        .map(Json)
}

#[utoipa::path(
    delete, path = "/v1/projects/{projectId}", tag = "projects", operation_id = "deleteProject",
    summary = "Destroy every VM of the project, then the project (admin)",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 204, description = "Deleted"), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn delete_project(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.delete_project(&caller, &project_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/repos", tag = "projects", operation_id = "listRepos",
    summary = "The project's repositories with their URLs",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = ListReposResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn list_repos(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<ListReposResponse>> {
    app.list_repos(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/environment-variables", tag = "projects",
    operation_id = "listEnvironmentVariables", summary = "Names of the variables (values are never returned)",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = EnvVarsResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn list_env_vars(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<EnvVarsResponse>> {
    app.list_env_vars(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    put, path = "/v1/projects/{projectId}/environment-variables", tag = "projects",
    operation_id = "upsertEnvironmentVariables", summary = "Set variables; those not named are kept",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = PutEnvVarsBody,
    responses((status = 200, description = "Success", body = EnvVarsResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn put_env_vars(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<PutEnvVarsBody>,
) -> ApiResult<Json<EnvVarsResponse>> {
    app.put_env_vars(&caller, &project_id, body).await.map(Json)
}

#[utoipa::path(
    delete, path = "/v1/projects/{projectId}/environment-variables/{name}", tag = "projects",
    operation_id = "deleteEnvironmentVariable",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("name" = String, Path, description = "Variable name."),
    ),
    responses((status = 200, description = "Success", body = DeleteEnvVarResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn delete_env_var(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<DeleteEnvVarResponse>> {
    app.delete_env_var(&caller, &project_id, &name)
        .await
        .map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/devbox", tag = "projects", operation_id = "getDevbox",
    summary = "Setup commands of project_setup and of each repo's repo_setup",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = Devbox), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_devbox(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<Devbox>> {
    app.get_devbox(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    patch, path = "/v1/projects/{projectId}/devbox", tag = "projects", operation_id = "updateDevbox",
    summary = "Replace the project's setup commands and/or those of the repos listed",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = UpdateDevboxBody,
    responses((status = 200, description = "Success", body = Devbox), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn update_devbox(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateDevboxBody>,
) -> ApiResult<Json<Devbox>> {
    app.update_devbox(&caller, &project_id, body)
        .await
        .map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/resources", tag = "projects", operation_id = "getResources",
    summary = "What each VM of the project may use: CPUs, memory, processes, disk",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = Resources), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_resources(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<Resources>> {
    app.get_resources(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    patch, path = "/v1/projects/{projectId}/resources", tag = "projects", operation_id = "updateResources",
    summary = "Change the limits of the VMs booted from now on (admin); ready VMs become stale",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = UpdateResourcesBody,
    responses((status = 200, description = "Success", body = Resources), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn update_resources(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateResourcesBody>,
) -> ApiResult<Json<Resources>> {
    app.update_resources(&caller, &project_id, body)
        .await
        .map(Json)
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/leases", tag = "projects", operation_id = "getLeases",
    summary = "How long the project's claimed VMs live unless renewed: the default and longest lease",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = Leases), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn get_leases(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<Leases>> {
    app.get_leases(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    patch, path = "/v1/projects/{projectId}/leases", tag = "projects", operation_id = "updateLeases",
    summary = "Change the default and longest lease of claims from now on (admin)",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = UpdateLeasesBody,
    responses((status = 200, description = "Success", body = Leases), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn update_leases(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateLeasesBody>,
) -> ApiResult<Json<Leases>> {
    app.update_leases(&caller, &project_id, body)
        .await
        .map(Json)
}

#[utoipa::path(
    post, path = "/v1/projects/{projectId}/tokens", tag = "projects", operation_id = "createProjectToken",
    summary = "Create a token that acts on this project only (admin); its secret is shown once",
    params(("projectId" = String, Path, description = "Project ID.")),
    request_body = CreateTokenBody,
    responses((status = 201, description = "Created", body = CreatedToken), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn create_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(_body): ApiJson<CreateTokenBody>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let t = app.create_token(&caller, &project_id).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

#[utoipa::path(
    get, path = "/v1/projects/{projectId}/tokens", tag = "projects", operation_id = "listProjectTokens",
    summary = "The project's tokens, without their secrets (admin)",
    params(("projectId" = String, Path, description = "Project ID.")),
    responses((status = 200, description = "Success", body = ListTokensResponse), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn list_tokens(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<Json<ListTokensResponse>> {
    app.list_tokens(&caller, &project_id).await.map(Json)
}

#[utoipa::path(
    delete, path = "/v1/projects/{projectId}/tokens/{tokenId}", tag = "projects", operation_id = "deleteProjectToken",
    summary = "Revoke a project token (admin)",
    params(
        ("projectId" = String, Path, description = "Project ID."),
        ("tokenId" = String, Path, description = "Token ID (tok_...)."),
    ),
    responses((status = 204, description = "Revoked"), StdErrors),
    security(("bearerAuth" = []))
)]
pub async fn delete_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((project_id, token_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    app.delete_token(&caller, &project_id, &token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
