//! AetherFlow storage: content-addressed chunks and block manifests behind one interface.
//!
//! | module | idea |
//! |---|---|
//! | [`BlockStore`] (here) | the interface and its contract |
//! | [`types`], [`manifest`] | the values that cross it: ids, chunks, manifests, totals |
//! | [`volume`] | volumes: records and maps of fixed-size chunks, shared by snapshots |
//! | [`epoch`] | when freed chunks and sealed packs may really be deleted |
//! | [`local`] | the durable default: pack files plus an ACID index (redb); also in RAM |
//! | `conformance` | the one test suite every backend passes (feature `conformance`) |
//!
//! The store never sees plaintext or keys: chunks arrive encoded (compressed, maybe encrypted)
//! and named by their identity; what they mean is the memory manager's business.

pub mod epoch;
mod error;
pub mod local;
pub mod manifest;
pub mod types;
pub mod volume;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use epoch::Pin;
pub use error::{Error, Result, What};
pub use local::volumes::VolumeUsage;
pub use local::LocalStore;
pub use manifest::{Checksum, Extent, Manifest, SeedBinding};
pub use types::{
    BlockId, BlockSummary, ChunkId, ChunkInfo, Codec, Damage, NewChunk, RequestCounts, StagedChunk,
    StoredChunk, Totals,
};
pub use volume::{MapEntry, VolumeRecord};

/// The self-describing chunk record that pack files (local or remote) are made of.
pub mod record {
    pub use crate::local::pack::{parse_record_header, record_header, RECORD_HEADER_LEN};
}

/// A store of content-addressed chunks and of block manifests that refer to them.
///
/// # Contract (every backend; the conformance suite checks it)
///
/// - **Create-if-absent.** A chunk is stored once per identity; a block id is taken once.
///   [`BlockStore::commit_block`] on a taken id fails with [`Error::AlreadyExists`] and changes
///   nothing.
/// - **Atomic commit.** A block becomes visible with all its chunks, or not at all. Chunks staged
///   but never committed are never visible and are reclaimed.
/// - **Durability.** When `commit_block` or `free_block` returns `Ok`, the change survives a crash
///   of the process or the machine (durable backends; [`BlockStore::is_durable`] says which).
/// - **Dedup safety.** A chunk that [`BlockStore::find_chunks`] reported present, asked while a
///   [`Pin`] from [`BlockStore::pin`] was held, may be referenced by a commit made under that pin,
///   even if every block using it is freed meanwhile.
/// - **Reclaiming.** Freeing a block releases its references; chunks no block references are
///   deleted (once no pin can still see them) and the space they took comes back.
/// - **Verification.** Every chunk read is checked against its [`ChunkInfo::check`]; damage is
///   [`Error::Corrupt`], never wrong bytes.
pub trait BlockStore: Send + Sync + std::fmt::Debug {
    /// Short name for stats: `"memory"`, `"local"`, `"s3"`.
    fn backend(&self) -> &'static str;

    /// Whether committed data survives the process.
    fn is_durable(&self) -> bool;

    /// Random bytes fixed when the store was created: the salt from which seeds derive the keys
    /// of their dedup domain, so that the same seed finds the same chunks across allocations.
    fn domain_salt(&self) -> [u8; 16];

    /// Marks an allocation as running; see the contract.
    fn pin(&self) -> Pin;

    /// For each id, the chunk's description if the store holds it (and it may then be referenced;
    /// see the contract), `None` if not.
    fn find_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkInfo>>>;

    /// Writes chunks where a later commit can find them. Nothing is visible until the commit.
    fn stage_chunks(&self, chunks: &[NewChunk]) -> Result<Vec<StagedChunk>>;

    /// Makes `manifest` visible as block `id`, with the staged chunks it needs. Every chunk the
    /// manifest names must be staged here or already held; otherwise [`Error::Corrupt`] and no
    /// change.
    fn commit_block(
        &self,
        id: BlockId,
        manifest: &Manifest,
        staged: Vec<StagedChunk>,
    ) -> Result<()>;

    /// Holds `id` for a block whose id the caller chose (an import), before its chunks are
    /// staged: [`Error::AlreadyExists`] if a block has it, or another server sharing the store
    /// holds it. A store that [`BlockStore::commit_block`] alone keeps consistent (one
    /// process) needs nothing here.
    fn reserve_block(&self, _id: BlockId) -> Result<()> {
        Ok(())
    }

    /// Gives back an id held by [`BlockStore::reserve_block`] whose block will not be
    /// committed (its allocation failed first). Best effort; nothing once the commit began.
    fn unreserve_block(&self, _id: BlockId) {}

    /// The manifest of a block, or [`Error::NotFound`].
    fn manifest(&self, id: BlockId) -> Result<Manifest>;

    /// One chunk's stored form, its payload checked.
    fn chunk(&self, id: &ChunkId) -> Result<StoredChunk>;

    /// Removes a block and releases its chunks; returns its manifest. [`Error::NotFound`] when
    /// there is no such block (never allocated, or already freed).
    fn free_block(&self, id: BlockId) -> Result<Manifest>;

    /// Visits every block in id order until `visit` returns `false`. Holds no more than one
    /// block's manifest at a time. Blocks whose manifest is damaged are skipped (and reported
    /// by [`BlockStore::verify`]).
    fn blocks(&self, visit: &mut dyn FnMut(BlockSummary) -> bool) -> Result<()>;

    /// The persisted read count of one block.
    fn accesses(&self, id: BlockId) -> Result<u64>;

    /// Adds read counts (batched by the caller, so reads need no write transaction each).
    fn add_accesses(&self, counts: &[(BlockId, u64)]) -> Result<()>;

    /// Exact figures of the whole store.
    fn totals(&self) -> Totals;

    /// Checks the index against itself and, with `read_data`, every stored chunk's bytes.
    /// Reports each damaged thing to `report`; an `Err` means the check itself could not run.
    fn verify(&self, read_data: bool, report: &mut dyn FnMut(Damage)) -> Result<()>;

    /// True when this process knows, without asking anyone, that the block no longer exists:
    /// another process sharing the store freed it. Lets a reader drop what it cached of the
    /// block. Backends only this process writes never need to say so.
    fn known_gone(&self, _id: BlockId) -> bool {
        false
    }

    /// Says which chunks [`BlockStore::chunk`] will be asked for next, so that a remote backend
    /// can fetch them at once instead of one round trip at a time. A hint: nothing changes if
    /// the chunks are never asked for. Local backends ignore it.
    fn prefetch(&self, _ids: &[ChunkId]) {}

    /// Requests made to a remote backend, for metrics; `None` for local backends.
    fn remote_requests(&self) -> Option<RequestCounts> {
        None
    }

    // ----- volumes (see [`volume`]) -----

    /// Creates a volume with nothing written. [`Error::AlreadyExists`] if the name is taken.
    fn create_volume(&self, record: &VolumeRecord) -> Result<()>;

    /// The record of a volume, or [`Error::NotFound`].
    fn volume(&self, name: &str) -> Result<VolumeRecord>;

    /// Every volume, by name.
    fn volumes(&self) -> Result<Vec<VolumeRecord>>;

    /// Visits in index order every chunk of `chunks` that is not a hole, until `visit` returns
    /// `false`. Costs what the range holds, not its length.
    fn volume_map(
        &self,
        name: &str,
        chunks: std::ops::Range<u64>,
        visit: &mut dyn FnMut(u64, MapEntry) -> bool,
    ) -> Result<()>;

    /// Sets entries of a writable volume, atomically, with the staged chunks they need (the
    /// others must be held: found under a [`Pin`], as for blocks). With `durable`, this change
    /// and every one before it survive a crash when this returns; otherwise they do once a
    /// durable commit or [`BlockStore::sync`] returns, and until then a crash leaves the map as
    /// after some earlier commit (each chunk old or new, never torn).
    fn commit_volume(
        &self,
        name: &str,
        changes: &[(u64, MapEntry)],
        staged: Vec<StagedChunk>,
        durable: bool,
    ) -> Result<()>;

    /// Sets every chunk of `chunks` to a hole (a trim, or zeroes that may be punched, of any
    /// size): costs what the range held, not its length.
    fn clear_volume(&self, name: &str, chunks: std::ops::Range<u64>, durable: bool) -> Result<()>;

    /// Makes every change so far durable, and reclaims what overwrites released.
    fn sync(&self) -> Result<()>;

    /// Does the work that relaxed volume commits put off (the embedded store's full reclaim
    /// pass, once their light passes have freed enough; see docs/design.md). A volume calls it
    /// after a write-back, outside its locks, so that no other writer waits for that work.
    fn housekeep(&self) -> Result<()> {
        Ok(())
    }

    /// Takes the right to write a volume, for as long as it is open here: where several
    /// servers share a store, another one's writes are then refused ([`Error::Held`] for this
    /// one while another holds it). A store only one process opens needs nothing.
    fn acquire_volume(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Gives back what [`BlockStore::acquire_volume`] took (the volume closed here).
    fn release_volume(&self, _name: &str) {}

    /// A new volume `name` sharing `source`'s map as it is now: a read-only snapshot of any
    /// volume, or with `writable` a clone of a snapshot. O(1) whatever the size.
    fn snapshot_volume(&self, source: &str, name: &str, writable: bool) -> Result<VolumeRecord>;

    /// Removes a volume; what nothing else refers to is reclaimed.
    fn delete_volume(&self, name: &str) -> Result<()>;

    /// What a volume takes (O(its written chunks)).
    fn volume_usage(&self, name: &str) -> Result<VolumeUsage>;
}
