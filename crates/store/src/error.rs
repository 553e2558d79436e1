//! The storage layer's one error type.
//!
//! Rules:
//! - Every variant is something a caller can act on, and callers match on variants, never on
//!   message text: [`Error::NotFound`] and [`Error::AlreadyExists`] say *what* with a [`What`],
//!   retry later on [`Error::Unavailable`], stop trusting the data on [`Error::Corrupt`].
//! - A thing the index names but the store cannot find (a chunk a manifest refers to, a pack a
//!   chunk lives in) is [`Error::Corrupt`], not [`Error::NotFound`]: only what a caller asked for
//!   by name can be "not found".
//! - Messages name blocks, chunks, packs and offsets, never user data or keys; damage is always
//!   [`Error::Corrupt`], never a panic or wrong bytes.

use std::fmt;
use std::io;

use crate::types::{BlockId, ChunkId};

/// Result alias of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a lookup or a create-if-absent was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Block(BlockId),
    Chunk(ChunkId),
    /// A pack of chunks: a local pack number, or a pack object's name.
    Pack(String),
    /// A volume, by name.
    Volume(String),
    /// An object of a remote store, by key (prefix included).
    Object(String),
    /// A whole store: no store at this place (a mistyped path or prefix).
    Store(String),
    /// A bucket of object storage (or one these credentials may not list), at an endpoint.
    Bucket {
        name: String,
        endpoint: String,
    },
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Block(id) => write!(f, "block {id}"),
            What::Chunk(id) => write!(f, "chunk {id:?}"),
            What::Pack(name) => write!(f, "pack {name}"),
            What::Volume(name) => write!(f, "volume {name}"),
            What::Object(key) => write!(f, "object {key}"),
            What::Store(place) => write!(f, "AetherFlow store at {place}"),
            What::Bucket { name, endpoint } => write!(f, "bucket {name} at {endpoint}"),
        }
    }
}

/// What went wrong, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the caller named does not exist: never created, or removed.
    #[error("{}", not_found(.0))]
    NotFound(What),

    /// Create-if-absent found the name taken; nothing was changed.
    #[error("{0} already exists")]
    AlreadyExists(What),

    /// Stored bytes failed a checksum or a structural check, or something the index names is
    /// missing.
    #[error("corrupt store: {0}")]
    Corrupt(String),

    /// Reading or writing the store's files failed (disk full, permissions): `kind()` says which.
    #[error("store I/O: {0}")]
    Io(#[from] io::Error),

    /// The embedded index failed; the message says how.
    #[error("store index: {0}")]
    Index(String),

    /// Another server holds it (a volume open for writing elsewhere): the message says which
    /// and for how long.
    #[error("{0}")]
    Held(String),

    /// Another process holds the data directory.
    #[error("{0}")]
    Locked(String),

    /// A remote store (object storage) cannot be reached or refused the request; retrying later
    /// may succeed. The message names the operation and the object.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// A remote store refused the credentials: retrying will not help until they are fixed.
    #[error("store access denied: {0}")]
    Denied(String),

    /// The store was opened read-only (a check) and this call would change it.
    #[error("the store is open read-only: {0}")]
    ReadOnly(&'static str),

    /// The request conflicts with what it names (writing a snapshot, cloning a volume that is
    /// not a snapshot, a malformed name); nothing was changed.
    #[error("{0}")]
    Refused(String),
}

fn not_found(what: &What) -> String {
    match what {
        What::Store(place) => format!("there is no AetherFlow store at {place}"),
        What::Bucket { name, endpoint } => format!(
            "bucket {name} does not exist at {endpoint}, or these credentials may not list it: \
             create it first, or check the name and AWS_ACCESS_KEY_ID"
        ),
        other => format!("{other} not found"),
    }
}

impl Error {
    /// True for errors that say the data itself is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt(_))
    }

    /// A lookup the index promised would succeed found nothing: damage, not a caller's mistake.
    pub fn missing_is_corrupt(self) -> Error {
        match self {
            Error::NotFound(what) => Error::Corrupt(format!("{what} is missing")),
            other => other,
        }
    }
}

impl From<redb::Error> for Error {
    /// The disk's own failures (full, read-only, gone) stay I/O errors, so that a caller can
    /// tell a full disk from a broken index.
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) => Error::Io(io),
            other => Error::Index(other.to_string()),
        }
    }
}

macro_rules! index_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}
index_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_they_are_about() {
        let id = BlockId::from_u128(7);
        assert_eq!(
            Error::NotFound(What::Block(id)).to_string(),
            format!("block {id} not found")
        );
        let chunk = Error::NotFound(What::Chunk(ChunkId([0xab; 32])));
        assert!(matches!(chunk.missing_is_corrupt(), Error::Corrupt(m) if m.contains("abab")));
        assert!(Error::NotFound(What::Store("s3://b/p".into()))
            .to_string()
            .contains("s3://b/p"));
    }
}
