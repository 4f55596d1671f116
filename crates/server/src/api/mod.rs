//! The HTTP API: thin handlers that parse, call the app layer and map the result; authentication;
//! the generated OpenAPI document. Shapes are in `warmpool_types::api`; errors become HTTP in
//! `error.rs` only.

mod dashboard;
mod error;
pub mod extract;
mod forward;
mod pool;
mod projects;
mod warm_pool;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warmpool_types::api::{ErrorBody, ErrorResponse, FieldError, HealthResponse};

use crate::app::App;
use crate::error::AppError;

pub type ApiResult<T> = Result<T, AppError>;

/// The error answers every authenticated endpoint may give. Each refers to the one
/// `ErrorResponse` component rather than inlining it (`#[to_schema]` would): a client generated
/// from the document then has one error type, not a copy per endpoint and status.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum StdErrors {
    #[response(status = 401, description = "Unauthorized")]
    Unauthorized(ErrorResponse),
    #[response(status = 403, description = "Forbidden")]
    Forbidden(ErrorResponse),
    #[response(status = 404, description = "Not found")]
    NotFound(ErrorResponse),
    #[response(status = 413, description = "Body too large")]
    PayloadTooLarge(ErrorResponse),
    #[response(status = 422, description = "Validation error")]
    Validation(ErrorResponse),
    #[response(status = 500, description = "Internal error")]
    Internal(ErrorResponse),
    #[response(status = 503, description = "Temporarily unavailable; retry")]
    Unavailable(ErrorResponse),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An admin or project token (wp_...)"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "warmpool",
        description = "Pools of ready VMs per project: configure a pool, test its boot, read the \
            step-by-step log, run commands in its VMs. The warm-pool endpoints are compatible with \
            the public warm-pool API (v1, 2026-06-26)."
    ),
    // Registered here, not only through the endpoints that happen to name them, so that every
    // `$ref` to the error shape resolves whichever endpoints exist.
    components(schemas(ErrorResponse, ErrorBody, FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "warm-pool", description = "The compatible warm-pool API"),
        (name = "projects", description = "Projects, repositories, environment variables, devbox settings, resource limits"),
        (name = "instances", description = "Running commands in and destroying instances"),
        (name = "health", description = "Liveness, readiness, this document"),
    )
)]
struct ApiDoc;

async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match app.authenticate(token).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Success", body = HealthResponse)))]
async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Success", body = HealthResponse),
    (status = 503, body = ErrorResponse, description = "The store cannot be reached"),
))]
async fn readyz(State(app): State<Arc<App>>) -> ApiResult<Json<HealthResponse>> {
    app.store.ping().await.map_err(|e| {
        tracing::warn!("readiness check failed: {e}");
        AppError::Unavailable("the store cannot be reached".into())
    })?;
    Ok(Json(HealthResponse {
        status: "ready".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

/// Builds the whole HTTP application.
/// `/metrics`: Prometheus text; behind the admin token when configured so.
async fn metrics_text(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    protected: bool,
) -> Response {
    if protected {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Err(e) = app
            .authenticate(token)
            .await
            .and_then(|c| c.require_admin())
        {
            return e.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub max_body_bytes: usize,
    pub metrics_auth: bool,
    /// How long an ordinary request may take; claims, exec and event streams are exempt (they
    /// wait or stream by design, bounded by their own parameters).
    pub request_timeout: std::time::Duration,
}

/// Answers 503 `unavailable` when a request takes longer than its limit.
async fn time_limit(
    State(limit): State<std::time::Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => AppError::Unavailable(format!(
            "the request did not finish within {} s; retry",
            limit.as_secs()
        ))
        .into_response(),
    }
}

pub fn router(app: Arc<App>, opts: HttpOptions) -> Router {
    let quick = OpenApiRouter::new()
        .routes(routes!(
            warm_pool::get_warm_pool,
            warm_pool::update_warm_pool
        ))
        .routes(routes!(warm_pool::test_boot))
        .routes(routes!(warm_pool::list_instances))
        .routes(routes!(warm_pool::get_instance, warm_pool::delete_instance))
        .routes(routes!(warm_pool::clear))
        .routes(routes!(pool::vm))
        .routes(routes!(pool::lifecycle))
        .routes(routes!(pool::renew))
        .routes(routes!(pool::stats))
        .routes(routes!(pool::get_autoscale, pool::update_autoscale))
        .routes(routes!(pool::history))
        .routes(routes!(projects::create_project, projects::list_projects))
        .routes(routes!(
            projects::get_project,
            projects::update_project,
            projects::delete_project
        ))
        .routes(routes!(projects::list_repos))
        .routes(routes!(projects::list_env_vars, projects::put_env_vars))
        .routes(routes!(projects::delete_env_var))
        .routes(routes!(projects::get_devbox, projects::update_devbox))
        .routes(routes!(projects::get_resources, projects::update_resources))
        .routes(routes!(projects::get_leases, projects::update_leases))
        .routes(routes!(projects::create_token, projects::list_tokens))
        .routes(routes!(projects::delete_token))
        .layer(middleware::from_fn_with_state(
            opts.request_timeout,
            time_limit,
        ));
    let long = OpenApiRouter::new()
        .routes(routes!(warm_pool::exec))
        .routes(routes!(pool::claim))
        .routes(routes!(pool::instance_events))
        .routes(routes!(pool::project_events));
    let (v1, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(quick)
        .merge(long)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .split_for_parts();
    let (open, open_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts();
    doc.merge(open_doc);
    let doc = Arc::new(doc);
    Router::new()
        .merge(v1)
        .merge(open)
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(dashboard::routes())
        .route(
            "/metrics",
            axum::routing::get(move |state, headers| {
                metrics_text(state, headers, opts.metrics_auth)
            }),
        )
        .fallback(|| async { AppError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            let body = Json(ErrorResponse {
                error: ErrorBody {
                    code: "method_not_allowed".into(),
                    message: "this endpoint does not support that method".into(),
                    details: None,
                },
            });
            (StatusCode::METHOD_NOT_ALLOWED, body)
        })
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn slow_requests_get_503_in_the_error_shape() {
        let app: Router = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fast", axum::routing::get(|| async { "ok" }))
            .layer(middleware::from_fn_with_state(
                std::time::Duration::from_millis(50),
                time_limit,
            ));
        let slow = app
            .clone()
            .oneshot(
                Request::get("/slow")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(slow.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
        let fast = app
            .oneshot(
                Request::get("/fast")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(fast.status(), StatusCode::OK);
    }
}
