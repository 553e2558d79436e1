//! The values that cross the storage interface: block ids, chunk descriptions, totals.

use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

pub use aetherflow_engine::crypto::ChunkId;
pub use aetherflow_engine::format::record::Codec;

use crate::error::{Error, Result};

/// A block's name: a random (version 4) UUID, chosen by the caller at allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub uuid::Uuid);

impl BlockId {
    /// A fresh random id.
    pub fn random() -> BlockId {
        BlockId(uuid::Uuid::new_v4())
    }

    /// The id as the 128-bit key of the index.
    pub fn as_u128(self) -> u128 {
        self.0.as_u128()
    }

    pub fn from_u128(v: u128) -> BlockId {
        BlockId(uuid::Uuid::from_u128(v))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({self})")
    }
}

/// Text that is not a block id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed block id {0:?}: expected a UUID")]
pub struct MalformedBlockId(pub String);

impl FromStr for BlockId {
    type Err = MalformedBlockId;

    /// Accepts the hyphenated form that [`fmt::Display`] prints (and the other forms `uuid`
    /// parses).
    fn from_str(s: &str) -> Result<BlockId, MalformedBlockId> {
        uuid::Uuid::parse_str(s)
            .map(BlockId)
            .map_err(|_| MalformedBlockId(s.to_string()))
    }
}

/// Bit of the encoding byte that says the payload begins with its nonce.
const NONCE_STORED_BIT: u8 = 0x80;

/// The encoding byte stored in packs and the index: the codec (the values of `.af` record
/// kinds, 2 zstd and 3 raw), with bit 7 set when the payload begins with its nonce.
pub fn encoding_byte(info: &ChunkInfo) -> u8 {
    let codec = match info.codec {
        Codec::Zstd => 2,
        Codec::Raw => 3,
    };
    if info.nonce_stored {
        codec | NONCE_STORED_BIT
    } else {
        codec
    }
}

/// Inverse of [`encoding_byte`]: the codec, and whether the nonce is stored.
pub fn encoding_from_byte(b: u8) -> Result<(Codec, bool)> {
    let codec = match b & !NONCE_STORED_BIT {
        2 => Codec::Zstd,
        3 => Codec::Raw,
        _ => return Err(Error::Corrupt(format!("unknown encoding byte {b}"))),
    };
    Ok((codec, b & NONCE_STORED_BIT != 0))
}

/// What the store knows about one chunk besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Identity of the plaintext (keyed by the seed domain).
    pub id: ChunkId,
    /// How the payload is encoded.
    pub codec: Codec,
    /// Whether the payload begins with the 24-byte nonce it was sealed under (chunks sealed
    /// since store format 2). False for unsealed chunks and for those sealed by format 1, whose
    /// nonce is their identity: which of the two a chunk is, its block's seed tells.
    pub nonce_stored: bool,
    /// Plaintext length.
    pub raw_len: u32,
    /// Payload length as stored (compressed, plus nonce and AEAD tag when encrypted).
    pub stored_len: u32,
    /// First 16 bytes of BLAKE3 over the stored payload: lets the store verify every chunk,
    /// encrypted ones included, without any key.
    pub check: [u8; 16],
}

/// Bytes counted in `physical` for each chunk's index entries: its key and entry (45 bytes) in
/// `chunks`, and its row in `locations`. Both backends count the same, so that their figures
/// compare.
pub const INDEX_BYTES_PER_CHUNK: u64 = 32 + 45 + 16 + 32;

/// The checksum the store keeps for a payload.
pub fn payload_check(payload: &[u8]) -> [u8; 16] {
    blake3::hash(payload).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// A chunk handed to the store: its identity and encoded payload.
///
/// Made by [`NewChunk::new`], which computes the payload's check: on the thread that encoded
/// the payload (one of many), not in the store's append, which runs one batch at a time.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub id: ChunkId,
    pub codec: Codec,
    /// See [`ChunkInfo::nonce_stored`].
    pub nonce_stored: bool,
    pub raw_len: u32,
    pub payload: Bytes,
    check: [u8; 16],
}

impl NewChunk {
    pub fn new(
        id: ChunkId,
        codec: Codec,
        nonce_stored: bool,
        raw_len: u32,
        payload: Bytes,
    ) -> Self {
        NewChunk {
            check: payload_check(&payload),
            id,
            codec,
            nonce_stored,
            raw_len,
            payload,
        }
    }

    pub fn info(&self) -> ChunkInfo {
        ChunkInfo {
            id: self.id,
            codec: self.codec,
            nonce_stored: self.nonce_stored,
            raw_len: self.raw_len,
            stored_len: self.payload.len() as u32,
            check: self.check,
        }
    }
}

/// A chunk written by [`crate::BlockStore::stage_chunks`] but not yet part of any block.
///
/// Only [`crate::BlockStore::commit_block`] makes it visible; a staged chunk that is never
/// committed is garbage the store reclaims.
#[derive(Debug)]
pub struct StagedChunk {
    pub info: ChunkInfo,
    pub(crate) at: StagedAt,
}

impl StagedChunk {
    /// A staged chunk of a backend outside this crate, which keeps its own note of where the
    /// bytes wait and gets it back at commit with [`StagedChunk::backend_note`].
    pub fn with_note(info: ChunkInfo, note: Arc<dyn Any + Send + Sync>) -> StagedChunk {
        StagedChunk {
            info,
            at: StagedAt::Backend(note),
        }
    }

    /// The note given to [`StagedChunk::with_note`], if this chunk was staged that way.
    pub fn backend_note(&self) -> Option<&Arc<dyn Any + Send + Sync>> {
        match &self.at {
            StagedAt::Backend(note) => Some(note),
            _ => None,
        }
    }
}

/// Where a staged chunk's bytes wait, per backend.
#[derive(Debug)]
pub(crate) enum StagedAt {
    Pack { pack: u32, offset: u64 },
    Backend(Arc<dyn Any + Send + Sync>),
}

/// Requests a remote backend made since it was opened, by kind: what object storage bills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
}

/// A chunk read back from the store, its payload already checked against [`ChunkInfo::check`].
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub info: ChunkInfo,
    pub payload: Bytes,
}

/// Figures of a whole store, exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Blocks stored.
    pub blocks: u64,
    /// Logical bytes of all blocks (what clients allocated).
    pub logical: u64,
    /// Logical bytes that were zero runs (stored as lengths only).
    pub zero: u64,
    /// Plaintext bytes of the distinct chunks stored: what is left after dedup, before compression.
    pub unique: u64,
    /// Payload bytes of the distinct chunks stored: what is left after compression.
    pub stored: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Every byte the store holds: payloads with their headers, bytes of freed chunks not yet
    /// reclaimed, manifests, volume maps and index entries.
    pub physical: u64,
    /// Volumes (snapshots included).
    pub volumes: u64,
    /// Bytes of volume chunks written with data or zeros, over every volume: what volumes add
    /// to what clients stored.
    pub volume_bytes: u64,
    /// The part of `volume_bytes` written as zeros.
    pub volume_zeroed: u64,
}

/// One block as listed by [`crate::BlockStore::blocks`].
#[derive(Debug, Clone)]
pub struct BlockSummary {
    pub id: BlockId,
    pub manifest: crate::Manifest,
    /// Persisted read count.
    pub accesses: u64,
}

/// One damaged thing found by [`crate::BlockStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A chunk whose stored bytes are missing or fail their check.
    Chunk { id: ChunkId, what: String },
    /// A block whose manifest is unreadable or refers to chunks the index lacks.
    Block { id: BlockId, what: String },
    /// An inconsistency in the index itself (counts, totals, pack bookkeeping).
    Index { what: String },
}

/// Sixteen random bytes from the operating system.
pub fn random_salt() -> Result<[u8; 16]> {
    aetherflow_engine::crypto::random_salt()
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))
}
