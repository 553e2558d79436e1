//! `ApiError`: every failure as `{"success": false, "error", "code"}` with its HTTP status.
//!
//! The status mapping lives in one `match` ([`ApiError::from_vm`]). Details of server-side
//! failures (5xx) are logged and replaced by a generic message; client errors say what to fix.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use aetherflow_vm::{Error as VmError, StoreError};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For a person: what went wrong and what to do.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body exceeds the server's limit of {limit} bytes (--max-body)"),
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
        )
    }

    pub fn internal(context: &str, detail: impl std::fmt::Display) -> ApiError {
        tracing::error!("{context}: {detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            format!("{context} failed on the server; the details are in its log"),
        )
    }

    /// The one mapping from the memory manager's errors to statuses.
    pub fn from_vm(e: VmError) -> ApiError {
        use StatusCode as S;
        match e {
            VmError::NotFound(id) => {
                ApiError::new(S::NOT_FOUND, "NOT_FOUND", format!("block {id} not found"))
            }
            VmError::MalformedId(_) => ApiError::bad_request("MALFORMED_ID", e.to_string()),
            VmError::SeedRequired(_) => ApiError::new(
                S::UNAUTHORIZED,
                "SEED_REQUIRED",
                format!("{e} (header X-AetherFlow-Seed, or \"seed\" in the JSON body)"),
            ),
            VmError::WrongSeed(_) => ApiError::new(S::UNAUTHORIZED, "WRONG_SEED", e.to_string()),
            VmError::CapacityExceeded { .. } => {
                ApiError::new(S::INSUFFICIENT_STORAGE, "CAPACITY_EXCEEDED", e.to_string())
            }
            VmError::TooLarge { .. } => ApiError::new(
                S::PAYLOAD_TOO_LARGE,
                "BLOCK_TOO_LARGE",
                format!("{e}: request it with 'Accept: application/octet-stream'"),
            ),
            VmError::AlreadyExists(_) => {
                ApiError::new(S::CONFLICT, "ALREADY_EXISTS", e.to_string())
            }
            VmError::InvalidArgument(m) => ApiError::bad_request("INVALID_ARGUMENT", m),
            VmError::Internal(why) => ApiError::internal("the request", why),
            VmError::Corrupt { block, what } => {
                tracing::error!("block {block}: stored data is corrupt: {what}");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "DATA_CORRUPT",
                    format!("block {block}: stored data failed its checks; run 'aetherflow check --read-data'"),
                )
            }
            VmError::Io(io) => {
                ApiError::bad_request("BAD_INPUT", format!("reading the request failed: {io}"))
            }
            VmError::Store(StoreError::Io(io)) => {
                tracing::error!("store I/O: {io}");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "STORE_UNAVAILABLE",
                    format!(
                        "the store cannot be written or read right now ({})",
                        io.kind()
                    ),
                )
            }
            VmError::Store(StoreError::Unavailable(why) | StoreError::Denied(why)) => {
                tracing::error!("store unavailable: {why}");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "STORE_UNAVAILABLE",
                    "the object store cannot be reached right now; retry later",
                )
            }
            VmError::VolumeNotFound(_) => {
                ApiError::new(S::NOT_FOUND, "VOLUME_NOT_FOUND", e.to_string())
            }
            VmError::VolumeExists(_) => ApiError::new(S::CONFLICT, "VOLUME_EXISTS", e.to_string()),
            VmError::VolumeInUse(_) => ApiError::new(S::CONFLICT, "VOLUME_IN_USE", e.to_string()),
            VmError::VolumeHeldElsewhere(_) => {
                ApiError::new(S::CONFLICT, "VOLUME_HELD", e.to_string())
            }
            VmError::VolumeLocked(_) => ApiError::new(S::LOCKED, "VOLUME_LOCKED", e.to_string()),
            VmError::VolumeWrongSeed(_) => {
                ApiError::new(S::UNAUTHORIZED, "WRONG_SEED", e.to_string())
            }
            VmError::VolumeRefused(why) => ApiError::bad_request("VOLUME_REFUSED", why),
            VmError::NotASnapshot(_) => ApiError::new(S::CONFLICT, "NOT_A_SNAPSHOT", e.to_string()),
            VmError::VolumeCorrupt { volume, what } => {
                tracing::error!("volume {volume}: stored data is corrupt: {what}");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "DATA_CORRUPT",
                    format!("volume {volume}: stored data failed its checks; run 'aetherflow check --read-data'"),
                )
            }
            VmError::Store(other) => ApiError::internal("the store", other),
        }
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        ApiError::from_vm(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({
            "success": false,
            "error": self.message,
            "code": self.code,
        }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED && self.code == "UNAUTHORIZED" {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_vm::BlockId;

    #[test]
    fn each_kind_of_failure_gets_its_status() {
        let id = BlockId::random();
        let cases: Vec<(VmError, StatusCode, &str)> = vec![
            (VmError::NotFound(id), StatusCode::NOT_FOUND, "NOT_FOUND"),
            (
                VmError::AlreadyExists(id),
                StatusCode::CONFLICT,
                "ALREADY_EXISTS",
            ),
            (
                VmError::WrongSeed(id),
                StatusCode::UNAUTHORIZED,
                "WRONG_SEED",
            ),
            (
                VmError::Internal("no zstd context".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
            ),
            (
                VmError::Corrupt {
                    block: id,
                    what: "chunk missing".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "DATA_CORRUPT",
            ),
            (
                VmError::Store(StoreError::Unavailable("down".into())),
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
            ),
            (
                VmError::VolumeInUse("v".into()),
                StatusCode::CONFLICT,
                "VOLUME_IN_USE",
            ),
            (
                VmError::VolumeWrongSeed("v".into()),
                StatusCode::UNAUTHORIZED,
                "WRONG_SEED",
            ),
            (
                VmError::VolumeNotFound("v".into()),
                StatusCode::NOT_FOUND,
                "VOLUME_NOT_FOUND",
            ),
            (
                VmError::Store(StoreError::Io(std::io::ErrorKind::StorageFull.into())),
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
            ),
        ];
        for (e, status, code) in cases {
            let what = e.to_string();
            let api = ApiError::from_vm(e);
            assert_eq!((api.status, api.code), (status, code), "{what}");
        }
    }
}
