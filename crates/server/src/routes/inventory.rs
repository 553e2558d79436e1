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
use crate::stream::{body_error_kind, BodyReader, BodyWriter};

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
    responses((status = 200, body = StatsResponse)))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<StatsResponse>, ApiError> {
    let stats = state.blocking(|vm| vm.stats()).await?;
    Ok(Json(StatsResponse {
        success: true,
        stats,
        timestamp: now_rfc3339(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ExportQuery {
    /// Include each block's data (base64).
    #[serde(default)]
    pub data: bool,
}

/// Every block and the statistics as one JSON document, streamed. With `?data=true` each block
/// carries its data (seeded blocks only with their seed in `X-AetherFlow-Seed`).
#[utoipa::path(get, path = "/api/memory/export", tag = "memory", params(ExportQuery,
        ("X-AetherFlow-Seed" = Option<String>, Header, description = "Include the data of this seed's blocks")),
    responses((status = 200, description = "The export document (aetherflow-export/1)", content_type = "application/json")))]
pub async fn export(
    State(state): State<AppState>,
    Query(query): Query<ExportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    pub skipped: Vec<(String, String)>,
}

/// Restores the blocks of an export document (read as a stream), keeping their ids; seeded
/// blocks are imported under `X-AetherFlow-Seed`.
#[utoipa::path(post, path = "/api/memory/import", tag = "memory",
    request_body(content = Object, description = "An export document", content_type = "application/json"),
    params(("X-AetherFlow-Seed" = Option<String>, Header, description = "Seed for seeded blocks")),
    responses((status = 200, body = ImportResponse), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
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
        VmError::InvalidArgument(m) if m.contains("too large") || m.contains("size limit") => {
            ApiError::too_large(limit)
        }
        VmError::Io(io) if body_error_kind(io).is_some() => ApiError::too_large(limit),
        _ => ApiError::from_vm(e),
    })?;
    Ok(Json(ImportResponse {
        success: true,
        imported: summary.imported,
        imported_bytes: summary.imported_bytes,
        skipped: summary.skipped,
    }))
}
