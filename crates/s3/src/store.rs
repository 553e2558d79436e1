//! [`S3Store`]: the [`BlockStore`] contract on a bucket that several servers share.
//!
//! The store is made of parts that each own their state behind their own methods:
//!
//! | part | owns |
//! |---|---|
//! | [`Remote`] | the bucket connection and its request counts |
//! | [`View`] | the catalog (blocks, packs, marks) and the listings that refresh it |
//! | [`PackWriter`] | the open pack and the uploads of sealed ones |
//! | [`ReadCounts`] | this server's read counts and their objects |
//! | [`Prefetcher`] | chunks fetched ahead for readers |
//! | [`Sweeper`] | garbage collection passes |
//! | [`LogWriter`] | what this server committed, waiting to be appended to the log |
//!
//! **Lock order**, outermost first; a thread holding one lock takes only locks below it:
//!
//! 1. the sweeper's pass lock: held for a whole pass, requests included; no commit, read or
//!    refresh takes it;
//! 2. the epoch gate's event lock (`EpochGate::record`): its closures only change the view,
//!    never make a request;
//! 3. the writer's current-pack lock, then that pack slot's lock;
//! 4. the view's catalog lock;
//! 5. leaves: the epoch gate's pin table, read counts, prefetch slots, the log's queue, the
//!    refreshes' single-flight states.
//!
//! The log reader's state is locked across its requests, but only by the refresh from the log,
//! which runs once at a time: nobody waits for it.
//!
//! No lock is held while a request is under way, except the sweeper's (1). Waiting for a
//! listing another thread runs ([`crate::sync::SingleFlight`]) or for a pack another thread
//! uploads holds no lock either.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aetherflow_store::epoch::EpochGate;
use aetherflow_store::{
    BlockId, BlockStore, BlockSummary, ChunkId, ChunkInfo, Damage, Error, Manifest, MapEntry,
    NewChunk, Pin, RequestCounts, Result, StagedChunk, StoredChunk, Totals, VolumeRecord,
    VolumeUsage, What,
};
use bytes::Bytes;
use object_store::ObjectStore;

use crate::catalog::KnownBlock;
use crate::chunks::read_chunk;
use crate::housekeeper::{start_housekeeper, Housekeeper};
use crate::keys;
use crate::location::S3Location;
use crate::log_reader::LogReader;
use crate::log_record::{Event, Origin};
use crate::log_writer::LogWriter;
use crate::meta::{open_identity, Identity};
use crate::packs::{slots_of, PackWriter};
use crate::prefetch::Prefetcher;
use crate::reads::ReadCounts;
use crate::remote::{s3_bucket, Remote, Timeouts};
use crate::snapshots::{self, LogTrimmed, SnapshotOutcome};
use crate::sweep::{SweepReport, Sweeper};
use crate::sync::lock;
use crate::view::View;
use crate::volumes::{record_of, usage_of, Leases};
use crate::writer::{PackSlot, StagedNote, Writer};

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
    /// Open for reading only (a check): the store must exist, and nothing is ever written to
    /// the bucket, not even read counts.
    pub read_only: bool,
    /// How long a server's hold on a volume it writes lasts without renewal (it renews a third
    /// of the way through): after a crash, another server may take the volume over this long
    /// after the last renewal.
    pub volume_lease: Duration,
    /// Packs that commits upload at once; commits that arrive while they are all in flight
    /// share the next pack, so that one PUT lands them all (see `writer`). 0: no limit, every
    /// commit uploads its pack at once.
    pub commit_uploads: usize,
    /// How often news for other servers that no commit carried (a pack uploaded, a volume
    /// head changed) is appended to the bucket's log (`docs/design.md`, "The log"); commits
    /// append their own records as they happen.
    pub log_every: Duration,
    /// How old the log's current epoch grows before a refresh begins the next...
    pub epoch_every: Duration,
    /// ...or how many records it holds (one listing page by default).
    pub epoch_records: usize,
    /// How often a server looks whether a snapshot of the log is due (`None`: only when
    /// asked, [`S3Store::write_snapshot`]).
    pub snapshot_every: Option<Duration>,
    /// A snapshot is due once the records since the newest one hold this fraction of its
    /// bytes...
    pub snapshot_after: f64,
    /// ...and at least this many bytes.
    pub snapshot_min_bytes: u64,
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
            read_only: false,
            volume_lease: Duration::from_secs(30),
            commit_uploads: 2,
            log_every: Duration::from_secs(1),
            epoch_every: Duration::from_secs(15 * 60),
            epoch_records: 1000,
            snapshot_every: Some(Duration::from_secs(60)),
            snapshot_after: 0.5,
            snapshot_min_bytes: 1 << 20,
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

    /// Options for reading a store without changing it (`check`).
    pub fn read_only() -> S3Options {
        S3Options {
            sweep_every: None,
            read_only: true,
            ..S3Options::default()
        }
    }

    /// How fresh the view of condemned packs must be when a commit relies on a chunk found
    /// earlier: a quarter of the grace period leaves the rest for the commit's own request.
    pub(crate) fn condemned_max_age(&self) -> Duration {
        self.refresh_every.min(self.grace / 4)
    }
}

/// The parts of a store, shared with its housekeeper.
#[derive(Debug)]
pub(crate) struct Parts {
    pub remote: Arc<Remote>,
    pub options: S3Options,
    pub identity: Identity,
    /// This process's random id: the name of its log records, packs and snapshot segments.
    pub writer_id: String,
    /// The snapshot this process last trimmed the log behind (the next trim skips it).
    pub trimmed_behind: std::sync::Mutex<Option<u64>>,
    pub gate: Arc<EpochGate>,
    pub view: Arc<View>,
    pub packs: Arc<PackWriter>,
    pub reads: ReadCounts,
    pub prefetch: Prefetcher,
    pub sweeper: Sweeper,
    pub leases: Leases,
    pub log: Arc<LogWriter>,
    /// Ids this process reserved for imports (`blocks/ID` created) and has not committed.
    pub reservations: std::sync::Mutex<HashSet<BlockId>>,
}

impl Parts {
    /// Before a commit that names `refs`: the packs of the chunks staged for it are in the
    /// bucket, every other chunk it names is held, and any whose only copies are condemned is
    /// copied out (with a view of the marks fresh enough for the commit to land within the
    /// grace period).
    fn land(&self, what: &str, refs: &[ChunkId], staged: &[StagedChunk]) -> Result<()> {
        let (slots, staged_ids) = self.check_refs(what, refs, staged)?;
        for slot in &slots {
            self.packs.ensure_uploaded(slot)?;
        }
        self.secure(refs, &staged_ids).map(|_| ())
    }

    /// Checks that every chunk a commit names is staged for it or held; returns the packs its
    /// staged chunks are in, and their ids.
    fn check_refs(
        &self,
        what: &str,
        refs: &[ChunkId],
        staged: &[StagedChunk],
    ) -> Result<(Vec<Arc<PackSlot>>, HashSet<ChunkId>)> {
        let mut staged_ids = HashSet::new();
        let mut notes = Vec::with_capacity(staged.len());
        for s in staged {
            let note = note_of(s)?;
            note.slot.restate(note.entry, &s.info);
            staged_ids.insert(s.info.id);
            notes.push(note);
        }
        let homeless = self.view.read(|c| {
            refs.iter()
                .find(|chunk| !staged_ids.contains(chunk) && !c.has_home(chunk))
                .copied()
        });
        if let Some(chunk) = homeless {
            return Err(Error::Corrupt(format!(
                "{what} refers to chunk {chunk:?}, which was neither staged nor stored"
            )));
        }
        Ok((slots_of(notes), staged_ids))
    }

    /// Looks at the condemned marks (fresh within G/4) and copies out every chunk a commit
    /// names, not staged for it, that only condemned packs hold; returns when the listing of
    /// marks relied on began (`None` without a grace period), for the writer rule of its
    /// record (`LogWriter::commit_all`).
    fn secure(
        &self,
        refs: &[ChunkId],
        staged_ids: &HashSet<ChunkId>,
    ) -> Result<Option<std::time::Instant>> {
        if self.view.behind() && refs.iter().any(|c| !staged_ids.contains(c)) {
            // Its view of the marks may predate the catalog being built again: a commit that
            // relies on chunks stored before waits until it is complete.
            return Err(Error::Unavailable(
                "this server is building its catalog again from a snapshot of the log; retry \
                 in a moment"
                    .into(),
            ));
        }
        self.fresh_marks()?;
        let marks_at = if self.options.grace.is_zero() {
            None
        } else {
            self.view.marks_listed_at()
        };
        // The staged chunks are in this commit's own packs, new and not condemned.
        self.sweeper
            .rescue_chunks(refs.iter().filter(|c| !staged_ids.contains(c)).copied())?;
        Ok(marks_at)
    }

    /// Writes a block's record: with the record of the pack its chunks are in if it has one
    /// (joining it while the pack is not in the bucket yet: one record for every commit of
    /// the pack), else a record of its own once every pack it needs is uploaded. Returns the
    /// record and how its write ended; an error before any record was attempted. The marks
    /// were looked at before the wait for the uploads (`marks_at`): the record is written
    /// only if its placement is close enough to them (`LogWriter::commit_all`).
    fn log_block(
        &self,
        slots: Vec<Arc<PackSlot>>,
        event: Event,
        marks_at: Option<std::time::Instant>,
    ) -> Result<(Origin, Result<()>)> {
        if let [slot] = &slots[..] {
            if slot.join(event.clone(), marks_at) {
                self.packs.ensure_uploaded(slot)?;
                return slot.wait_logged();
            }
        }
        for slot in &slots {
            self.packs.ensure_uploaded(slot)?;
        }
        Ok(self.log.commit_all(vec![event], marks_at))
    }

    /// Queues `freed` (block `id`'s free) for the next record, and an imported block's
    /// reservation for deletion once that record is written.
    fn free_later(&self, freed: Event, id: BlockId, imported: bool) {
        if imported {
            self.log.note_then_delete(freed, keys::reservation(id));
        } else {
            self.log.note(freed);
        }
    }

    /// Condemnation marks seen recently enough for a commit relying on them.
    fn fresh_marks(&self) -> Result<()> {
        if !self.options.grace.is_zero() {
            self.view
                .refresh_marks_if_stale(self.options.condemned_max_age())?;
        }
        Ok(())
    }

    /// A volume this server may not know yet (another server made it): its head and every
    /// delta of its layers, fetched now.
    fn load_volume(&self, name: &str) -> Result<()> {
        if self.view.read(|c| c.volume(name).is_some()) {
            return Ok(());
        }
        let head = self.leases.head_now(name)?;
        let layers: Vec<_> = head.chain.iter().map(|l| l.layer).collect();
        for layer in &layers {
            self.leases.list_layer(*layer)?;
        }
        self.view.load_layers(&layers)
    }

    /// See [`S3Store::write_snapshot`].
    pub fn write_snapshot(&self) -> Result<SnapshotOutcome> {
        snapshots::write_if_due(&self.remote, &self.view, &self.writer_id, &self.options)
    }

    /// See [`S3Store::trim_log`].
    pub fn trim_log(&self) -> Result<LogTrimmed> {
        let mut trimmed_behind = lock(&self.trimmed_behind);
        let trimmed = snapshots::trim_log(
            &self.remote,
            &self.writer_id,
            self.options.grace,
            *trimmed_behind,
        )?;
        if trimmed.behind.is_some() {
            *trimmed_behind = trimmed.behind;
        }
        Ok(trimmed)
    }

    fn damage_of(&self, name: &str) -> Result<()> {
        match self.view.read(|c| c.volume_damage(name)) {
            Some(why) => Err(Error::Corrupt(why)),
            None => Ok(()),
        }
    }
}

/// A store on an S3-compatible bucket.
#[derive(Debug)]
pub struct S3Store {
    parts: Arc<Parts>,
    housekeeper: Option<Housekeeper>,
}

/// How long this server's reading of the log is taken as the bucket's word that a block
/// exists, without reading the log again.
const MANIFEST_TRUST: Duration = Duration::from_secs(1);

impl S3Store {
    /// Opens the store at `location`, creating it if the prefix holds none (unless
    /// [`S3Options::read_only`]). Fails at once, with a message that says what to fix, when
    /// the bucket is missing, the credentials are wrong or the server does not answer.
    pub fn open(location: &S3Location, options: S3Options) -> Result<S3Store> {
        S3Store::open_on(s3_bucket(location, options.timeouts)?, location, options)
    }

    /// Opens the store in `bucket` (any object store: S3, or a wrapper that injects faults)
    /// under `location`'s prefix.
    pub fn open_on(
        bucket: Arc<dyn ObjectStore>,
        location: &S3Location,
        options: S3Options,
    ) -> Result<S3Store> {
        let remote = Arc::new(Remote::new(bucket, location)?);
        let identity = open_identity(&remote, !options.read_only)?;
        let writer_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let gate = EpochGate::starting_at(0);
        let seen_epoch = Arc::default();
        let reader = LogReader::new(writer_id.clone(), &options, Arc::clone(&seen_epoch));
        let log = Arc::new(LogWriter::new(
            Arc::clone(&remote),
            writer_id.clone(),
            options.grace,
            seen_epoch,
        ));
        let view = Arc::new(View::new(
            Arc::clone(&remote),
            identity.bytes,
            reader,
            Arc::clone(&log),
        ));
        let packs = Arc::new(PackWriter::new(
            Writer::new(writer_id.clone(), options.pack_size, options.commit_uploads),
            Arc::clone(&remote),
            Arc::clone(&view),
            Arc::clone(&gate),
            Arc::clone(&log),
        ));
        let parts = Arc::new(Parts {
            leases: Leases::new(
                Arc::clone(&remote),
                Arc::clone(&view),
                Arc::clone(&log),
                writer_id.clone(),
                options.volume_lease,
            ),
            reads: ReadCounts::new(Arc::clone(&remote), writer_id.clone(), options.read_only),
            prefetch: Prefetcher::new(Arc::clone(&remote), Arc::clone(&view)),
            sweeper: Sweeper::new(
                Arc::clone(&remote),
                Arc::clone(&view),
                Arc::clone(&packs),
                Arc::clone(&gate),
                Arc::clone(&log),
                options,
            ),
            log,
            reservations: std::sync::Mutex::default(),
            writer_id,
            trimmed_behind: std::sync::Mutex::default(),
            remote,
            options,
            identity,
            gate,
            view,
            packs,
        });
        if let Some((done, entries)) = snapshots::newest(&parts.remote)? {
            parts.view.start_from_snapshot(done.epoch, entries);
        }
        parts.view.refresh_at_open()?;
        let housekeeper = Some(start_housekeeper(Arc::downgrade(&parts)));
        Ok(S3Store { parts, housekeeper })
    }

    /// One garbage collection pass now (see `docs/design.md`): deletes condemned packs whose
    /// grace period has passed and nothing needs, condemns packs without live chunks, compacts
    /// mostly-dead ones. Any failure to list aborts the pass before it deletes anything more.
    pub fn sweep(&self) -> Result<SweepReport> {
        self.writable("collecting garbage")?;
        self.parts.sweeper.sweep()
    }

    /// Writes a snapshot of the log's settled epochs now if one is due (the housekeeper looks
    /// every [`S3Options::snapshot_every`]).
    pub fn write_snapshot(&self) -> Result<SnapshotOutcome> {
        self.writable("writing a snapshot of the log")?;
        self.parts.write_snapshot()
    }

    /// Deletes the log's epochs behind the newest snapshot at least two grace periods old,
    /// and the snapshots before it (the housekeeper does so after it looks for a snapshot to
    /// write).
    pub fn trim_log(&self) -> Result<LogTrimmed> {
        self.writable("deleting the log behind a snapshot")?;
        self.parts.trim_log()
    }

    /// Writes the news for other servers that no commit has carried to the bucket's log yet
    /// (the housekeeper does so every [`S3Options::log_every`]).
    pub fn flush_log(&self) -> Result<()> {
        self.parts.log.flush()
    }

    /// Applies what other servers appended to the bucket's log since this server last read it
    /// (what periodic refreshes do).
    pub fn refresh_from_log(&self) -> Result<()> {
        self.parts.view.follow_log_within(Duration::ZERO)
    }

    /// Brings this server's view of the bucket (other servers' blocks, packs and marks) up to
    /// date now, instead of within [`S3Options::refresh_every`].
    pub fn refresh(&self) -> Result<()> {
        self.parts.view.refresh_if_stale(Duration::ZERO)
    }

    /// Where the store is.
    pub fn location(&self) -> &S3Location {
        &self.parts.remote.location
    }

    fn writable(&self, doing: &'static str) -> Result<()> {
        if self.parts.options.read_only {
            return Err(Error::ReadOnly(doing));
        }
        Ok(())
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(housekeeper) = self.housekeeper.take() {
            housekeeper.stop();
        }
        if let Err(e) = self.parts.reads.flush() {
            tracing::warn!("read counts of the last seconds are lost: {e}");
        }
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
        self.parts.identity.salt
    }

    fn pin(&self) -> Pin {
        self.parts.gate.pin()
    }

    fn find_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkInfo>>> {
        let p = &self.parts;
        // Dedup is best effort: an allocation never waits for another thread's refresh.
        p.view.refresh_in_passing(p.options.refresh_every)?;
        if p.view.behind() {
            // The catalog is being built again: what it says of chunks and marks is partial.
            return Ok(vec![None; ids.len()]);
        }
        Ok(p.view.read(|c| ids.iter().map(|id| c.find(id)).collect()))
    }

    fn stage_chunks(&self, chunks: &[NewChunk]) -> Result<Vec<StagedChunk>> {
        self.writable("allocating")?;
        let infos: Vec<ChunkInfo> = chunks.iter().map(NewChunk::info).collect();
        let records: Vec<(ChunkInfo, &[u8])> = infos
            .iter()
            .zip(chunks)
            .map(|(i, c)| (*i, &c.payload[..]))
            .collect();
        let notes = self.parts.packs.stage(&records)?;
        Ok(infos
            .into_iter()
            .zip(notes)
            .map(|(info, note)| StagedChunk::with_note(info, Arc::new(note)))
            .collect())
    }

    fn reserve_block(&self, id: BlockId) -> Result<()> {
        self.writable("importing")?;
        let p = &self.parts;
        if p.view.read(|c| c.has_block(id)) {
            return Err(Error::AlreadyExists(What::Block(id)));
        }
        // A token of this reservation's own: a create retried after its answer was lost
        // finds the object there, and knows it for its own.
        let token = Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let key = keys::reservation(id);
        match p.remote.create(&key, token.clone()) {
            Ok(_) => {}
            Err(Error::AlreadyExists(_)) => match p.remote.get(&key) {
                Ok(body) if body == token => {}
                Ok(_) | Err(Error::NotFound(_)) => {
                    return Err(Error::AlreadyExists(What::Block(id)))
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
        lock(&p.reservations).insert(id);
        Ok(())
    }

    fn unreserve_block(&self, id: BlockId) {
        let p = &self.parts;
        if lock(&p.reservations).remove(&id) {
            if let Err(e) = p.remote.delete(&keys::reservation(id)) {
                tracing::warn!("block id {id} stays held, though no block has it: {e}");
            }
        }
    }

    fn commit_block(
        &self,
        id: BlockId,
        manifest: &Manifest,
        staged: Vec<StagedChunk>,
    ) -> Result<()> {
        self.writable("allocating")?;
        let p = &self.parts;
        manifest.validate()?;
        if p.view.read(|c| c.has_block(id)) {
            return Err(Error::AlreadyExists(What::Block(id)));
        }
        let refs: Vec<ChunkId> = manifest.chunk_refs().copied().collect();
        let (slots, staged_ids) = p.check_refs(&format!("block {id}"), &refs, &staged)?;
        let marks_at = p.secure(&refs, &staged_ids)?;
        let imported = lock(&p.reservations).contains(&id);
        let manifest = Arc::new(manifest.clone());
        let event = Event::BlockAdded {
            id,
            manifest: Arc::clone(&manifest),
            imported,
        };
        let logged = p.log_block(slots, event, marks_at);
        // Once its record is attempted, an imported id stays held until the record that
        // cancels the block is in the log: the record may be in the bucket.
        if logged.is_ok() {
            lock(&p.reservations).remove(&id);
        }
        let (origin, written) = logged?;
        if let Err(e) = written {
            // The record may be in the bucket all the same (it returned too late, or its
            // answer was lost): the block is cancelled, so that no server keeps it.
            p.view.note_block_freed(id, origin.clone());
            let cancel = Event::BlockFreed {
                id,
                added_in: origin,
            };
            p.free_later(cancel, id, imported);
            return Err(e);
        }
        let block = KnownBlock {
            manifest,
            origin,
            imported,
        };
        p.view.change(|c| c.add_block(id, block));
        Ok(())
    }

    fn manifest(&self, id: BlockId) -> Result<Manifest> {
        let p = &self.parts;
        // A block known here is taken from a read of the log a moment old: another server may
        // have freed it since (one read asks for its manifest several times within that
        // moment). One unknown is looked for in a read begun now: another server may have
        // committed it a moment ago.
        let max_age = if p.view.read(|c| c.has_block(id)) {
            MANIFEST_TRUST
        } else {
            Duration::ZERO
        };
        p.view.follow_log_within(max_age)?;
        p.view
            .read(|c| c.block(id))
            .map(|m| (*m).clone())
            .ok_or(Error::NotFound(What::Block(id)))
    }

    fn chunk(&self, id: &ChunkId) -> Result<StoredChunk> {
        let p = &self.parts;
        if !p.view.read(|c| c.is_live(id)) {
            return Err(Error::NotFound(What::Chunk(*id)));
        }
        if let Some(chunk) = p.prefetch.take(id) {
            return Ok(chunk);
        }
        read_chunk(&p.remote, &p.view, id)
    }

    fn prefetch(&self, ids: &[ChunkId]) {
        self.parts.prefetch.prefetch(ids);
    }

    fn free_block(&self, id: BlockId) -> Result<Manifest> {
        self.writable("freeing")?;
        let p = &self.parts;
        let manifest = self.manifest(id)?;
        // Decided here: the block leaves this server's view now (one of two frees at once
        // finds it gone), and if its record cannot be written in time, the free goes again
        // with the next one.
        let removed = p.view.change(|c| {
            let (origin, imported) = c.block_origin(id)?;
            c.remove_block(id, &origin)?;
            Some((origin, imported))
        });
        let Some((origin, imported)) = removed else {
            return Err(Error::NotFound(What::Block(id)));
        };
        p.view.note_block_freed(id, origin.clone());
        let freed = Event::BlockFreed {
            id,
            added_in: origin,
        };
        if let (_, Err(e)) = p.log.commit(freed.clone()) {
            p.free_later(freed, id, imported);
            return Err(Error::Unavailable(format!(
                "freeing block {id}: {e}; the free is written again with the next record"
            )));
        }
        if imported {
            if let Err(e) = p.remote.delete(&keys::reservation(id)) {
                tracing::warn!("block {id} freed; its id stays held: {e}");
            }
        }
        if let Err(e) = p.reads.forget(id) {
            tracing::warn!("block {id} freed; its read counts stay behind: {e}");
        }
        if p.options.grace.is_zero() {
            if let Err(e) = p.sweeper.sweep() {
                tracing::warn!("block {id} freed; collecting its chunks failed: {e}");
            }
        }
        Ok(manifest)
    }

    fn blocks(&self, visit: &mut dyn FnMut(BlockSummary) -> bool) -> Result<()> {
        let p = &self.parts;
        p.view.refresh_if_stale(p.options.refresh_every)?;
        let reads = p.reads.all()?;
        for id in p.view.read(|c| c.block_ids()) {
            let Some(manifest) = p.view.read(|c| c.block(id)) else {
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
        if !self.parts.view.read(|c| c.has_block(id)) {
            self.manifest(id)?;
        }
        self.parts.reads.of(id)
    }

    fn add_accesses(&self, counts: &[(BlockId, u64)]) -> Result<()> {
        for &(id, n) in counts {
            if !self.parts.view.read(|c| c.has_block(id)) {
                match self.manifest(id) {
                    Ok(_) => {}
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            self.parts.reads.add(id, n);
        }
        Ok(())
    }

    /// From the view as it is: the housekeeper keeps it within [`S3Options::refresh_every`],
    /// and no caller (an allocation checking capacity) waits for a listing.
    fn totals(&self) -> Totals {
        self.parts.view.totals()
    }

    fn verify(&self, read_data: bool, report: &mut dyn FnMut(Damage)) -> Result<()> {
        crate::verify::verify(&self.parts.remote, &self.parts.view, read_data, report)
    }

    /// From the catalog, so within [`S3Options::refresh_every`] of another server's free.
    fn known_gone(&self, id: BlockId) -> bool {
        !self.parts.view.read(|c| c.has_block(id))
    }

    fn remote_requests(&self) -> Option<RequestCounts> {
        Some(self.parts.remote.counts())
    }

    fn create_volume(&self, record: &VolumeRecord) -> Result<()> {
        self.writable("creating a volume")?;
        self.parts.leases.create(record)
    }

    fn volume(&self, name: &str) -> Result<VolumeRecord> {
        let p = &self.parts;
        p.load_volume(name)?;
        record_of(&p.view, name).ok_or_else(|| Error::NotFound(What::Volume(name.to_string())))
    }

    fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        let p = &self.parts;
        p.view.refresh_if_stale(p.options.refresh_every)?;
        Ok(p.view
            .read(|c| c.volume_names())
            .into_iter()
            .filter_map(|n| record_of(&p.view, &n))
            .collect())
    }

    fn volume_map(
        &self,
        name: &str,
        chunks: std::ops::Range<u64>,
        visit: &mut dyn FnMut(u64, MapEntry) -> bool,
    ) -> Result<()> {
        let p = &self.parts;
        p.load_volume(name)?;
        p.damage_of(name)?;
        p.view
            .read(|c| c.volume_map(name, chunks, visit))
            .ok_or_else(|| Error::NotFound(What::Volume(name.to_string())))
    }

    fn commit_volume(
        &self,
        name: &str,
        changes: &[(u64, MapEntry)],
        staged: Vec<StagedChunk>,
        _durable: bool,
    ) -> Result<()> {
        // Every commit is durable: the delta is in the bucket when this returns.
        self.writable("writing a volume")?;
        let p = &self.parts;
        p.load_volume(name)?;
        self.volume(name)?.check_writable()?;
        let refs: Vec<ChunkId> = changes.iter().filter_map(|(_, e)| e.chunk()).collect();
        p.land(&format!("volume {name}"), &refs, &staged)?;
        p.leases.commit(name, Vec::new(), changes.to_vec())
    }

    fn clear_volume(&self, name: &str, chunks: std::ops::Range<u64>, _durable: bool) -> Result<()> {
        self.writable("writing a volume")?;
        let p = &self.parts;
        p.load_volume(name)?;
        self.volume(name)?.check_writable()?;
        p.leases.clear(name, chunks)
    }

    fn sync(&self) -> Result<()> {
        // Commits are durable as they return. Alone on the bucket, what overwrites released
        // goes now, as in the local store; otherwise with the background sweeps.
        let p = &self.parts;
        if p.options.grace.is_zero() && !p.options.read_only {
            p.sweeper.sweep_if_released()?;
        }
        Ok(())
    }

    fn snapshot_volume(&self, source: &str, name: &str, writable: bool) -> Result<VolumeRecord> {
        self.writable("taking a snapshot")?;
        let p = &self.parts;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let check = |layers: &[crate::volume_objects::LayerId]| -> Result<()> {
            p.fresh_marks()?;
            let condemned = p.view.read(|c| {
                layers
                    .iter()
                    .any(|l| c.layer(*l).is_some_and(|l| l.condemned().is_some()))
            });
            if condemned {
                return Err(Error::Refused(format!(
                    "volume {source} is being deleted: it cannot be cloned or snapshotted"
                )));
            }
            Ok(())
        };
        p.load_volume(source)?;
        p.leases.snapshot(source, name, writable, created, &check)?;
        self.volume(name)
    }

    fn delete_volume(&self, name: &str) -> Result<()> {
        self.writable("deleting a volume")?;
        let p = &self.parts;
        p.leases.delete(name)?;
        if p.options.grace.is_zero() {
            if let Err(e) = p.sweeper.sweep() {
                tracing::warn!("volume {name} deleted; collecting its chunks failed: {e}");
            }
        }
        Ok(())
    }

    fn volume_usage(&self, name: &str) -> Result<VolumeUsage> {
        let p = &self.parts;
        p.load_volume(name)?;
        usage_of(&p.view, name).ok_or_else(|| Error::NotFound(What::Volume(name.to_string())))
    }

    fn acquire_volume(&self, name: &str) -> Result<()> {
        self.writable("writing a volume")?;
        self.parts.leases.acquire(name)
    }

    fn release_volume(&self, name: &str) {
        self.parts.leases.release(name);
    }
}
