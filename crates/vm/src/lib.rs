//! AetherFlow virtual memory: blocks allocated into a deduplicating, compressed, encrypted store.
//!
//! ```
//! use aetherflow_vm::{Backend, VirtualMemory, VmConfig};
//! let vm = VirtualMemory::open(VmConfig::new(Backend::Memory))?;
//! let id = vm.allocate(b"hello hello hello", None)?;
//! assert_eq!(&vm.read(id, None)?[..], b"hello hello hello");
//! assert_eq!(vm.summary().total_blocks, 1);
//! vm.free(id)?;
//! # Ok::<(), aetherflow_vm::Error>(())
//! ```
//!
//! | module | idea |
//! |---|---|
//! | [`VirtualMemory`] | the API: open, allocate, read, free, stats |
//! | `allocate` | chunk, dedup, compress on all cores, stage, commit |
//! | `read` | fetch, decode and verify; whole through the cache, or streamed by range |
//! | `cache` | byte-bounded LRU of decompressed blocks |
//! | `keys` | seed domains and their cached keys |
//! | [`stats`] | the figures of `/api/memory/stats` |
//! | [`check`] | integrity check naming damaged blocks |
//! | [`export`] | all blocks to a JSON document and back |
//! | [`volume`] | volumes: thin writable block devices of fixed-size chunks, snapshots, clones |
//!
//! The manager has no HTTP and no async runtime: the server and CLI are thin layers over it.

mod allocate;
mod cache;
pub mod check;
mod config;
mod error;
pub mod export;
mod keys;
mod read;
pub mod stats;
mod virtual_memory;
pub mod volume;

pub use aetherflow_engine::crypto::Seed;
#[cfg(feature = "s3")]
pub use aetherflow_s3::{S3Location, S3Options};
pub use aetherflow_store::{BlockId, Error as StoreError};
pub use check::{CheckReport, DamagedBlock};
pub use config::{Backend, VmConfig};
pub use error::{Error, Result};
pub use export::{ExportSummary, ImportSummary};
pub use read::ReadSummary;
pub use stats::Stats;
pub use virtual_memory::VirtualMemory;
pub use volume::{Allocation, Span, Volume, VolumeBytes, VolumeHandle, VolumeInfo};

/// Parses a block id as clients send it, or [`Error::MalformedId`].
pub fn parse_block_id(text: &str) -> Result<BlockId> {
    text.parse()
        .map_err(|_| Error::MalformedId(text.to_string()))
}
