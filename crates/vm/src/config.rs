//! How a [`crate::VirtualMemory`] is set up.

use std::path::PathBuf;

use aetherflow_engine::{ChunkParams, KdfParams};
#[cfg(feature = "s3")]
use aetherflow_s3::{S3Location, S3Options};

/// Where blocks are kept.
// One value per process, made at start: the S3 variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Backend {
    /// RAM only: fast, and lost when the process exits (stats say so).
    Memory,
    /// The durable embedded store in this directory (created if missing).
    Local(PathBuf),
    /// A bucket of S3-compatible object storage, which several servers may share.
    #[cfg(feature = "s3")]
    S3(S3Location, S3Options),
}

/// Everything a memory manager needs to open.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub backend: Backend,
    /// Logical bytes all blocks together may hold. 100 TiB by default.
    pub capacity: u64,
    /// Bytes of decompressed blocks the read cache keeps. 50 MiB by default.
    pub cache_size: u64,
    /// zstd level for new chunks.
    pub level: i32,
    /// Content-defined chunk sizes for new blocks.
    pub chunking: ChunkParams,
    /// Argon2id costs for seeds (recorded per block, so changing them never locks old blocks out).
    pub kdf: KdfParams,
    /// Largest block [`crate::VirtualMemory::read`] returns whole; larger ones are read as streams.
    pub max_whole_read: u64,
    /// Chunk size of new volumes (a power of two); see `docs/design.md` for the measurement.
    pub volume_chunk_size: u32,
    /// Bytes each open volume buffers before writing back (a flush writes back at once).
    pub volume_buffer: u64,
}

impl VmConfig {
    /// Chunk sizes for blocks: smaller than a file's, because blocks are often small (64 KiB–1 MiB)
    /// and near-copies of VM images differ in scattered places; measured in `docs/design.md`.
    pub const CHUNKING: ChunkParams = ChunkParams {
        min: 64 * 1024,
        avg: 256 * 1024,
        max: 1024 * 1024,
    };

    /// The defaults of SPEC §4 for `backend`.
    pub fn new(backend: Backend) -> VmConfig {
        VmConfig {
            backend,
            capacity: 100 << 40,
            cache_size: 50 << 20,
            level: aetherflow_engine::codec::DEFAULT_LEVEL,
            chunking: VmConfig::CHUNKING,
            kdf: KdfParams::DEFAULT,
            max_whole_read: 4 << 30,
            volume_chunk_size: 16 * 1024,
            volume_buffer: 64 << 20,
        }
    }
}
