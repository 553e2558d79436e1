//! The durable local backend, the default: chunks appended to pack files, an ACID index in redb.
//!
//! ```text
//! DIR/LOCK            flock'd while a process has the store open
//! DIR/index.redb      the index (see `index`)
//! DIR/packs/N.pack    chunk records (see `pack`)
//! ```
//!
//! **Durability protocol.** An allocation writes its new chunks into a pack, `fdatasync`s the pack,
//! and only then commits the index transaction that references them; `commit_block` returns after
//! that commit is durable. So a crash at any moment leaves either the whole block or nothing
//! visible, and never an index entry pointing at bytes that did not reach the disk.
//!
//! **Recovery** needs no manual step: on open, pack files the index never mentions are deleted,
//! bytes past a pack's last committed record are cut off, and chunks freed before the crash are
//! reclaimed. Ranges inside a pack that were reserved but never committed count as dead bytes and
//! go at the next compaction.

pub mod files;
pub(crate) mod index;
mod open;
pub(crate) mod pack;
mod reclaim;
pub mod sim;
mod verify;
pub(crate) mod volumes;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::epoch::{EpochGate, Pin};
use crate::error::{Error, Result, What};
use crate::types::{BlockId, BlockSummary, ChunkId, ChunkInfo, Damage, StagedAt};
use crate::{BlockStore, Manifest, NewChunk, StagedChunk, StoredChunk, Totals};
use files::{OsFiles, StoreFiles};
use index::{
    get_chunk, read_counters, ChunkEntry, Counters, ACCESSES, BLOCKS, CHUNKS, LOCATIONS, META,
    PACKS, ZOMBIES,
};
use pack::Packs;

/// Tuning of a local store.
#[derive(Debug, Clone, Copy)]
pub struct LocalOptions {
    /// A pack is sealed and a new one started at about this size.
    pub pack_size: u64,
    /// A sealed pack whose live bytes fall below this fraction of its size is compacted.
    pub compact_below: f64,
    /// Memory redb may use to cache index pages.
    pub index_cache: usize,
    /// Make every commit durable before it returns (the contract). Turning this off is for bulk
    /// loading only: commits then reach the disk with the next durable one or on close.
    pub sync_commits: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            pack_size: 32 << 20,
            compact_below: 0.5,
            index_cache: 64 << 20,
            sync_commits: true,
        }
    }
}

/// The durable local store. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct LocalStore {
    files: Arc<dyn StoreFiles>,
    db: Database,
    packs: Packs,
    gate: Arc<EpochGate>,
    options: LocalOptions,
    salt: [u8; 16],
    /// Copy of the persisted counters, refreshed after each commit, so that stats need no read.
    counters: Mutex<Counters>,
    /// One reclaim pass at a time; others skip rather than wait.
    reclaiming: Mutex<()>,
    /// Bytes of chunks that relaxed passes deleted since the last full pass (see
    /// [`LocalStore::reclaim_relaxed`]).
    freed_relaxed: AtomicU64,
    /// Packs holding bytes that relaxed commits (volume write-backs) referred to and that no
    /// sync has covered yet; the next durable commit syncs them first.
    unsynced: Mutex<BTreeSet<u32>>,
    /// Holds the directory's lock for as long as the store is open (none for files that are
    /// not a directory of this machine's).
    _lock: Option<File>,
    /// On a volatile disk in memory (`--memory`): nothing survives the process.
    in_memory: bool,
}

impl LocalStore {
    /// Opens (creating if needed) the store in `dir`. Fails with [`Error::Locked`] when another
    /// process has it open.
    pub fn open(dir: impl AsRef<Path>, options: LocalOptions) -> Result<LocalStore> {
        let dir = dir.as_ref();
        let files = OsFiles::new(dir)?;
        let lock = open::lock_dir(dir)?;
        LocalStore::open_files(Arc::new(files), Some(lock), options)
    }

    /// Opens the store in `dir` only if one was created there: a mistyped path is
    /// [`Error::NotFound`], and nothing is created.
    pub fn open_existing(dir: impl AsRef<Path>, options: LocalOptions) -> Result<LocalStore> {
        let dir = dir.as_ref();
        if !dir.join("index.redb").is_file() {
            return Err(Error::NotFound(What::Store(dir.display().to_string())));
        }
        LocalStore::open(dir, options)
    }

    /// Opens (creating if needed) a store on `files`: another filesystem, or a simulated disk
    /// for crash tests. The caller makes sure no other process uses the same files.
    pub fn open_on(files: Arc<dyn StoreFiles>, options: LocalOptions) -> Result<LocalStore> {
        LocalStore::open_files(files, None, options)
    }

    /// A store in RAM, lost when it is dropped (like zram): the local store on a volatile disk
    /// in memory, so that both keep one implementation of the contract.
    pub fn in_memory() -> Result<LocalStore> {
        let options = LocalOptions {
            sync_commits: false,
            index_cache: 16 << 20,
            ..LocalOptions::default()
        };
        let mut store = LocalStore::open_files(Arc::new(sim::SimDisk::volatile()), None, options)?;
        store.in_memory = true;
        Ok(store)
    }

    fn open_files(
        files: Arc<dyn StoreFiles>,
        lock: Option<File>,
        options: LocalOptions,
    ) -> Result<LocalStore> {
        let mut builder = Database::builder();
        builder.set_cache_size(options.index_cache);
        let db = files.open_index(&builder)?;
        let (salt, counters) = open::init_meta(&db)?;
        let (next_pack, pack_bytes) = open::recover_packs(&db, &*files)?;
        let max_death = {
            let r = db.begin_read()?;
            let z = r.open_table(ZOMBIES)?;
            let mut max = 0;
            for row in z.iter()? {
                max = max.max(row?.1.value());
            }
            max
        };
        let gate = EpochGate::starting_at(max_death + 1);
        let store = LocalStore {
            packs: Packs::open(
                Arc::clone(&files),
                options.pack_size,
                next_pack,
                pack_bytes,
                Arc::clone(&gate),
            ),
            files,
            db,
            gate,
            options,
            salt,
            counters: Mutex::new(counters),
            reclaiming: Mutex::default(),
            freed_relaxed: AtomicU64::new(0),
            unsynced: Mutex::default(),
            _lock: lock,
            in_memory: false,
        };
        store.reclaim()?;
        Ok(store)
    }

    /// A write transaction that is durable when it commits (unless commits are not synced at
    /// all, [`LocalOptions::sync_commits`]). Its commit makes every relaxed commit before it
    /// durable too, so the pack bytes those referred to are synced first, here, inside the
    /// transaction: write transactions run one at a time, so no relaxed commit slips in
    /// between the syncs and this commit.
    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        let mut txn = self.db.begin_write()?;
        if self.options.sync_commits {
            self.sync_unsynced()?;
        } else {
            txn.set_durability(redb::Durability::None)?;
        }
        Ok(txn)
    }

    /// A write transaction that becomes durable only with a later durable one (read counts,
    /// volume write-backs between flushes). The packs its chunks were staged into are noted, so
    /// that the later commit syncs them first.
    fn begin_relaxed(&self, touched: &[u32]) -> Result<redb::WriteTransaction> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        self.unsynced
            .lock()
            .expect("unsynced lock")
            .extend(touched.iter().copied());
        Ok(txn)
    }

    /// Removes a block and drops its references in one transaction; chunks left without one
    /// become zombies stamped `death`.
    fn release(&self, id: BlockId, death: u64) -> Result<(Manifest, Counters)> {
        let txn = self.begin_write()?;
        let (manifest, counters) = {
            let mut blocks = txn.open_table(BLOCKS)?;
            let encoded = blocks
                .remove(id.as_u128())?
                .ok_or(Error::NotFound(What::Block(id)))?
                .value()
                .to_vec();
            txn.open_table(ACCESSES)?.remove(id.as_u128())?;
            let manifest = Manifest::decode(&encoded, &format_args!("block {id}"))?;
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut zombies = txn.open_table(ZOMBIES)?;
            let mut meta = txn.open_table(META)?;
            let mut counters = read_counters(&meta)?;
            for chunk_id in manifest.chunk_refs() {
                if let Some(mut entry) = get_chunk(&chunks, chunk_id)? {
                    entry.refs = entry.refs.saturating_sub(1);
                    if entry.refs == 0 {
                        zombies.insert(chunk_id.0, death)?;
                    }
                    chunks.insert(chunk_id.0, entry.encode())?;
                }
            }
            counters.blocks -= 1;
            counters.logical -= manifest.size;
            counters.zero -= manifest.zero_bytes();
            counters.manifest_bytes -= encoded.len() as u64;
            meta.insert("totals", counters.encode().as_slice())?;
            (manifest, counters)
        };
        txn.commit()?;
        Ok((manifest, counters))
    }

    fn set_counters(&self, c: Counters) {
        *self.counters.lock().expect("counters lock") = c;
    }

    /// Syncs the packs relaxed commits referred to (see [`LocalStore::begin_write`]). A pack
    /// compaction deleted since needs nothing.
    fn sync_unsynced(&self) -> Result<()> {
        let mut unsynced = self.unsynced.lock().expect("unsynced lock");
        while let Some(&pack) = unsynced.iter().next() {
            match self.packs.sync(pack) {
                Ok(()) | Err(Error::NotFound(What::Pack(_))) => {
                    unsynced.remove(&pack);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Records chunks staged for a commit in its transaction. A chunk another commit stored first
/// keeps that copy; this one is dead space that compaction reclaims.
fn insert_staged(
    chunks: &mut redb::Table<[u8; 32], [u8; ChunkEntry::LEN]>,
    locations: &mut redb::Table<u128, [u8; 32]>,
    packs: &mut redb::Table<u32, (u64, u64)>,
    staged: Vec<StagedChunk>,
    counters: &mut Counters,
) -> Result<()> {
    for s in staged {
        let StagedAt::Pack { pack, offset } = s.at else {
            return Err(Error::Corrupt("chunk staged by another backend".into()));
        };
        if get_chunk(chunks, &s.info.id)?.is_some() {
            continue;
        }
        let entry = ChunkEntry {
            pack,
            offset,
            info: s.info,
            refs: 0,
        };
        chunks.insert(s.info.id.0, entry.encode())?;
        locations.insert(entry.location_key(), s.info.id.0)?;
        let (end, live) = packs.get(pack)?.map_or((0, 0), |v| v.value());
        packs.insert(
            pack,
            (
                end.max(offset + entry.record_len()),
                live + entry.record_len(),
            ),
        )?;
        counters.add_chunk(&s.info);
    }
    Ok(())
}

impl BlockStore for LocalStore {
    fn backend(&self) -> &'static str {
        if self.in_memory {
            "memory"
        } else {
            "local"
        }
    }

    fn is_durable(&self) -> bool {
        !self.in_memory
    }

    fn domain_salt(&self) -> [u8; 16] {
        self.salt
    }

    fn pin(&self) -> Pin {
        self.gate.pin()
    }

    fn find_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkInfo>>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CHUNKS)?;
        ids.iter()
            .map(|id| Ok(get_chunk(&t, id)?.filter(|e| e.refs > 0).map(|e| e.info)))
            .collect()
    }

    fn stage_chunks(&self, chunks: &[NewChunk]) -> Result<Vec<StagedChunk>> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<_> = chunks.iter().map(|c| (c.info(), &c.payload[..])).collect();
        let (pack, offsets) = self.packs.append(&records)?;
        Ok(records
            .into_iter()
            .zip(offsets)
            .map(|((info, _), offset)| StagedChunk {
                info,
                at: StagedAt::Pack { pack, offset },
            })
            .collect())
    }

    fn commit_block(
        &self,
        id: BlockId,
        manifest: &Manifest,
        staged: Vec<StagedChunk>,
    ) -> Result<()> {
        manifest.validate()?;
        let touched: BTreeSet<u32> = staged
            .iter()
            .filter_map(|s| match s.at {
                StagedAt::Pack { pack, .. } => Some(pack),
                StagedAt::Backend(_) => None,
            })
            .collect();
        if self.options.sync_commits {
            for pack in touched {
                self.packs.sync(pack)?;
            }
        }
        let encoded = manifest.encode();
        let txn = self.begin_write()?;
        let counters = {
            let mut blocks = txn.open_table(BLOCKS)?;
            if blocks.get(id.as_u128())?.is_some() {
                return Err(Error::AlreadyExists(What::Block(id)));
            }
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut locations = txn.open_table(LOCATIONS)?;
            let mut packs = txn.open_table(PACKS)?;
            let mut zombies = txn.open_table(ZOMBIES)?;
            let mut meta = txn.open_table(META)?;
            let mut counters = read_counters(&meta)?;
            insert_staged(
                &mut chunks,
                &mut locations,
                &mut packs,
                staged,
                &mut counters,
            )?;
            for chunk_id in manifest.chunk_refs() {
                let mut entry = get_chunk(&chunks, chunk_id)?.ok_or_else(|| {
                    Error::Corrupt(format!(
                        "block {id} refers to chunk {chunk_id:?}, which is neither stored nor staged"
                    ))
                })?;
                entry.refs += 1;
                if entry.refs == 1 {
                    zombies.remove(chunk_id.0)?;
                }
                chunks.insert(chunk_id.0, entry.encode())?;
            }
            blocks.insert(id.as_u128(), encoded.as_slice())?;
            counters.blocks += 1;
            counters.logical += manifest.size;
            counters.zero += manifest.zero_bytes();
            counters.manifest_bytes += encoded.len() as u64;
            meta.insert("totals", counters.encode().as_slice())?;
            counters
        };
        txn.commit()?;
        self.set_counters(counters);
        Ok(())
    }

    fn manifest(&self, id: BlockId) -> Result<Manifest> {
        let r = self.db.begin_read()?;
        let t = r.open_table(BLOCKS)?;
        let v = t
            .get(id.as_u128())?
            .ok_or(Error::NotFound(What::Block(id)))?;
        Manifest::decode(v.value(), &format_args!("block {id}"))
    }

    fn chunk(&self, id: &ChunkId) -> Result<StoredChunk> {
        // Compaction may move the chunk between the lookup and the read: look again then.
        let mut attempts = 0;
        loop {
            let entry = {
                let r = self.db.begin_read()?;
                let t = r.open_table(CHUNKS)?;
                get_chunk(&t, id)?.ok_or(Error::NotFound(What::Chunk(*id)))?
            };
            match self.packs.read(entry.pack, entry.offset, &entry.info) {
                Ok(payload) => {
                    return Ok(StoredChunk {
                        info: entry.info,
                        payload: payload.into(),
                    })
                }
                Err(Error::NotFound(What::Pack(_))) if attempts < 3 => attempts += 1,
                Err(Error::NotFound(what)) => {
                    return Err(Error::Corrupt(format!("chunk {id:?}: {what} is missing")))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn free_block(&self, id: BlockId) -> Result<Manifest> {
        let (manifest, counters) = self.gate.record(|death| self.release(id, death))?;
        self.set_counters(counters);
        // The block is gone for good; reclaiming its space is best effort and retried by the next
        // free or the next open, so a failure here does not undo the free.
        let _ = self.reclaim();
        Ok(manifest)
    }

    fn blocks(&self, visit: &mut dyn FnMut(BlockSummary) -> bool) -> Result<()> {
        let r = self.db.begin_read()?;
        let blocks = r.open_table(BLOCKS)?;
        let accesses = r.open_table(ACCESSES)?;
        for row in blocks.iter()? {
            let (k, v) = row?;
            let id = BlockId::from_u128(k.value());
            // A damaged manifest is `verify`'s to report; listing goes on past it, so that
            // statistics, exports and checks still see every other block.
            let Ok(manifest) = Manifest::decode(v.value(), &format_args!("block {id}")) else {
                continue;
            };
            let accesses = accesses.get(k.value())?.map_or(0, |n| n.value());
            if !visit(BlockSummary {
                id,
                manifest,
                accesses,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn accesses(&self, id: BlockId) -> Result<u64> {
        let r = self.db.begin_read()?;
        if r.open_table(BLOCKS)?.get(id.as_u128())?.is_none() {
            return Err(Error::NotFound(What::Block(id)));
        }
        Ok(r.open_table(ACCESSES)?
            .get(id.as_u128())?
            .map_or(0, |n| n.value()))
    }

    fn add_accesses(&self, counts: &[(BlockId, u64)]) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        // Read counts are statistics: they ride along with the next durable commit rather than
        // paying an fsync of their own.
        let txn = self.begin_relaxed(&[])?;
        {
            let blocks = txn.open_table(BLOCKS)?;
            let mut accesses = txn.open_table(ACCESSES)?;
            for (id, n) in counts {
                if blocks.get(id.as_u128())?.is_none() {
                    continue;
                }
                let old = accesses.get(id.as_u128())?.map_or(0, |v| v.value());
                accesses.insert(id.as_u128(), old + n)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn totals(&self) -> Totals {
        let c = *self.counters.lock().expect("counters lock");
        Totals {
            blocks: c.blocks,
            logical: c.logical,
            zero: c.zero,
            unique: c.unique,
            stored: c.stored,
            chunks: c.chunks,
            physical: self.packs.bytes()
                + c.manifest_bytes
                + c.chunks * crate::types::INDEX_BYTES_PER_CHUNK
                + c.map_rows * volumes::MAP_BYTES_PER_ROW,
            volumes: c.volumes,
            volume_bytes: c.volume_bytes,
            volume_zeroed: c.volume_zeroed,
        }
    }

    fn verify(&self, read_data: bool, report: &mut dyn FnMut(Damage)) -> Result<()> {
        verify::verify(self, read_data, report)
    }

    fn create_volume(&self, record: &crate::VolumeRecord) -> Result<()> {
        self.create_volume_row(record)
    }

    fn volume(&self, name: &str) -> Result<crate::VolumeRecord> {
        self.volume_row(name)
    }

    fn volumes(&self) -> Result<Vec<crate::VolumeRecord>> {
        self.volume_rows()
    }

    fn volume_map(
        &self,
        name: &str,
        chunks: std::ops::Range<u64>,
        visit: &mut dyn FnMut(u64, crate::MapEntry) -> bool,
    ) -> Result<()> {
        self.read_volume_map(name, chunks, visit)
    }

    fn commit_volume(
        &self,
        name: &str,
        changes: &[(u64, crate::MapEntry)],
        staged: Vec<StagedChunk>,
        durable: bool,
    ) -> Result<()> {
        self.commit_volume_rows(name, changes, staged, durable)
    }

    fn clear_volume(&self, name: &str, chunks: std::ops::Range<u64>, durable: bool) -> Result<()> {
        self.clear_volume_rows(name, chunks, durable)
    }

    fn sync(&self) -> Result<()> {
        self.sync_volumes()
    }

    fn housekeep(&self) -> Result<()> {
        self.reclaim_if_due()
    }

    fn snapshot_volume(
        &self,
        source: &str,
        name: &str,
        writable: bool,
    ) -> Result<crate::VolumeRecord> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.snapshot_volume_row(source, name, writable, now)
    }

    fn delete_volume(&self, name: &str) -> Result<()> {
        self.delete_volume_row(name)
    }

    fn volume_usage(&self, name: &str) -> Result<crate::VolumeUsage> {
        self.volume_usage_of(name)
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        // Make what was committed with relaxed durability (read counts, bulk loads, volume
        // write-backs) reach the disk: packs first, then a durable index commit.
        if self.packs.sync_all().is_err() {
            return;
        }
        if let Ok(txn) = self.db.begin_write() {
            let _ = txn.commit();
        }
    }
}
