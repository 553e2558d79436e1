//! The memory manager's one error type.
//!
//! Rules: each variant maps to one thing a caller (or an HTTP status) can act on; messages name
//! blocks and sizes, never seeds or data.

use aetherflow_store::BlockId;

/// Result alias of the memory manager.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No block with this id (never allocated, or freed).
    #[error("block {0} not found")]
    NotFound(BlockId),

    /// A block id that does not parse.
    #[error(
        "malformed block id {0:?}: expected a UUID such as 3f2c0a1e-8b4d-4c6f-9a7e-2d1b0c9e8f7a"
    )]
    MalformedId(String),

    /// The block was allocated with a seed and none was given.
    #[error("block {0} is protected by a seed: send the seed that allocated it")]
    SeedRequired(BlockId),

    /// The seed given is not the one the block was allocated with.
    #[error("wrong seed for block {0}")]
    WrongSeed(BlockId),

    /// A block with this id exists already (import keeps ids); nothing was stored.
    #[error("block {0} already exists")]
    AlreadyExists(BlockId),

    /// The allocation would take the logical total past the configured capacity; nothing was stored.
    #[error("virtual capacity exhausted: {requested} more bytes requested, {available} of {capacity} available")]
    CapacityExceeded {
        requested: u64,
        available: u64,
        capacity: u64,
    },

    /// A block too large to hand back in one piece; read it as a stream instead.
    #[error("block {id} is {size} bytes, more than the {limit}-byte limit for whole reads: read it as a stream or by range")]
    TooLarge { id: BlockId, size: u64, limit: u64 },

    /// A request that cannot be satisfied as asked (a range past the end, an id taken on import).
    #[error("{0}")]
    InvalidArgument(String),

    /// Stored data failed a check: the block named cannot be returned intact.
    #[error("block {block}: stored data is corrupt: {what}")]
    Corrupt { block: BlockId, what: String },

    /// The store failed (disk full, I/O error, index failure, locked directory).
    #[error(transparent)]
    Store(aetherflow_store::Error),

    /// Reading the caller's input or writing the caller's output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),

    /// This process failed, not the input or the store: a codec could not start, the system
    /// gave no randomness. The message is for the log.
    #[error("internal failure: {0}")]
    Internal(String),

    /// No volume has this name.
    #[error("volume {0} not found")]
    VolumeNotFound(String),

    /// A volume (or snapshot) with this name exists already; nothing was created.
    #[error("volume {0} already exists")]
    VolumeExists(String),

    /// A seeded volume that was not unlocked with its seed.
    #[error("volume {0} is locked: unlock it with its seed first")]
    VolumeLocked(String),

    /// The seed given does not unlock this volume.
    #[error("wrong seed for volume {0}")]
    VolumeWrongSeed(String),

    /// The volume is open (an NBD client is connected): it cannot be deleted or locked now.
    #[error("volume {0} is in use: disconnect its clients first")]
    VolumeInUse(String),

    /// The request conflicts with what the volume is (writing a snapshot, a malformed name, a
    /// size out of range).
    #[error("{0}")]
    VolumeRefused(String),

    /// A clone was asked of a volume that is not a snapshot: the volume's state, not the
    /// request, is what conflicts.
    #[error("volume {0} is not a snapshot: snapshot it first, then clone the snapshot")]
    NotASnapshot(String),

    /// Another server writes this volume (a store several servers share): close it there, or
    /// serve its snapshots.
    #[error("{0}")]
    VolumeHeldElsewhere(String),

    /// Stored data of a volume failed a check.
    #[error("volume {volume}: stored data is corrupt: {what}")]
    VolumeCorrupt { volume: String, what: String },
}

impl Error {
    /// Maps a store error met while working on `block`: the one place where store errors
    /// become the manager's. Only the block itself can be "not found"; anything else the store
    /// cannot find (a chunk its manifest names) is damage to that block.
    pub(crate) fn from_store(block: BlockId, e: aetherflow_store::Error) -> Error {
        use aetherflow_store::{Error as S, What};
        match e {
            S::NotFound(What::Block(_)) => Error::NotFound(block),
            S::AlreadyExists(What::Block(id)) => Error::AlreadyExists(id),
            S::NotFound(what) => Error::Corrupt {
                block,
                what: format!("{what} is missing from the store"),
            },
            S::Corrupt(what) => Error::Corrupt { block, what },
            other => Error::Store(other),
        }
    }

    /// Maps an engine error met while decoding `block`'s chunks: the engine's reading of stored
    /// bytes fails only on damage, or on this process (a codec that cannot start).
    pub(crate) fn from_engine(block: BlockId, e: aetherflow_engine::Error) -> Error {
        match e {
            aetherflow_engine::Error::Io(io) => Error::Internal(format!("chunk codec: {io}")),
            aetherflow_engine::Error::InvalidArgument(m) => Error::Internal(m),
            other => Error::Corrupt {
                block,
                what: other.to_string(),
            },
        }
    }

    /// Maps a store error met while working on volume `name`: the one place where the store's
    /// volume errors become the manager's.
    pub(crate) fn from_volume_store(name: &str, e: aetherflow_store::Error) -> Error {
        use aetherflow_store::{Error as S, What};
        match e {
            S::NotFound(What::Volume(v)) => Error::VolumeNotFound(v),
            S::AlreadyExists(What::Volume(v)) => Error::VolumeExists(v),
            S::Refused(why) => Error::VolumeRefused(why),
            S::Held(why) => Error::VolumeHeldElsewhere(why),
            S::NotFound(what) => Error::VolumeCorrupt {
                volume: name.to_string(),
                what: format!("{what} is missing from the store"),
            },
            S::Corrupt(what) => Error::VolumeCorrupt {
                volume: name.to_string(),
                what,
            },
            other => Error::Store(other),
        }
    }

    /// Maps an engine error met while encoding new chunks: never the caller's fault.
    pub(crate) fn from_encoder(e: aetherflow_engine::Error) -> Error {
        Error::Internal(format!("chunk encoder: {e}"))
    }
}

impl From<aetherflow_store::Error> for Error {
    fn from(e: aetherflow_store::Error) -> Self {
        Error::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{ChunkId, Error as S, What};

    #[test]
    fn store_errors_map_to_what_the_caller_can_do() {
        let b = BlockId::random();
        assert!(matches!(
            Error::from_store(b, S::NotFound(What::Block(b))),
            Error::NotFound(x) if x == b
        ));
        assert!(matches!(
            Error::from_store(b, S::NotFound(What::Chunk(ChunkId([1; 32])))),
            Error::Corrupt { block, .. } if block == b
        ));
        assert!(matches!(
            Error::from_store(b, S::AlreadyExists(What::Block(b))),
            Error::AlreadyExists(x) if x == b
        ));
        assert!(matches!(
            Error::from_store(b, S::Unavailable("down".into())),
            Error::Store(S::Unavailable(_))
        ));
        let io = std::io::Error::other("no zstd context");
        assert!(matches!(
            Error::from_engine(b, aetherflow_engine::Error::Io(io)),
            Error::Internal(_)
        ));
        assert!(matches!(
            Error::from_engine(b, aetherflow_engine::Error::Corrupt("x".into())),
            Error::Corrupt { .. }
        ));
    }
}
