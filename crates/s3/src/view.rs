//! This server's view of the bucket: the catalog behind its lock, and the listings that keep it
//! in step with the bucket. A listing that fails fails the refresh; the catalog then keeps what
//! it knew.
//!
//! No lock is held while a listing or a fetch is under way: the catalog is locked only to read
//! or apply what a request returned, and each kind of refresh runs once at a time for everyone
//! who wants it ([`SingleFlight`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherflow_store::{BlockId, ChunkInfo, Error, Result, Totals};
use bytes::Bytes;

use crate::catalog::{Catalog, KnownBlock};
use crate::keys;
use crate::log_reader::{LogReader, Read, ReadEvent, Removals};
use crate::log_record::{Event, Origin};
use crate::log_snapshot::Entry;
use crate::log_writer::LogWriter;
use crate::pack;
use crate::remote::{Listed, Remote};
use crate::snapshots;
use crate::sync::{lock, SingleFlight};
use crate::volume_objects::{self, Delta, Head, LayerId};

/// The catalog, shared by every part of a store; see the module documentation.
#[derive(Debug)]
pub(crate) struct View {
    remote: Arc<Remote>,
    catalog: Mutex<Catalog>,
    /// Full refreshes (packs, blocks, marks).
    full: SingleFlight,
    /// Listings of condemnation marks alone (what a commit must see fresh).
    marks: SingleFlight,
    /// Bytes of objects the catalog does not count (the identity object).
    other_bytes: u64,
    /// The log, where blocks exist. Its lock is held while it reads (requests included), but
    /// only the log refresh takes it, and that runs once at a time (`follow`).
    log: Mutex<LogReader>,
    /// Refreshes from the log.
    follow: SingleFlight,
    /// What this server removed, for the log reader (a leaf lock of its own).
    removals: Arc<Mutex<Removals>>,
    /// Heads to read again and layers to load that a refresh from the log learnt of but could
    /// not fetch: the next one does.
    pending: Mutex<(Vec<String>, Vec<LayerId>)>,
    /// This server's log writer: what it changed that is not in the log yet.
    own_log: Arc<LogWriter>,
    /// The catalog missed epochs of the log deleted behind a snapshot and is being built
    /// again: nothing may be collected by it (see the gap rule in `docs/design.md`).
    behind: AtomicBool,
}

impl View {
    /// A view of the bucket behind `remote`, whose blocks `log` reads.
    pub fn new(
        remote: Arc<Remote>,
        other_bytes: u64,
        log: LogReader,
        own_log: Arc<LogWriter>,
    ) -> View {
        let removals = log.removals();
        View {
            own_log,
            behind: AtomicBool::new(false),
            remote,
            removals,
            catalog: Mutex::default(),
            full: SingleFlight::default(),
            marks: SingleFlight::default(),
            other_bytes,
            log: Mutex::new(log),
            follow: SingleFlight::default(),
            pending: Mutex::default(),
        }
    }

    /// Reads the catalog. `f` must not make requests: the lock is held while it runs.
    pub fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&lock(&self.catalog))
    }

    /// Changes the catalog (with what a request returned). Same rule as [`View::read`].
    pub fn change<T>(&self, f: impl FnOnce(&mut Catalog) -> T) -> T {
        f(&mut lock(&self.catalog))
    }

    /// Live figures, from the catalog as it is: never waits for a listing.
    pub fn totals(&self) -> Totals {
        self.change(|c| c.totals(self.other_bytes))
    }

    /// Refreshes if the last refresh began more than `max_age` ago, waiting for one under
    /// way: from the log, or with a zero `max_age` (the open, the sweep, a check) by listing
    /// packs, volumes and marks as well.
    pub fn refresh_if_stale(&self, max_age: Duration) -> Result<()> {
        if !max_age.is_zero() {
            return self.follow_log_within(max_age);
        }
        self.full.run_if_stale(max_age, || self.refresh_all())
    }

    /// Like [`View::refresh_if_stale`], but returns at once if another thread is refreshing.
    pub fn refresh_in_passing(&self, max_age: Duration) -> Result<()> {
        if !max_age.is_zero() {
            return self
                .follow
                .run_in_passing(max_age, || self.refresh_from_log());
        }
        self.full.run_in_passing(max_age, || self.refresh_all())
    }

    /// Notes that this server freed block `id`, added by record `added_in`: a record of
    /// another server read later that still adds it does not bring it back.
    pub fn note_block_freed(&self, id: BlockId, added_in: Origin) {
        lock(&self.removals).block_freed(id, added_in);
    }

    /// Notes that this server deleted pack `name` (as [`View::note_block_freed`]).
    pub fn note_pack_deleted(&self, name: &str) {
        lock(&self.removals).pack_deleted(name);
    }

    /// Notes that this server deleted the deltas of `layer` (as [`View::note_block_freed`]).
    pub fn note_layer_deleted(&self, layer: LayerId) {
        lock(&self.removals).layer_deleted(layer);
    }

    /// Reads the log unless a read that began within `max_age` succeeded (waiting for one
    /// under way). With a zero `max_age`, a read that begins after this call.
    pub fn follow_log_within(&self, max_age: Duration) -> Result<()> {
        self.follow
            .run_if_stale(max_age, || self.refresh_from_log())
    }

    /// The log records in the bucket that cannot be read, with why.
    pub fn damaged_records(&self) -> Vec<(String, String)> {
        lock(&self.log)
            .damaged()
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect()
    }

    /// Applies events read (from the log or a snapshot) to the catalog; adds the heads to
    /// read again and the layers whose deltas to fetch to `heads` and `layers`.
    fn apply(&self, events: Read, heads: &mut Vec<String>, layers: &mut Vec<LayerId>) {
        self.change(|c| {
            for ReadEvent {
                origin,
                written_ms,
                event,
            } in events
            {
                match event {
                    Event::BlockAdded {
                        id,
                        manifest,
                        imported,
                    } => {
                        c.add_block(
                            id,
                            KnownBlock {
                                manifest,
                                origin,
                                imported,
                            },
                        );
                    }
                    Event::BlockFreed { id, added_in } => {
                        c.remove_block(id, &added_in);
                    }
                    Event::PackAdded {
                        name,
                        size,
                        entries,
                    } => c.add_pack(&name, size, None, entries, None, true),
                    Event::PackDeleted { name } => c.remove_pack(&name),
                    Event::DeltaAdded { layer, seq, size } => {
                        // The delta was written before its record: as old as that, or older.
                        c.note_delta(layer, seq, size, Some(written_ms));
                        layers.push(layer);
                    }
                    Event::HeadChanged { name } => heads.push(name),
                    Event::LayerDeleted { layer } => c.remove_layer(layer),
                }
            }
        });
    }

    /// Starts this (empty) view from a snapshot of the log's epochs `0..=epoch`: its
    /// entries enter the catalog, and the heads and layers they name are fetched by the next
    /// refresh from the log, which reads the epochs after it.
    pub fn start_from_snapshot(&self, epoch: u64, entries: Vec<Entry>) {
        let events = lock(&self.log).start_after(epoch, entries);
        let (mut heads, mut layers) = (Vec::new(), Vec::new());
        self.apply(events, &mut heads, &mut layers);
        let mut pending = lock(&self.pending);
        pending.0.extend(heads);
        pending.1.extend(layers);
    }

    /// The log (blocks, packs, volumes), then the marks: an open's refresh, with no listing
    /// of packs, which the log names (a complete refresh lists them first).
    pub fn refresh_at_open(&self) -> Result<()> {
        self.follow_log_within(Duration::ZERO)?;
        self.marks
            .run_if_stale(Duration::ZERO, || self.refresh_marks())
    }

    /// See [`LogReader::settled_epochs`].
    pub fn settled_log(&self) -> (u64, std::collections::BTreeMap<u64, Option<i64>>) {
        lock(&self.log).settled_epochs()
    }

    /// Applies what other servers appended to the log since the last refresh: blocks, frees,
    /// packs with their entries, pack deletions, volume deltas (fetched) and heads (read
    /// again). No listing of `blocks/`, `packs/`, `volumes/` or `layers/`.
    fn refresh_from_log(&self) -> Result<()> {
        let read = self.read_log();
        // A rebuild that failed part way is done again whole.
        if lock(&self.log).gap().is_none() && !self.behind() {
            return read;
        }
        // The gap rule: what this catalog knows may miss blocks added in the epochs deleted,
        // so it is dropped and built again from the newest snapshot.
        self.behind.store(true, Ordering::Release);
        if let Err(e) = read {
            tracing::warn!("{e}; building the catalog again from the newest snapshot");
        }
        self.rebuild()
    }

    /// Whether the catalog is being built again after a gap (nothing may be collected).
    pub fn behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }

    /// Drops the catalog and builds it again: the newest snapshot, the log after it (this
    /// server's own records included), this server's news not written yet, and the marks.
    fn rebuild(&self) -> Result<()> {
        let Some((done, entries)) = snapshots::newest(&self.remote)? else {
            return Err(Error::Corrupt(
                "epochs of the log were deleted, and no snapshot of them can be read".into(),
            ));
        };
        *lock(&self.catalog) = Catalog::default();
        *lock(&self.pending) = Default::default();
        // Taken after the reset (news noted before it is queued still) and before the log is
        // read (news written meanwhile is in the records read).
        let news = self.own_log.pending_news();
        let events = lock(&self.log).restart(done.epoch, entries);
        let (mut heads, mut layers) = (Vec::new(), Vec::new());
        self.apply(events, &mut heads, &mut layers);
        let origin = Origin {
            writer: self.own_log.writer(),
            seq: u64::MAX,
        };
        // Not written yet: as new as now.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let news = news.into_iter().map(|event| ReadEvent {
            origin: origin.clone(),
            written_ms: now_ms,
            event,
        });
        self.apply(news.collect(), &mut heads, &mut layers);
        {
            let mut pending = lock(&self.pending);
            pending.0.extend(heads);
            pending.1.extend(layers);
        }
        self.read_log()?;
        if let Some(oldest) = lock(&self.log).gap() {
            return Err(Error::Unavailable(format!(
                "the log's epochs before {oldest} were deleted while this server read it"
            )));
        }
        self.marks
            .run_if_stale(Duration::ZERO, || self.refresh_marks())?;
        lock(&self.log).caught_up();
        self.behind.store(false, Ordering::Release);
        tracing::info!(
            "the catalog was built again from the snapshot of epoch {}",
            done.epoch
        );
        Ok(())
    }

    /// Reads the log once (see [`View::refresh_from_log`]).
    fn read_log(&self) -> Result<()> {
        let (events, read) = lock(&self.log).read(&self.remote);
        let (mut heads, mut layers) = std::mem::take(&mut *lock(&self.pending));
        self.apply(events, &mut heads, &mut layers);
        heads.sort_unstable();
        heads.dedup();
        let fetched = self.read_heads(&heads, &mut layers).and_then(|()| {
            layers.sort_unstable();
            layers.dedup();
            self.load_layers(&layers)
        });
        if fetched.is_err() {
            let mut pending = lock(&self.pending);
            pending.0.extend(heads);
            pending.1.extend(layers);
        }
        read.and(fetched)
    }

    /// Reads the heads of `names` as they are now (forgetting those gone); adds the layers
    /// they name to `layers`.
    fn read_heads(&self, names: &[String], layers: &mut Vec<LayerId>) -> Result<()> {
        let keys: Vec<String> = names
            .iter()
            .map(|n| volume_objects::volume_key(n))
            .collect();
        self.remote.for_each_object(&keys, |i, body| {
            let name = &names[i];
            let body = match body {
                Ok(b) => b,
                Err(Error::NotFound(_)) => {
                    self.change(|c| c.remove_volume(name));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            match Head::decode(name, &body) {
                Ok(head) => {
                    layers.extend(head.chain.iter().map(|l| l.layer));
                    self.change(|c| c.put_volume(name, head, None, None, body.len() as u64));
                }
                Err(e) => {
                    tracing::error!("volume {name}: head unreadable: {e}");
                    self.change(|c| c.note_damaged_volume(name, e.to_string()));
                }
            }
            Ok(())
        })
    }

    /// When the listing of condemnation marks the catalog reflects began.
    pub fn marks_listed_at(&self) -> Option<std::time::Instant> {
        self.marks.fresh_since()
    }

    /// Refreshes the condemnation marks if their view is older than `max_age`. A commit never
    /// waits for a full refresh, only for one listing of marks.
    pub fn refresh_marks_if_stale(&self, max_age: Duration) -> Result<()> {
        self.marks.run_if_stale(max_age, || self.refresh_marks())
    }

    /// Packs, then the log (blocks, volume heads and deltas), then marks: each listing
    /// complete, and the log read begun after this call, or the refresh fails.
    fn refresh_all(&self) -> Result<()> {
        self.refresh_packs()?;
        self.refresh_at_open()
    }

    /// Fetches the deltas of `layers` not applied yet (those the catalog knows of) and applies
    /// them in order. A layer applied past its seal is built again from its deltas first.
    pub fn load_layers(&self, layers: &[LayerId]) -> Result<()> {
        let mut wanted: Vec<(LayerId, u64)> = Vec::new();
        self.change(|c| {
            for &layer in layers {
                if c.applied_past_seal(layer) {
                    c.reset_layer(layer);
                }
                let seal = c.seal_of(layer);
                if let Some(l) = c.layer(layer) {
                    wanted.extend(
                        l.pending()
                            .into_iter()
                            .filter(|s| seal.is_none_or(|seal| *s < seal))
                            .map(|s| (layer, s)),
                    );
                }
            }
        });
        wanted.sort_unstable();
        let keys: Vec<String> = wanted
            .iter()
            .map(|(l, s)| volume_objects::delta_key(*l, *s))
            .collect();
        let mut broken: HashSet<LayerId> = HashSet::new();
        self.remote.for_each_object(&keys, |i, body| {
            let (key, (layer, _)) = (&keys[i], &wanted[i]);
            if broken.contains(layer) {
                return Ok(()); // nothing after a damaged delta is applied
            }
            let body = match body {
                Ok(b) => b,
                Err(Error::NotFound(_)) => return Ok(()), // collected since the listing
                Err(e) => return Err(e),
            };
            match Delta::decode(key, &body) {
                Ok(delta) => {
                    self.change(|c| c.apply_delta(&delta));
                }
                Err(e) => {
                    tracing::error!("{key}: unreadable: {e}");
                    broken.insert(*layer);
                    self.change(|c| c.note_damaged_delta(*layer, key, e.to_string()));
                }
            }
            Ok(())
        })
    }

    /// Learns new packs (one ranged GET of each one's index) and forgets deleted ones.
    pub fn refresh_packs(&self) -> Result<()> {
        let generation = self.change(|c| c.begin_refresh());
        let listed = self.remote.list(keys::PACKS)?;
        let name_of = |l: &Listed| l.key[keys::PACKS.len()..].to_string();
        let new: Vec<&Listed> = self.change(|c| {
            listed
                .iter()
                .filter(|l| {
                    let name = name_of(l);
                    !c.saw_pack(&name, l.modified_ms) && !c.is_bad_pack(&name)
                })
                .collect()
        });
        let keys: Vec<String> = new.iter().map(|l| l.key.clone()).collect();
        // Each tail is parsed as it arrives and dropped: the open holds the entries the catalog
        // keeps, not every pack's last 16 KiB.
        self.remote
            .for_each_tail(&keys, pack::TAIL_GUESS, |i, tail| {
                let l = new[i];
                let name = name_of(l);
                match tail.and_then(|tail| self.read_index(&name, l.size, tail)) {
                    Ok(entries) => self.change(|c| {
                        c.add_pack(&name, l.size, Some(l.modified_ms), entries, None, false)
                    }),
                    Err(Error::Corrupt(why)) => {
                        tracing::error!("pack {name}: {why}");
                        self.change(|c| c.note_bad_pack(&name, why));
                    }
                    // Deleted between the listing and the read: the next listing forgets it.
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                Ok(())
            })?;
        let names: HashSet<String> = listed.iter().map(name_of).collect();
        self.change(|c| c.confirm_packs(&names, generation));
        Ok(())
    }

    /// A pack's entries, from its tail (see [`read_pack_index`]).
    fn read_index(
        &self,
        name: &str,
        size: u64,
        tail: (Bytes, u64),
    ) -> Result<Vec<(u64, ChunkInfo)>> {
        read_pack_index(&self.remote, name, size, tail)
    }

    /// Learns which packs are condemned, and since when in the bucket's clock.
    fn refresh_marks(&self) -> Result<()> {
        let generation = self.change(|c| c.begin_refresh());
        let listed = self.remote.list(keys::CONDEMNED)?;
        let layer_marks = self.remote.list(keys::CONDEMNED_LAYERS)?;
        self.change(|c| {
            let mut names = HashSet::new();
            for l in &listed {
                let name = &l.key[keys::CONDEMNED.len()..];
                names.insert(name.to_string());
                c.condemn(name, Some(l.modified_ms), None);
            }
            c.confirm_condemned(&names, generation);
            let mut layers = HashSet::new();
            for l in &layer_marks {
                if let Some(layer) = volume_objects::parse_condemned_layer(&l.key) {
                    layers.insert(layer);
                    c.condemn_layer(layer, Some(l.modified_ms), None);
                }
            }
            c.confirm_condemned_layers(&layers, generation);
        });
        Ok(())
    }
}

/// A pack's entries, from its tail (`TAIL_GUESS` bytes of it, read already, and the pack's
/// size when they were read); the rest of its index is fetched if the tail is too short.
pub(crate) fn read_pack_index(
    remote: &Remote,
    name: &str,
    size: u64,
    (mut tail, size_now): (Bytes, u64),
) -> Result<Vec<(u64, ChunkInfo)>> {
    if size_now != size {
        return Err(Error::Corrupt(format!(
            "pack {name} changed size from {size} to {size_now} bytes"
        )));
    }
    let span = pack::index_span(name, size, &tail)?;
    if span > tail.len() as u64 {
        tail = remote.get_range(&keys::pack(name), size - span..size)?;
    }
    pack::parse_index(name, size, &tail)
}
