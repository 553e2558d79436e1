//! The engine's one error type.
//!
//! Rules this crate follows:
//! - Every variant is something a caller can act on: retry on [`Error::Io`], ask for the seed on
//!   [`Error::SeedRequired`], refuse the input on [`Error::InvalidMagic`] and [`Error::Corrupt`].
//! - Messages never contain a seed, key material or user data; they name positions and sizes.
//! - A corrupt input is always [`Error::Corrupt`], never a panic, an over-allocation or wrong output.

use std::io;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the input or writing the output failed (disk full, permission, broken pipe).
    #[error(transparent)]
    Io(#[from] io::Error),

    /// The input does not start with the `.af` magic number: it is not an AetherFlow file.
    #[error("Invalid AetherFlow magic (not an .af file)")]
    InvalidMagic,

    /// The input is an `.af` file written by a newer format version.
    #[error("unsupported .af format version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },

    /// The input is damaged: a checksum, an authentication tag or a structural check failed.
    #[error("corrupt AetherFlow data: {0}")]
    Corrupt(String),

    /// The file is encrypted and no seed was given.
    #[error("this file is encrypted: a seed is required (--seed, --seed-file or AF_SEED)")]
    SeedRequired,

    /// The seed given does not open this file.
    #[error("wrong seed: the seed given does not open this file")]
    WrongSeed,

    /// The input asks for more memory or work than the reader's limits allow.
    #[error("refused: {0}")]
    LimitExceeded(String),

    /// A caller-side mistake: an option out of range, an impossible request.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// Shorthand used by the decoders: every structural failure is corruption.
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt(what.into())
    }
}
