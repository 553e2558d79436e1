//! Volumes (SPEC §6): create, list, describe, snapshot, clone, unlock, lock, delete. Their bytes
//! are served over NBD (`crate::nbd`); these routes manage them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use aetherflow_vm::VolumeInfo;

use super::blocks::ErrorBody;
use super::{parse_json, read_body, seed_from};
use crate::error::ApiError;
use crate::state::AppState;

/// Largest JSON body a volume route reads: a name, a size and a seed.
const BODY_LIMIT: u64 = 64 * 1024;

/// A volume's size: bytes, or a size with its unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeField {
    Bytes(u64),
    Text(String),
}

/// The schema of [`SizeField`]: a positive integer, or a number with a binary unit.
fn size_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(1))
                .description(Some("Bytes")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(
                    r"^[0-9]{1,15}(\.[0-9]{1,6})?([kKmMgGtTpP]([iI]?[bB])?|[bB])?$",
                ))
                .description(Some(
                    "With a unit: 100TiB, 512MiB, 1.5GiB (binary multiples)",
                )),
        )
        .build()
        .into()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.` or `-`: the NBD export
    /// name.
    #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
    /// Up to the server's capacity (100 TiB by default); it costs nothing until written.
    #[schema(schema_with = size_schema)]
    pub size: SizeField,
    /// Seals the volume's chunks under this seed; it is served only once unlocked with it.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub seed: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNameRequest {
    /// The new volume's name (same rules as a volume's).
    #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// The seed the volume was created with.
    #[schema(min_length = 1)]
    pub seed: String,
}

/// A volume's description and exact figures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDoc {
    pub name: String,
    /// Bytes, as NBD clients see it.
    pub size: u64,
    pub chunk_size: u32,
    pub seeded: bool,
    /// A snapshot: exported read-only.
    pub read_only: bool,
    /// The volume a snapshot was taken of, or the snapshot a clone was made from.
    pub origin: Option<String>,
    /// RFC 3339.
    pub created: String,
    /// An NBD client has it open.
    pub open: bool,
    pub bytes: VolumeBytesDoc,
    /// Written bytes over the stored bytes of the chunks the volume reads through.
    pub ratio: f64,
}

/// Exact byte figures of a volume.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBytesDoc {
    /// Its size.
    pub logical: u64,
    /// Bytes of its chunks that hold data (not holes or zeros).
    pub written: u64,
    /// Bytes of its chunks written as zeros (no data).
    pub zeroed: u64,
    /// What the store holds for it that no other volume or block shares, plus its map.
    pub physical: u64,
    /// Plaintext of the distinct chunks it reads through (after dedup, before compression).
    pub unique: u64,
    /// Stored bytes of those chunks.
    pub stored: u64,
    /// Memory holding writes not yet written back (until the next flush).
    pub buffered: u64,
}

impl From<VolumeInfo> for VolumeDoc {
    fn from(v: VolumeInfo) -> Self {
        VolumeDoc {
            name: v.name,
            size: v.size,
            chunk_size: v.chunk_size,
            seeded: v.seeded,
            read_only: v.read_only,
            origin: v.origin,
            created: v.created,
            open: v.open,
            bytes: VolumeBytesDoc {
                logical: v.bytes.logical,
                written: v.bytes.written,
                zeroed: v.bytes.zeroed,
                physical: v.bytes.physical,
                unique: v.bytes.unique,
                stored: v.bytes.stored,
                buffered: v.bytes.buffered,
            },
            ratio: v.ratio,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeResponse {
    pub success: bool,
    pub volume: VolumeDoc,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeListResponse {
    pub success: bool,
    pub volumes: Vec<VolumeDoc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteVolumeResponse {
    pub success: bool,
    pub message: String,
}

fn respond(v: VolumeInfo) -> Json<VolumeResponse> {
    Json(VolumeResponse {
        success: true,
        volume: v.into(),
    })
}

async fn body<T: serde::de::DeserializeOwned>(
    body: Body,
    headers: &HeaderMap,
) -> Result<T, ApiError> {
    let bytes = read_body(body, headers, BODY_LIMIT).await?;
    parse_json(&bytes)
}

fn size_of(field: SizeField) -> Result<u64, ApiError> {
    match field {
        SizeField::Bytes(n) => Ok(n),
        SizeField::Text(t) => aetherflow_engine::units::parse_size(&t)
            .map_err(|e| ApiError::bad_request("BAD_SIZE", format!("field \"size\": {e}"))),
    }
}

/// Creates an empty, thin volume (never-written space costs nothing). With a seed its chunks
/// are sealed under it, and it starts unlocked.
#[utoipa::path(post, path = "/api/volumes", tag = "volumes", request_body = CreateVolumeRequest,
    responses((status = 200, description = "Created, durable", body = VolumeResponse),
        (status = 400, description = "Bad JSON, name, size or seed", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "A volume with this name exists", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<VolumeResponse>, ApiError> {
    let request: CreateVolumeRequest = body(raw, &headers).await?;
    let seed = seed_from(request.seed.as_deref(), &HeaderMap::new())?;
    let size = size_of(request.size)?;
    // A seed's keys are derived with a memory-hard function: one of the heavy requests.
    let _permit = state.heavy_permit().await;
    let info = state
        .blocking(move |vm| vm.create_volume(&request.name, size, seed.as_ref()))
        .await?;
    Ok(respond(info))
}

/// Every volume, snapshot and clone, by name.
#[utoipa::path(get, path = "/api/volumes", tag = "volumes",
    responses((status = 200, body = VolumeListResponse),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<VolumeListResponse>, ApiError> {
    let volumes = state.blocking(|vm| vm.volumes()).await?;
    Ok(Json(VolumeListResponse {
        success: true,
        volumes: volumes.into_iter().map(VolumeDoc::from).collect(),
    }))
}

/// One volume's description and exact figures.
#[utoipa::path(get, path = "/api/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "The volume's name")),
    responses((status = 200, body = VolumeResponse),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn info(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeResponse>, ApiError> {
    let info = state.blocking(move |vm| vm.volume_info(&name)).await?;
    Ok(respond(info))
}

/// A read-only snapshot of the volume as it is now, instant whatever its size; what is
/// buffered is written back first.
#[utoipa::path(post, path = "/api/volumes/{name}/snapshot", tag = "volumes",
    params(("name" = String, Path, description = "The volume to snapshot")),
    request_body = NewNameRequest,
    responses((status = 200, description = "The snapshot", body = VolumeResponse),
        (status = 400, description = "Bad JSON or name", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 409, description = "The new name is taken", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody)))]
pub async fn snapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<VolumeResponse>, ApiError> {
    let request: NewNameRequest = body(raw, &headers).await?;
    let info = state
        .blocking(move |vm| vm.snapshot_volume(&name, &request.name))
        .await?;
    Ok(respond(info))
}

/// A writable volume made from a snapshot, sharing all its chunks until it diverges.
#[utoipa::path(post, path = "/api/volumes/{name}/clone", tag = "volumes",
    params(("name" = String, Path, description = "The snapshot to clone")),
    request_body = NewNameRequest,
    responses((status = 200, description = "The clone", body = VolumeResponse),
        (status = 400, description = "Bad JSON or name", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such snapshot", body = ErrorBody),
        (status = 409, description = "The new name is taken, or the volume is not a snapshot", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody)))]
pub async fn clone(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<VolumeResponse>, ApiError> {
    let request: NewNameRequest = body(raw, &headers).await?;
    let info = state
        .blocking(move |vm| vm.clone_volume(&name, &request.name))
        .await?;
    Ok(respond(info))
}

/// Unlocks a seeded volume: its keys are derived from the seed and kept in memory until it is
/// locked or the server stops. A wrong seed unlocks nothing.
#[utoipa::path(post, path = "/api/volumes/{name}/unlock", tag = "volumes",
    params(("name" = String, Path, description = "The volume to unlock")),
    request_body = UnlockRequest,
    responses((status = 200, description = "Unlocked (or it has no seed)", body = VolumeResponse),
        (status = 400, description = "Bad JSON or an empty seed", body = ErrorBody),
        (status = 401, description = "Missing or wrong token, or the wrong seed", body = ErrorBody),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn unlock(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<VolumeResponse>, ApiError> {
    let request: UnlockRequest = body(raw, &headers).await?;
    let seed =
        seed_from(Some(&request.seed), &HeaderMap::new())?.expect("a seed given in the body");
    let _permit = state.heavy_permit().await;
    let info = state
        .blocking(move |vm| {
            vm.unlock_volume(&name, &seed)?;
            vm.volume_info(&name)
        })
        .await?;
    Ok(respond(info))
}

/// Forgets a seeded volume's keys; refused (409) while an NBD client has it open.
#[utoipa::path(post, path = "/api/volumes/{name}/lock", tag = "volumes",
    params(("name" = String, Path, description = "The volume to lock")),
    responses((status = 200, description = "Locked", body = VolumeResponse),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 409, description = "Open by an NBD client", body = ErrorBody),
        (status = 503, description = "The store cannot be reached", body = ErrorBody)))]
pub async fn lock(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeResponse>, ApiError> {
    let info = state
        .blocking(move |vm| {
            vm.lock_volume(&name)?;
            vm.volume_info(&name)
        })
        .await?;
    Ok(respond(info))
}

/// Deletes a volume and frees what no other volume, snapshot or block shares; refused (409)
/// while an NBD client has it open.
#[utoipa::path(delete, path = "/api/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "The volume to delete")),
    responses((status = 200, description = "Deleted, durable", body = DeleteVolumeResponse),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 409, description = "Open by an NBD client", body = ErrorBody),
        (status = 503, description = "The store cannot be reached or written", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeleteVolumeResponse>, ApiError> {
    let message = format!("volume {name} deleted");
    state.blocking(move |vm| vm.delete_volume(&name)).await?;
    Ok(Json(DeleteVolumeResponse {
        success: true,
        message,
    }))
}
