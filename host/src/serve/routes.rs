//! Which handler answers which path, and what every request passes first: the body
//! read in full within its deadline and size, then the API key.

use super::error::ApiError;
use super::{Shared, json_api, openrlhf, tei, triton, vllm};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

pub fn router(state: Shared, max_body: usize) -> Router {
    let model_routes = |base: &str| {
        Router::new()
            .route(base, get(triton::model_metadata))
            .route(&format!("{base}/ready"), get(triton::model_ready))
            .route(&format!("{base}/config"), get(triton::model_config))
            .route(&format!("{base}/infer"), post(triton::infer))
    };
    let protected = Router::new()
        .route("/v2", get(triton::server_metadata))
        .merge(model_routes("/v2/models/{name}"))
        .merge(model_routes("/v2/models/{name}/versions/{version}"))
        .route("/v1/score", post(json_api::score))
        .route("/classify", post(vllm::classify))
        .route("/pooling", post(vllm::pooling))
        .route("/predict", post(tei::predict))
        .route("/get_reward", post(openrlhf::get_reward))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), require_key));
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .merge(protected)
        .fallback(|request: Request| async move {
            ApiError::new(StatusCode::NOT_FOUND, format!("no route for {} {}", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} does not take {} (see the Allow header)", request.uri().path(), request.method()),
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), read_body_in_time))
        .with_state(state)
}

/// Reads the whole body within `--body-read-timeout` (408 otherwise) and the body limit
/// (413), before any handler sees the request.
async fn read_body_in_time(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match state.limits.read_body(request).await {
        Ok(request) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn require_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key
        && !key.accepts(request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong `Authorization: Bearer` key").into_response();
    }
    next.run(request).await
}

async fn metrics(State(state): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
