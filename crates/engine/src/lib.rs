//! The AetherFlow engine: content-defined chunking, dedup, zstd, encryption and the `.af` format.
//!
//! No HTTP and no async runtime live here: the CLI and the server are thin layers over this crate.
//!
//! | module | idea |
//! |---|---|
//! | [`chunking`] | FastCDC boundaries over any reader, in bounded memory |
//! | [`extents`] | data and holes of sparse files (`SEEK_DATA` / `SEEK_HOLE`) |
//! | [`codec`] | one chunk to its cheapest stored form (zero, zstd, raw) and back |
//! | [`crypto`] | seeds, Argon2id, sub-keys, keyed chunk ids, XChaCha20-Poly1305 |
//! | [`format`] | the `.af` byte layout: header, records, index, trailer |
//! | [`compress`] / [`decompress`] | the parallel streaming pipelines |
//! | [`afile`] | stats and ranged reads through the index, without decompressing |
//! | [`archive`] | directory archives: walk, entry table, exact and safe restore |
//! | [`progress`] | how long work reports how far it has come |
//!
//! ```
//! use aetherflow_engine::{compress, decompress, AfSource, CompressOptions, DecompressOptions, NoProgress, Sink, Source};
//! let mut af = Vec::new();
//! compress(Source::from_bytes(b"hello hello hello"), &mut af, &CompressOptions::default(), &NoProgress)?;
//! let mut out = Vec::new();
//! decompress(AfSource::Stream(Box::new(std::io::Cursor::new(af))), Sink::Stream(&mut out), &DecompressOptions::default(), &NoProgress)?;
//! assert_eq!(out, b"hello hello hello");
//! # Ok::<(), aetherflow_engine::Error>(())
//! ```

pub mod afile;
pub mod archive;
pub mod chunking;
pub mod codec;
pub mod compress;
pub mod crypto;
pub mod decompress;
mod digest;
mod error;
pub mod extents;
pub mod format;
pub mod hex;
pub mod progress;
pub mod units;

pub use afile::{AfFile, AfInfo};
pub use chunking::ChunkParams;
pub use compress::{compress, CompressOptions, CompressSummary, Source, Stretch, StretchRead};
pub use crypto::{KdfParams, Seed};
pub use decompress::{
    decompress, AfSource, ContentSink, DecompressOptions, DecompressSummary, Sink,
};
pub use error::{Error, Result};
pub use format::Limits;
pub use progress::{NoProgress, Progress};

/// Version of the zstd C library this build links, for `memory-info`.
pub fn zstd_version() -> String {
    let v = zstd::zstd_safe::version_number();
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}
