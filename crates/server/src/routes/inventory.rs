//! The store as a whole: statistics, export and import.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use aetherflow_vm::Error as VmError;

use super::blocks::ErrorBody;
use super::{check_declared_length, seed_from};
use crate::error::ApiError;
use crate::state::AppState;
use crate::stream::{BodyFault, BodyReader, BodyWriter};

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    pub success: bool,
    /// The figures of SPEC §3 endpoint 3: human strings and exact `bytes`, `ratios`, `cache`.
    #[schema(value_type = Object)]
    pub stats: aetherflow_vm::Stats,
    /// RFC 3339.
    pub timestamp: String,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Capacity, usage, ratios, cache, and one entry per block.
#[utoipa::path(get, path = "/api/memory/stats", tag = "memory",
    responses((status = 200, body = StatsResponse),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<StatsResponse>, ApiError> {
    let stats = state.blocking(|vm| vm.stats()).await?;
    Ok(Json(StatsResponse {
        success: true,
        stats,
        timestamp: now_rfc3339(),
    }))
}

/// What import reads of an export document (other fields are ignored): its blocks.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // a schema only: the manager streams the document itself
pub struct ImportDocument {
    blocks: Vec<ImportBlockDoc>,
}

/// One block of an import document.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ImportBlockDoc {
    /// The block's id, kept on import.
    #[schema(format = Uuid)]
    id: String,
    /// Its content, standard base64; a block without data is skipped.
    #[schema(format = Byte)]
    data: Option<String>,
    /// Whether it was allocated with a seed (imported under the request's seed).
    #[schema(default = false)]
    seeded: Option<bool>,
    /// SHA-256 hex of the content, checked when present.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    checksum: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Include each block's data (base64).
    #[serde(default)]
    pub data: bool,
}

/// Every block and the statistics as one JSON document, streamed. With `?data=true` each block
/// carries its data (seeded blocks only with their seed in `X-AetherFlow-Seed`).
#[utoipa::path(get, path = "/api/memory/export", tag = "memory", params(ExportQuery,
        ("X-AetherFlow-Seed" = Option<String>, Header, description = "Include the data of this seed's blocks", min_length = 1)),
    responses((status = 200, description = "The export document (aetherflow-export/1)", content_type = "application/json"),
        (status = 400, description = "An empty or malformed seed, or a bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::bad_request("BAD_QUERY", format!("{e}: data is true or false")))?;
    let seed = seed_from(None, &headers)?;
    let permit = state.stream_permit().await;
    let (writer, body) = BodyWriter::new(state.config.body_timeout);
    let vm = std::sync::Arc::clone(&state.vm);
    tokio::task::spawn_blocking(move || {
        let _permit = permit; // held until the document is written
        let mut writer = writer;
        let result = vm
            .export(&mut writer, query.data, seed.as_ref())
            .and_then(|_| std::io::Write::flush(&mut writer).map_err(VmError::Io));
        if let Err(e) = result {
            tracing::error!("export stopped: {e}");
            writer.abort("the export could not be completed");
        }
    });
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResponse {
    pub success: bool,
    pub imported: u64,
    pub imported_bytes: u64,
    /// `[id, reason]` of each block left out.
    #[schema(value_type = Vec<Vec<String>>)]
    pub skipped: Vec<(String, String)>,
}

/// Restores the blocks of an export document (read as a stream), keeping their ids; seeded
/// blocks are imported under `X-AetherFlow-Seed`.
#[utoipa::path(post, path = "/api/memory/import", tag = "memory",
    request_body(content = ImportDocument, description = "An export document", content_type = "application/json"),
    params(("X-AetherFlow-Seed" = Option<String>, Header, description = "Seed for seeded blocks", min_length = 1)),
    responses((status = 200, body = ImportResponse),
        (status = 400, description = "Not an export document, or a bad seed", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 408, description = "The body stopped arriving", body = ErrorBody),
        (status = 413, description = "Body over --max-body", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody),
        (status = 507, description = "Virtual capacity exhausted", body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportResponse>, ApiError> {
    let limit = state.config.max_body;
    check_declared_length(&headers, limit)?;
    let seed = seed_from(None, &headers)?;
    let _permit = state.stream_permit().await;
    let (reader, pump) = BodyReader::new(body, limit);
    let result = state
        .blocking(move |vm| vm.import(reader, seed.as_ref()))
        .await;
    pump.abort();
    let summary = result.map_err(|e| match &e {
        VmError::Io(io) => match BodyFault::of(io) {
            Some(fault) => fault.response(limit),
            None => ApiError::bad_request("BAD_BODY", format!("reading the document failed: {io}")),
        },
        _ => ApiError::from_vm(e),
    })?;
    Ok(Json(ImportResponse {
        success: true,
        imported: summary.imported,
        imported_bytes: summary.imported_bytes,
        skipped: summary.skipped,
    }))
}
