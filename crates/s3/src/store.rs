//! [`S3Store`]: the [`BlockStore`] contract on a bucket that several servers share.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aetherflow_store::epoch::EpochGate;
use aetherflow_store::{
    BlockId, BlockStore, BlockSummary, ChunkId, ChunkInfo, Damage, Error, Manifest, NewChunk, Pin,
    RequestCounts, Result, StagedChunk, StoredChunk, Totals,
};
use bytes::Bytes;

use crate::catalog::{Catalog, Home};
use crate::housekeeper::{start_housekeeper, Housekeeper};
use crate::keys;
use crate::location::S3Location;
use crate::meta::open_or_create_meta;
use crate::pack;
use crate::remote::{Remote, Timeouts};
use crate::writer::{PackSlot, Sealed, StagedNote, Writer};

/// How a bucket store behaves; the defaults suit several servers on one bucket.
#[derive(Debug, Clone, Copy)]
pub struct S3Options {
    /// How long a condemned pack stays in the bucket before it may be deleted, and how old a
    /// pack must be before it may be condemned. Every commit must reach the bucket within it
    /// (requests time out well before). Zero deletes garbage at once, which is safe only
    /// while this process is the bucket's one writer (tests, single servers).
    pub grace: Duration,
    /// Pack objects are uploaded at about this size (or sooner, when a commit needs them).
    pub pack_size: usize,
    /// How stale the view of other servers' blocks and packs may be for listings, figures and
    /// dedup.
    pub refresh_every: Duration,
    /// Background garbage collection interval; `None` collects only when asked (and, with a
    /// zero grace period, after every free).
    pub sweep_every: Option<Duration>,
    /// Packs whose live bytes fall below this fraction are compacted.
    pub compact_below: f64,
    pub timeouts: Timeouts,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            grace: Duration::from_secs(15 * 60),
            pack_size: 8 << 20,
            refresh_every: Duration::from_secs(10),
            sweep_every: Some(Duration::from_secs(5 * 60)),
            compact_below: 0.5,
            timeouts: Timeouts::default(),
        }
    }
}

impl S3Options {
    /// Options for one process alone on a bucket: garbage goes at once, as in the local store.
    pub fn single_writer() -> S3Options {
        S3Options {
            grace: Duration::ZERO,
            sweep_every: None,
            ..S3Options::default()
        }
    }

    /// How fresh the view of condemned packs must be when a commit relies on a chunk found
    /// earlier: a quarter of the grace period leaves the rest for the commit's own request.
    pub(crate) fn condemned_max_age(&self) -> Duration {
        self.refresh_every.min(self.grace / 4)
    }
}

/// Everything the store and its background sweeper share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub remote: Remote,
    pub options: S3Options,
    pub salt: [u8; 16],
    pub meta_bytes: u64,
    pub gate: Arc<EpochGate>,
    pub writer: Writer,
    pub catalog: Mutex<Catalog>,
    /// When the last full refresh began; held while one runs.
    pub fresh: Mutex<Option<Instant>>,
    /// When the last listing of condemnation marks began; held while one runs.
    pub marks_fresh: Mutex<Option<Instant>>,
    /// Read counts of this process, per block (its own objects under `reads/`).
    pub reads: Mutex<HashMap<BlockId, crate::reads::ReadCount>>,
    /// Chunks fetched ahead for readers.
    pub prefetched: crate::prefetch::Prefetched,
    /// One sweep at a time in this process.
    pub sweeping: Mutex<()>,
}

/// A store on an S3-compatible bucket.
#[derive(Debug)]
pub struct S3Store {
    inner: Arc<Inner>,
    housekeeper: Option<Housekeeper>,
}

impl S3Store {
    /// Opens the store at `location`, creating it if the prefix holds none. Fails at once, with
    /// a message that says what to fix, when the bucket is missing, the credentials are wrong
    /// or the server does not answer.
    pub fn open(location: &S3Location, options: S3Options) -> Result<S3Store> {
        let remote = Remote::connect(location, options.timeouts)?;
        let (salt, meta_bytes) = open_or_create_meta(&remote)?;
        let writer_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let inner = Arc::new(Inner {
            remote,
            options,
            salt,
            meta_bytes,
            gate: EpochGate::starting_at(0),
            writer: Writer::new(writer_id, options.pack_size),
            catalog: Mutex::default(),
            fresh: Mutex::default(),
            marks_fresh: Mutex::default(),
            reads: Mutex::default(),
            prefetched: Default::default(),
            sweeping: Mutex::default(),
        });
        inner.refresh_if_stale(Duration::ZERO)?;
        let housekeeper = Some(start_housekeeper(Arc::downgrade(&inner)));
        Ok(S3Store { inner, housekeeper })
    }

    /// One garbage collection pass now (see `docs/design.md`): deletes condemned packs whose
    /// grace period has passed and nothing needs, condemns packs without live chunks, compacts
    /// mostly-dead ones. Any failure to list aborts the pass before it deletes anything more.
    pub fn sweep(&self) -> Result<crate::sweep::SweepReport> {
        self.inner.sweep()
    }

    /// Brings this server's view of the bucket (other servers' blocks, packs and marks) up to
    /// date now, instead of within [`S3Options::refresh_every`].
    pub fn refresh(&self) -> Result<()> {
        self.inner.refresh_if_stale(Duration::ZERO)
    }

    /// Where the store is.
    pub fn location(&self) -> &S3Location {
        &self.inner.remote.location
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.housekeeper.take() {
            *stop.0.lock().expect("housekeeper lock") = true;
            stop.1.notify_all();
            let _ = handle.join();
        }
        if let Err(e) = self.inner.flush_reads() {
            tracing::warn!("read counts of the last seconds are lost: {e}");
        }
    }
}

/// How long the bucket's word that a block exists is taken without asking again.
const MANIFEST_TRUST: Duration = Duration::from_secs(1);

impl Inner {
    /// Uploads a sealed pack and makes its chunks findable; wakes the commits waiting for it.
    pub(crate) fn upload(&self, slot: &PackSlot, sealed: Sealed) -> Result<()> {
        let (bytes, entries) = sealed;
        let size = bytes.len() as u64;
        let result = self.remote.put(&keys::pack(&slot.name), bytes, false);
        if result.is_ok() {
            self.gate.record(|stamp| {
                self.catalog.lock().expect("catalog lock").add_pack(
                    &slot.name,
                    size,
                    None,
                    entries,
                    Some(stamp),
                )
            });
        }
        slot.finish_upload(&result);
        result
    }

    /// Makes sure `slot`'s pack is in the bucket: uploads it if still open, else waits.
    pub(crate) fn ensure_uploaded(&self, slot: &Arc<PackSlot>) -> Result<()> {
        if let Some(sealed) = self.writer.seal(slot) {
            self.upload(slot, sealed)?;
        }
        slot.wait_uploaded()
    }

    /// Stages `chunks` and uploads their pack at once (compaction and rescues).
    pub(crate) fn write_now(&self, chunks: &[(ChunkInfo, Bytes)]) -> Result<()> {
        let records: Vec<(ChunkInfo, &[u8])> = chunks.iter().map(|(i, p)| (*i, &p[..])).collect();
        let (notes, full) = self.writer.stage(&records);
        if let Some((slot, sealed)) = full {
            self.upload(&slot, sealed)?;
        }
        let mut done: Vec<*const PackSlot> = Vec::new();
        for note in notes {
            if !done.contains(&Arc::as_ptr(&note.slot)) {
                done.push(Arc::as_ptr(&note.slot));
                self.ensure_uploaded(&note.slot)?;
            }
        }
        Ok(())
    }

    /// Reads one copy of a chunk, checked.
    pub(crate) fn read_home(&self, home: &Home) -> Result<Bytes> {
        let len = pack::record_len(&home.info);
        let bytes = self
            .remote
            .get_range(&keys::pack(&home.pack), home.offset..home.offset + len)?;
        pack::check_record(&home.pack, home.offset, bytes, &home.info)
    }

    /// A chunk's checked payload from any of its copies.
    pub(crate) fn read_chunk(&self, id: &ChunkId) -> Result<StoredChunk> {
        for attempt in 0..2 {
            let homes = self.catalog.lock().expect("catalog lock").homes(id);
            let mut failure = None;
            for home in &homes {
                match self.read_home(home) {
                    Ok(payload) => {
                        return Ok(StoredChunk {
                            info: home.info,
                            payload,
                        })
                    }
                    Err(e @ Error::Unavailable(_)) => return Err(e),
                    Err(e) => failure = Some(e),
                }
            }
            if attempt == 0 {
                // A copy may have moved (compaction by another server) or be new to us.
                self.refresh_packs()?;
                continue;
            }
            return Err(match failure {
                Some(Error::NotFound(what)) => {
                    Error::Corrupt(format!("chunk {id:?}: its pack is gone ({what})"))
                }
                Some(e) => e,
                None => Error::Corrupt(format!("chunk {id:?}: no pack in the bucket holds it")),
            });
        }
        unreachable!("the loop returns")
    }
}

fn note_of(s: &StagedChunk) -> Result<&StagedNote> {
    s.backend_note()
        .and_then(|n| n.downcast_ref::<StagedNote>())
        .ok_or_else(|| Error::Corrupt("chunk staged by another backend".into()))
}

impl BlockStore for S3Store {
    fn backend(&self) -> &'static str {
        "s3"
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn domain_salt(&self) -> [u8; 16] {
        self.inner.salt
    }

    fn pin(&self) -> Pin {
        self.inner.gate.pin()
    }

    fn find_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkInfo>>> {
        let inner = &self.inner;
        // Dedup is best effort: an allocation never waits for another thread's refresh.
        inner.refresh_in_passing(inner.options.refresh_every)?;
        let catalog = inner.catalog.lock().expect("catalog lock");
        Ok(ids.iter().map(|id| catalog.find(id)).collect())
    }

    fn stage_chunks(&self, chunks: &[NewChunk]) -> Result<Vec<StagedChunk>> {
        let infos: Vec<ChunkInfo> = chunks.iter().map(NewChunk::info).collect();
        let records: Vec<(ChunkInfo, &[u8])> = infos
            .iter()
            .zip(chunks)
            .map(|(i, c)| (*i, &c.payload[..]))
            .collect();
        let (notes, full) = self.inner.writer.stage(&records);
        if let Some((slot, sealed)) = full {
            self.inner.upload(&slot, sealed)?;
        }
        Ok(infos
            .into_iter()
            .zip(notes)
            .map(|(info, note)| StagedChunk::with_note(info, Arc::new(note)))
            .collect())
    }

    fn commit_block(
        &self,
        id: BlockId,
        manifest: &Manifest,
        staged: Vec<StagedChunk>,
    ) -> Result<()> {
        let inner = &self.inner;
        manifest.validate()?;
        let mut staged_ids = HashSet::new();
        let mut slots: Vec<Arc<PackSlot>> = Vec::new();
        for s in &staged {
            let note = note_of(s)?;
            note.slot.restate(note.entry, &s.info);
            staged_ids.insert(s.info.id);
            if !slots.iter().any(|x| Arc::ptr_eq(x, &note.slot)) {
                slots.push(Arc::clone(&note.slot));
            }
        }
        {
            let catalog = inner.catalog.lock().expect("catalog lock");
            if let Some(c) = manifest
                .chunk_refs()
                .find(|c| !staged_ids.contains(c) && !catalog.has_home(c))
            {
                return Err(Error::Corrupt(format!(
                    "block {id} refers to chunk {c:?}, which was neither staged nor stored"
                )));
            }
        }
        for slot in &slots {
            inner.ensure_uploaded(slot)?;
        }
        if !inner.options.grace.is_zero() {
            inner.refresh_condemned_if_stale(inner.options.condemned_max_age())?;
        }
        inner.rescue(manifest)?;
        let body = manifest.encode();
        let len = body.len() as u64;
        match inner.remote.put(&keys::block(id), Bytes::from(body), true) {
            Err(Error::AlreadyExists(_)) => {
                return Err(Error::AlreadyExists(format!("block {id}")))
            }
            other => other?,
        }
        inner
            .catalog
            .lock()
            .expect("catalog lock")
            .add_block(id, Arc::new(manifest.clone()), len);
        Ok(())
    }

    fn manifest(&self, id: BlockId) -> Result<Manifest> {
        let inner = &self.inner;
        // Asked of the bucket unless it showed the block a moment ago: another server may have
        // freed it (one read asks for its manifest several times within that moment).
        let recent = inner
            .catalog
            .lock()
            .expect("catalog lock")
            .confirmed_block(id, MANIFEST_TRUST);
        if let Some(m) = recent {
            return Ok((*m).clone());
        }
        let body = match inner.remote.get(&keys::block(id)) {
            Err(Error::NotFound(_)) => {
                inner.catalog.lock().expect("catalog lock").remove_block(id);
                return Err(Error::NotFound(format!("block {id}")));
            }
            other => other?,
        };
        let manifest = Manifest::decode(&body, &format_args!("block {id}"))?;
        inner.catalog.lock().expect("catalog lock").add_block(
            id,
            Arc::new(manifest.clone()),
            body.len() as u64,
        );
        Ok(manifest)
    }

    fn chunk(&self, id: &ChunkId) -> Result<StoredChunk> {
        if !self.inner.catalog.lock().expect("catalog lock").is_live(id) {
            return Err(Error::NotFound(format!("chunk {id:?}")));
        }
        if let Some(chunk) = self.inner.take_prefetched(id) {
            return Ok(chunk);
        }
        self.inner.read_chunk(id)
    }

    fn prefetch(&self, ids: &[ChunkId]) {
        self.inner.prefetch(ids);
    }

    fn free_block(&self, id: BlockId) -> Result<Manifest> {
        let inner = &self.inner;
        let manifest = self.manifest(id)?;
        inner.remote.delete(&keys::block(id))?;
        inner.catalog.lock().expect("catalog lock").remove_block(id);
        if let Err(e) = inner.forget_reads(id) {
            tracing::warn!("block {id} freed; its read counts stay behind: {e}");
        }
        if inner.options.grace.is_zero() {
            if let Err(e) = inner.sweep() {
                tracing::warn!("block {id} freed; collecting its chunks failed: {e}");
            }
        }
        Ok(manifest)
    }

    fn blocks(&self, visit: &mut dyn FnMut(BlockSummary) -> bool) -> Result<()> {
        let inner = &self.inner;
        inner.refresh_if_stale(inner.options.refresh_every)?;
        let reads = inner.all_reads()?;
        let ids = inner.catalog.lock().expect("catalog lock").block_ids();
        for id in ids {
            let Some(manifest) = inner.catalog.lock().expect("catalog lock").block(id) else {
                continue;
            };
            let summary = BlockSummary {
                id,
                manifest: (*manifest).clone(),
                accesses: reads.get(&id).copied().unwrap_or(0),
            };
            if !visit(summary) {
                break;
            }
        }
        Ok(())
    }

    fn accesses(&self, id: BlockId) -> Result<u64> {
        let inner = &self.inner;
        if !inner.catalog.lock().expect("catalog lock").has_block(id) {
            self.manifest(id)?;
        }
        inner.reads_of(id)
    }

    fn add_accesses(&self, counts: &[(BlockId, u64)]) -> Result<()> {
        for &(id, n) in counts {
            let known = self
                .inner
                .catalog
                .lock()
                .expect("catalog lock")
                .has_block(id);
            if !known {
                match self.manifest(id) {
                    Ok(_) => {}
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            self.inner.add_reads(id, n);
        }
        Ok(())
    }

    fn totals(&self) -> Totals {
        let inner = &self.inner;
        if let Err(e) = inner.refresh_if_stale(inner.options.refresh_every) {
            tracing::warn!("figures from the last good listing: {e}");
        }
        inner
            .catalog
            .lock()
            .expect("catalog lock")
            .totals(inner.meta_bytes)
    }

    fn verify(&self, read_data: bool, report: &mut dyn FnMut(Damage)) -> Result<()> {
        crate::verify::verify(&self.inner, read_data, report)
    }

    /// From the catalog, so within [`S3Options::refresh_every`] of another server's free.
    fn known_gone(&self, id: BlockId) -> bool {
        !self
            .inner
            .catalog
            .lock()
            .expect("catalog lock")
            .has_block(id)
    }

    fn remote_requests(&self) -> Option<RequestCounts> {
        Some(self.inner.remote.counts())
    }
}
