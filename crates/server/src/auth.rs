//! Bearer-token check for every route but `/healthz`, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Compares digests rather than the strings, so that neither content nor length leaks through
/// timing.
fn same_token(given: &str, expected: &str) -> bool {
    let a = blake3::hash(given.as_bytes());
    let b = blake3::hash(expected.as_bytes());
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.config.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_token(g, expected)) {
        return next.run(request).await;
    }
    if request.uri().path() == "/" {
        // A browser cannot send the header on navigation: the page (which holds no data) comes
        // with the 401 and asks for the token itself.
        let mut page = (
            StatusCode::UNAUTHORIZED,
            Html(crate::routes::ops::DASHBOARD),
        )
            .into_response();
        page.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return page;
    }
    ApiError::unauthorized().into_response()
}
