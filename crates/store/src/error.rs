//! The storage layer's one error type.
//!
//! Rules: every variant is something a caller can act on; messages name blocks, chunks, packs and
//! offsets, never user data or keys; damage is always [`Error::Corrupt`], never a panic or wrong
//! bytes.

use std::io;

/// Result alias of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block (or chunk) does not exist: never allocated, or freed.
    #[error("{0} not found")]
    NotFound(String),

    /// Create-if-absent found the name taken; nothing was changed.
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// Stored bytes failed a checksum or a structural check.
    #[error("corrupt store: {0}")]
    Corrupt(String),

    /// Reading or writing the store's files failed (disk full, permissions).
    #[error("store I/O: {0}")]
    Io(#[from] io::Error),

    /// The embedded index failed; the message says how.
    #[error("store index: {0}")]
    Index(String),

    /// Another process holds the data directory.
    #[error("{0}")]
    Locked(String),

    /// A remote store (object storage) cannot be reached or refused the request; retrying later
    /// may succeed. The message names the operation and the object.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// True for errors that say the data itself is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt(_))
    }
}

macro_rules! index_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Index(e.to_string())
            }
        }
    )*};
}
index_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);
