//! The routes, their OpenAPI description (generated from the handlers' annotations), and the
//! middleware around them.

pub mod blocks;
pub mod codec;
pub mod inventory;
pub mod ops;
pub mod volumes;

use axum::http::HeaderMap;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::AppState;

/// Header that carries a seed for requests without a JSON body.
pub const SEED_HEADER: &str = "x-aetherflow-seed";

#[derive(OpenApi)]
#[openapi(
    info(title = "AetherFlow", description = "Compressed, deduplicating, encrypted virtual memory store"),
    tags((name = "memory", description = "Blocks of the virtual memory store"), (name = "volumes", description = "Volumes: thin block devices served over NBD"), (name = "ops", description = "Health, metrics, description"))
)]
struct ApiDoc;

/// Every route with its handler, and the OpenAPI document that describes exactly those.
pub fn routes() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(blocks::allocate))
        .routes(routes!(blocks::read))
        .routes(routes!(blocks::free))
        .routes(routes!(inventory::stats))
        .routes(routes!(inventory::export))
        .routes(routes!(inventory::import))
        .routes(routes!(codec::compress))
        .routes(routes!(codec::decompress))
        .routes(routes!(volumes::create, volumes::list))
        .routes(routes!(volumes::info, volumes::delete))
        .routes(routes!(volumes::snapshot))
        .routes(routes!(volumes::clone))
        .routes(routes!(volumes::unlock))
        .routes(routes!(volumes::lock))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::dashboard))
        .routes(routes!(ops::openapi))
        .split_for_parts()
}

/// The seed of a request: the JSON field if given, else the header. Never logged.
pub fn seed_from(
    body_seed: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<aetherflow_vm::Seed>, ApiError> {
    // A header that is there is checked even when the body names the seed: a malformed one is
    // the client's mistake either way.
    let header = headers
        .get(SEED_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request("BAD_SEED", "the X-AetherFlow-Seed header must be text")
                })
                .and_then(parse_seed)
        })
        .transpose()?;
    match body_seed {
        Some(text) => parse_seed(text).map(Some),
        None => Ok(header),
    }
}

fn parse_seed(text: &str) -> Result<aetherflow_vm::Seed, ApiError> {
    aetherflow_vm::Seed::new(text.as_bytes().to_vec()).map_err(|_| {
        ApiError::bad_request(
            "BAD_SEED",
            "the seed is empty: omit it or send a non-empty one",
        )
    })
}

/// Refuses a declared body length over the limit before reading a byte of it.
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<Option<u64>, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(ApiError::too_large(limit)),
        other => Ok(other),
    }
}

/// Reads a whole (JSON) body within the limit.
pub async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    limit: u64,
) -> Result<bytes::Bytes, ApiError> {
    check_declared_length(headers, limit)?;
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|e| match crate::stream::BodyFault::of_body_error(&e) {
            Some(fault) => fault.response(limit),
            None => {
                ApiError::bad_request("BAD_BODY", format!("reading the request body failed: {e}"))
            }
        })
}

/// Parses a JSON body into `T`, naming the field at fault.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("BAD_JSON", format!("invalid JSON body: {e}")))
}

/// Decodes a base64 field, naming it.
pub fn base64_field(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| {
            ApiError::bad_request(
                "BAD_BASE64",
                format!("field \"{field}\" is not valid standard base64: {e}"),
            )
        })
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
