//! Compress and decompress `.af` data in one request, storing nothing.

use std::io::{self, Write};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use aetherflow_engine::{
    compress as af_compress, decompress as af_decompress, AfSource, CompressOptions,
    DecompressOptions, Error as EngineError, NoProgress, Sink, Source,
};

use super::blocks::ErrorBody;
use super::{base64, base64_field, parse_json, read_body, seed_from};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressRequest {
    /// Content to compress, standard base64.
    #[schema(format = Byte)]
    pub data: String,
    /// Optional seed: the `.af` output is encrypted under it.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub seed: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompressResponse {
    pub success: bool,
    pub original_size: u64,
    pub compressed_size: u64,
    /// originalSize / compressedSize, a number (4096 for 1 MiB of zeros): SPEC §3.
    pub ratio: f64,
    /// Space saved, as "76.47%" (negative when the output is larger).
    pub compression_percent: String,
    /// The `.af` bytes, standard base64.
    pub compressed: String,
    /// SHA-256 hex of the original.
    pub checksum: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecompressRequest {
    /// `.af` bytes, standard base64.
    #[schema(format = Byte)]
    pub compressed: String,
    /// The seed the file was encrypted with, if it was.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub seed: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecompressResponse {
    pub success: bool,
    pub data: String,
    pub size: u64,
    pub checksum: String,
    pub verified: bool,
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::InvalidMagic => ApiError::bad_request(
            "INVALID_MAGIC",
            "Invalid AetherFlow magic: \"compressed\" is not .af data",
        ),
        EngineError::UnsupportedVersion { .. } => {
            ApiError::bad_request("UNSUPPORTED_VERSION", e.to_string())
        }
        EngineError::Corrupt(_) => ApiError::bad_request("CORRUPT_INPUT", e.to_string()),
        EngineError::LimitExceeded(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "LIMIT_EXCEEDED",
            e.to_string(),
        ),
        EngineError::SeedRequired => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "SEED_REQUIRED",
            "this .af data is encrypted: send its \"seed\"",
        ),
        EngineError::WrongSeed => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "WRONG_SEED",
            "wrong seed: it does not open this .af data",
        ),
        EngineError::InvalidArgument(m) => ApiError::bad_request("INVALID_ARGUMENT", m),
        EngineError::Io(io) if io.get_ref().is_some_and(|e| e.is::<OutputTooLarge>()) => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "OUTPUT_TOO_LARGE",
                format!("{io}"),
            )
        }
        EngineError::Io(io) => ApiError::internal("decompression", io),
    }
}

/// Compresses data into `.af` bytes (encrypted under a seed if one is given).
#[utoipa::path(post, path = "/api/memory/compress", tag = "memory", request_body = CompressRequest,
    responses((status = 200, body = CompressResponse), (status = 400, body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn compress(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CompressResponse>, ApiError> {
    let _permit = state.heavy_permit().await;
    let bytes = read_body(body, &headers, state.config.max_body).await?;
    let request: CompressRequest = parse_json(&bytes)?;
    let seed = seed_from(request.seed.as_deref(), &headers)?;
    let data = base64_field("data", &request.data)?;
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let options = CompressOptions {
            seed: seed.as_ref(),
            ..CompressOptions::default()
        };
        let original = data.len() as u64;
        let summary = af_compress(
            Source::Stream(Box::new(io::Cursor::new(data))),
            &mut out,
            &options,
            &NoProgress,
        )
        .map_err(engine_error)?;
        let compressed = out.len() as u64;
        Ok(Json(CompressResponse {
            success: true,
            original_size: original,
            compressed_size: compressed,
            ratio: aetherflow_engine::units::ratio(original, compressed),
            compression_percent: format!(
                "{:.2}%",
                if original == 0 {
                    0.0
                } else {
                    (1.0 - compressed as f64 / original as f64) * 100.0
                }
            ),
            compressed: base64(&out),
            checksum: aetherflow_engine::hex::encode(&summary.sha256),
        }))
    })
    .await
    .map_err(|e| ApiError::internal("compression", e))?
}

/// Largest content `decompress` returns as JSON.
const MAX_JSON_OUTPUT: u64 = 64 << 20;

/// Marks the error of an output that outgrew its limit.
#[derive(Debug)]
struct OutputTooLarge(u64);

impl std::fmt::Display for OutputTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the decompressed content exceeds {} bytes: use the CLI or a raw block for data this large", self.0)
    }
}

impl std::error::Error for OutputTooLarge {}

/// A `Vec` that refuses to grow past a limit, so that a tiny hostile `.af` claiming terabytes
/// of content cannot make the server allocate them.
struct Bounded {
    out: Vec<u8>,
    limit: u64,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.out.len() as u64 + data.len() as u64 > self.limit {
            return Err(io::Error::other(OutputTooLarge(self.limit)));
        }
        self.out.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Restores `.af` bytes, verifying their SHA-256; a wrong seed gets 401 and no data.
#[utoipa::path(post, path = "/api/memory/decompress", tag = "memory", request_body = DecompressRequest,
    responses((status = 200, body = DecompressResponse), (status = 400, body = ErrorBody),
        (status = 401, description = "Missing or wrong token; seed missing or wrong", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn decompress(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DecompressResponse>, ApiError> {
    let _permit = state.heavy_permit().await;
    let bytes = read_body(body, &headers, state.config.max_body).await?;
    let request: DecompressRequest = parse_json(&bytes)?;
    let seed = seed_from(request.seed.as_deref(), &headers)?;
    let af = base64_field("compressed", &request.compressed)?;
    // The answer is held whole, and again as base64: keep it modest. Larger content belongs in a
    // raw block or the CLI.
    let limit = state
        .config
        .max_body
        .min(state.vm.config().max_whole_read)
        .min(MAX_JSON_OUTPUT);
    tokio::task::spawn_blocking(move || {
        let mut out = Bounded {
            out: Vec::new(),
            limit,
        };
        let options = DecompressOptions {
            seed: seed.as_ref(),
            ..DecompressOptions::default()
        };
        let summary = af_decompress(
            AfSource::Stream(Box::new(io::Cursor::new(af))),
            Sink::Stream(&mut out),
            &options,
            &NoProgress,
        )
        .map_err(engine_error)?;
        Ok(Json(DecompressResponse {
            success: true,
            size: out.out.len() as u64,
            data: base64(&out.out),
            checksum: aetherflow_engine::hex::encode(&summary.sha256),
            verified: true,
        }))
    })
    .await
    .map_err(|e| ApiError::internal("decompression", e))?
}
