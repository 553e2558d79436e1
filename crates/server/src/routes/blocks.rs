//! Allocate, read and free blocks: as JSON with base64 data, or as raw streamed bytes.

use std::io::{self, Write};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use aetherflow_engine::units::format_bytes;
use aetherflow_vm::{parse_block_id, Error as VmError};

use super::{base64_field, check_declared_length, parse_json, read_body, seed_from};
use crate::error::ApiError;
use crate::state::AppState;
use crate::stream::{parse_range, BodyFault, BodyReader, BodyWriter, RangeRequest};

/// `POST /api/memory/allocate` as JSON. Borrows from the body, so that a large block's base64
/// is not copied before it is decoded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest<'a> {
    /// The block's content, standard base64.
    #[serde(borrow)]
    #[schema(value_type = String, format = Byte)]
    pub data: std::borrow::Cow<'a, str>,
    /// Optional seed: keys the block's encryption and dedup domain; needed to read it back.
    #[serde(default, borrow)]
    #[schema(value_type = Option<String>, min_length = 1)]
    pub seed: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocateResponse {
    pub success: bool,
    pub block_id: String,
    pub original_size: u64,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadResponse {
    pub success: bool,
    pub block_id: String,
    /// The content, standard base64.
    pub data: String,
    pub size: u64,
    /// The content matched its SHA-256.
    pub verified: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FreeResponse {
    pub success: bool,
    pub block_id: String,
    pub message: String,
}

/// The error body of every failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub success: bool,
    pub error: String,
    pub code: String,
}

fn wants_raw(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"))
}

/// Maps a manager error met while reading a request body: limit and stall first.
fn upload_error(e: VmError, limit: u64) -> ApiError {
    if let VmError::Io(io) = &e {
        if let Some(fault) = BodyFault::of(io) {
            return fault.response(limit);
        }
    }
    ApiError::from_vm(e)
}

/// Stores a block. JSON body `{"data": base64, "seed"?}`, or the raw bytes with
/// `Content-Type: application/octet-stream` (seed in `X-AetherFlow-Seed`), streamed.
#[utoipa::path(post, path = "/api/memory/allocate", tag = "memory",
    request_body(content((AllocateRequest = "application/json"), (Vec<u8> = "application/octet-stream"))),
    params(("X-AetherFlow-Seed" = Option<String>, Header, description = "Seed for a raw upload", min_length = 1)),
    responses(
        (status = 200, description = "Stored, durable", body = AllocateResponse),
        (status = 400, description = "Bad JSON, base64 or seed", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 408, description = "The body stopped arriving", body = ErrorBody),
        (status = 413, description = "Body over --max-body", body = ErrorBody),
        (status = 500, description = "A failure on the server (logged)", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody),
        (status = 507, description = "Virtual capacity exhausted", body = ErrorBody)))]
pub async fn allocate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AllocateResponse>, ApiError> {
    let limit = state.config.max_body;
    let id = if wants_raw(&headers, header::CONTENT_TYPE) {
        let hint = check_declared_length(&headers, limit)?;
        let seed = seed_from(None, &headers)?;
        let _permit = state.stream_permit().await;
        let (reader, pump) = BodyReader::new(body, limit);
        let result = state
            .blocking(move |vm| vm.allocate_from(reader, hint, seed.as_ref()))
            .await;
        let received = pump.await.unwrap_or(0);
        let id = result.map_err(|e| upload_error(e, limit))?;
        (id, received)
    } else {
        let _permit = state.heavy_permit().await;
        let (data, seed) = {
            let bytes = read_body(body, &headers, limit).await?;
            let request: AllocateRequest<'_> = parse_json(&bytes)?;
            let seed = seed_from(request.seed.as_deref(), &headers)?;
            (base64_field("data", &request.data)?, seed)
        }; // the body and its base64 are gone before the work starts
        let len = data.len() as u64;
        let id = state
            .blocking(move |vm| vm.allocate(&data, seed.as_ref()))
            .await?;
        (id, len)
    };
    let (id, size) = id;
    Ok(Json(AllocateResponse {
        success: true,
        block_id: id.to_string(),
        original_size: size,
        message: format!(
            "Successfully allocated {} in virtual memory",
            format_bytes(size)
        ),
    }))
}

/// Returns a block: JSON with base64 data, or with `Accept: application/octet-stream` the raw
/// bytes, streamed, with `Range` support. Seeded blocks need `X-AetherFlow-Seed`.
#[utoipa::path(get, path = "/api/memory/read/{blockId}", tag = "memory",
    params(("blockId" = String, Path, description = "Block id (UUID)", format = Uuid),
        ("X-AetherFlow-Seed" = Option<String>, Header, description = "Seed of a seeded block", min_length = 1),
        ("Range" = Option<String>, Header, description = "bytes=START-END, raw reads only")),
    responses(
        (status = 200, description = "The block", body = ReadResponse),
        (status = 206, description = "Part of the block (raw)"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token or seed", body = ErrorBody),
        (status = 404, description = "Unknown block", body = ErrorBody),
        (status = 413, description = "Too large to return as JSON: read it raw", body = ErrorBody),
        (status = 416, description = "Range outside the block", body = ErrorBody),
        (status = 500, description = "Stored data damaged, or a failure on the server", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    Path(block_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_block_id(&block_id)?;
    let seed = seed_from(None, &headers)?;
    let raw = wants_raw(&headers, header::ACCEPT);
    // A cache hit needs no blocking thread: answer it here.
    if let Some(hit) = state.vm.read_if_cached(id, seed.as_ref()) {
        let data = hit?;
        return Ok(if raw {
            raw_from_memory(data, &headers)
        } else if data.len() <= INLINE_ENCODE {
            read_json(id, &data)
        } else {
            state.blocking(move |_| read_json(id, &data)).await
        });
    }
    if !raw {
        let _permit = state.heavy_permit().await;
        return Ok(state
            .blocking(move |vm| vm.read(id, seed.as_ref()).map(|data| read_json(id, &data)))
            .await?);
    }
    let seed_for_size = seed_from(None, &headers)?; // a seed is not Clone: parse it again
    let size = state
        .blocking(move |vm| vm.block_size(id, seed_for_size.as_ref()))
        .await?;
    if size <= WHOLE_RAW_READ {
        // Small enough to read whole: verified before the first byte goes out, and cached for
        // the next read.
        let _permit = state.heavy_permit().await;
        let data = state.blocking(move |vm| vm.read(id, seed.as_ref())).await?;
        return Ok(raw_from_memory(data, &headers));
    }
    let permit = state.stream_permit().await;
    let Some((status, range)) = resolve_range(&headers, size) else {
        return Ok(unsatisfiable(size));
    };
    let (writer, body) = BodyWriter::new(state.config.body_timeout);
    let want = range.clone();
    let whole = status == StatusCode::OK;
    let vm = std::sync::Arc::clone(&state.vm);
    tokio::task::spawn_blocking(move || {
        let _permit = permit; // held until the stream ends
        let mut writer = writer;
        let result = vm
            .read_to(id, seed.as_ref(), (!whole).then_some(want), &mut writer)
            .and_then(|_| writer.flush().map_err(VmError::Io));
        if let Err(e) = result {
            if !matches!(&e, VmError::Io(io) if io.kind() == io::ErrorKind::BrokenPipe) {
                tracing::error!("raw read of block {id} stopped: {e}");
            }
            writer.abort("the block could not be read whole");
        }
    });
    Ok(raw_response(status, range, size, body))
}

/// Raw reads of blocks up to this size go through the cache (read whole, verified, kept);
/// larger ones are streamed.
const WHOLE_RAW_READ: u64 = 4 << 20;

/// Blocks up to this size are base64-encoded on the async thread (about 0.1 ms).
const INLINE_ENCODE: usize = 256 * 1024;

/// The JSON answer of a read, assembled in one buffer: base64 needs no escaping, so serde's
/// string scan over megabytes is skipped.
fn read_json(id: aetherflow_vm::BlockId, data: &[u8]) -> Response {
    use base64::Engine;
    let mut body = String::with_capacity(data.len() / 3 * 4 + 128);
    body.push_str("{\"success\":true,\"blockId\":\"");
    body.push_str(&id.to_string());
    body.push_str("\",\"data\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(data, &mut body);
    body.push_str(&format!("\",\"size\":{},\"verified\":true}}", data.len()));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A raw read of a block already in memory (a cache hit), with `Range` support.
fn raw_from_memory(data: bytes::Bytes, headers: &HeaderMap) -> Response {
    let size = data.len() as u64;
    let Some((status, range)) = resolve_range(headers, size) else {
        return unsatisfiable(size);
    };
    let body = data.slice(range.start as usize..range.end as usize);
    raw_response(status, range, size, Body::from(body))
}

/// The status and byte range a request's `Range` header asks of `size` bytes; `None` when no
/// byte of it exists (answer [`unsatisfiable`]).
fn resolve_range(headers: &HeaderMap, size: u64) -> Option<(StatusCode, std::ops::Range<u64>)> {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match parse_range(range_header, size) {
        RangeRequest::Whole => Some((StatusCode::OK, 0..size)),
        RangeRequest::Part(r) => Some((StatusCode::PARTIAL_CONTENT, r)),
        RangeRequest::Unsatisfiable => None,
    }
}

fn unsatisfiable(size: u64) -> Response {
    let mut response = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "RANGE_NOT_SATISFIABLE",
        format!("the block has {size} bytes"),
    )
    .into_response();
    response.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
    );
    response
}

fn raw_response(
    status: StatusCode,
    range: std::ops::Range<u64>,
    size: u64,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{size}", range.start, range.end - 1))
                .expect("ascii"),
        );
    }
    response
}

/// Removes a block and reclaims the space no other block shares. Seeded blocks need their seed.
#[utoipa::path(delete, path = "/api/memory/free/{blockId}", tag = "memory",
    params(("blockId" = String, Path, description = "Block id (UUID)", format = Uuid),
        ("X-AetherFlow-Seed" = Option<String>, Header, description = "Seed of a seeded block", min_length = 1)),
    responses(
        (status = 200, description = "Freed", body = FreeResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token or seed", body = ErrorBody),
        (status = 404, description = "Unknown block", body = ErrorBody),
        (status = 500, description = "A failure on the server (logged)", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody)))]
pub async fn free(
    State(state): State<AppState>,
    Path(block_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<FreeResponse>, ApiError> {
    let id = parse_block_id(&block_id)?;
    let seed = seed_from(None, &headers)?;
    let size = state
        .blocking(move |vm| {
            let size = vm.block_size(id, seed.as_ref())?;
            vm.free(id).map(|()| size)
        })
        .await?;
    Ok(Json(FreeResponse {
        success: true,
        block_id: id.to_string(),
        message: format!("Freed {} of virtual memory", format_bytes(size)),
    }))
}
