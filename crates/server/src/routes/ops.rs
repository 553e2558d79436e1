//! Health, metrics, the API description and the dashboard.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use crate::state::AppState;

/// The dashboard: one self-contained page, embedded in the binary.
pub const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

/// Liveness: answers without a token.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The server is up")))]
pub async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "success": true,
        "status": "ok",
        "backend": state.vm.store().backend(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .blocking({
            let metrics = std::sync::Arc::clone(&state.metrics);
            move |vm| metrics.render(vm)
        })
        .await;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The live dashboard.
#[utoipa::path(get, path = "/", tag = "ops", responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
pub async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// This API's OpenAPI 3.1 description, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::routes::routes().1)
}
