//! The `.af` byte layout, version 1. `docs/design.md` draws it; this module is its only
//! implementation. Every integer is little-endian.
//!
//! ```text
//! header | record* | end record | index | trailer
//! ```
//!
//! - [`header`]: magic, version, chunking parameters, key-derivation parameters and seed check.
//! - [`record`]: one record per piece of content, in order: data (zstd or raw), reference to an
//!   earlier data record, zero run, hole. A stream of records decodes without the index.
//! - [`index`]: one small entry per record, sealed, so that `stats` and ranged reads seek.
//! - [`trailer`]: fixed size at the very end: where the index is, the totals, the content digest.
//! - [`entry_table`]: in a directory archive, the content starts with the table of entries (paths,
//!   types, modes, times, sizes, links) and ends with the list of entries that could not be read.
//!
//! Decoders never trust a size they read: each one is checked against the limits before any
//! allocation (see [`Limits`]).

pub mod entry_table;
pub mod header;
pub mod index;
pub mod record;
pub mod trailer;

/// The first eight bytes of every `.af` file. The high first byte and the CR LF catch transfers
/// that mangle binary files, as PNG's signature does.
pub const MAGIC: [u8; 8] = [0x89, b'A', b'F', b'L', b'O', b'W', b'\r', b'\n'];

/// The last eight bytes of every complete `.af` file.
pub const END_MAGIC: [u8; 8] = *b"AFLOWEND";

/// The format version this build writes and reads.
pub const VERSION: u16 = 1;

/// Hard ceiling on a chunk's size in any file, whatever its header claims (fastcdc's own maximum).
pub const MAX_CHUNK_CEILING: u32 = 16 * 1024 * 1024;

/// What a reader is willing to spend on one file. A hostile file cannot push a reader past these.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest index the reader loads into memory, in bytes.
    pub max_index_bytes: u64,
    /// Largest entry table of a directory archive the reader loads into memory, in bytes.
    pub max_table_bytes: u64,
    /// Largest Argon2id memory cost accepted from a header, in KiB.
    pub max_kdf_memory_kib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_index_bytes: 256 * 1024 * 1024,
            max_table_bytes: 1024 * 1024 * 1024,
            max_kdf_memory_kib: 1024 * 1024,
        }
    }
}

/// A short checksum: the first `N` bytes of BLAKE3. Used where a keyed MAC is not needed (the
/// structure is also covered by the content digest) but a flipped bit must be caught at once.
pub(crate) fn short_check<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let hash = blake3::hash(bytes);
    hash.as_bytes()[..N].try_into().expect("N <= 32")
}

/// Little-endian field reader over a byte slice whose length was already checked.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        out
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().expect("2 bytes"))
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("N bytes")
    }
}
