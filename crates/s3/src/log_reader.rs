//! Reading the bucket's log (`docs/design.md`, "The log"): the open reads every epoch; then a
//! periodic refresh lists the epoch markers and the records of the epochs not settled yet, and
//! applies the records of other servers it has not applied, so that it costs what changed, not
//! what the bucket holds. It also advances the epoch when the current one is full or old.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aetherflow_store::{BlockId, Error, Result};
use bytes::Bytes;

use crate::log_record::{self, Event, LogRecord, Origin};
use crate::log_snapshot::Entry;
use crate::remote::{Listed, Remote};
use crate::store::S3Options;
use crate::sync::lock;
use crate::volume_objects::LayerId;

/// An event read, with the record it came in and when the bucket stamped that record.
#[derive(Debug)]
pub(crate) struct ReadEvent {
    pub origin: Origin,
    pub written_ms: i64,
    pub event: Event,
}

/// What a refresh must do with the catalog: the events of the records it read, in the order
/// read. (The view applies them; this module only reads.)
pub(crate) type Read = Vec<ReadEvent>;

/// How the log is read; see [`LogReader::new`].
#[derive(Debug)]
pub(crate) struct LogReader {
    writer: String,
    grace: Duration,
    epoch_every: Duration,
    epoch_records: usize,
    /// Reads without writing anything: no object to learn the bucket's clock (this server's
    /// clock is taken as the bucket's), no epoch begun.
    read_only: bool,
    /// The bucket's clock minus this server's, in ms, measured at the first refresh.
    skew_ms: Option<i64>,
    /// Markers seen: epoch → its `Last-Modified` (ms).
    markers: BTreeMap<u64, i64>,
    /// The lowest epoch still read (every one below it is settled and was read after).
    from: u64,
    /// Records already applied (or refused), by epoch, for the epochs still read.
    applied: BTreeMap<u64, HashSet<String>>,
    /// Records that are in the bucket but cannot be read: what they say is unknown, so
    /// nothing may be collected while one is there. Key → (epoch, why).
    damaged: BTreeMap<String, (u64, String)>,
    removals: Arc<Mutex<Removals>>,
    /// The newest epoch listed, shared with this server's log writer.
    seen_epoch: Arc<AtomicU64>,
    /// Reads this server's own records too: after its catalog was built again from a
    /// snapshot, until it has caught up with the log.
    read_own: bool,
    /// The log's oldest epoch, when it was found above the epoch this reader has to read next
    /// (the epochs between were compacted into a snapshot and deleted): see the gap rule in
    /// `docs/design.md`.
    gap: Option<u64>,
}

/// Blocks freed and packs deleted, by records read or by this server itself, with the epoch
/// they were seen in, so that an addition read after its removal (another writer's record
/// listed later) stays removed; forgotten once that epoch is settled and read. Its own lock,
/// a leaf taken briefly: a commit that frees notes it here without waiting for a refresh.
#[derive(Debug)]
pub(crate) struct Removals {
    /// Blocks freed, by id and the record that added them.
    freed: HashMap<(BlockId, Origin), u64>,
    deleted: HashMap<String, u64>,
    /// Layers of volume maps deleted.
    layers: HashMap<LayerId, u64>,
    /// The newest epoch seen (the reader's `seen_epoch`): what this server's own removals are
    /// filed under.
    seen_epoch: Arc<AtomicU64>,
}

impl Removals {
    fn epoch(&self) -> u64 {
        self.seen_epoch.load(Ordering::Acquire)
    }

    /// This server freed `id`, added by record `added_in`.
    pub fn block_freed(&mut self, id: BlockId, added_in: Origin) {
        let epoch = self.epoch();
        self.freed.insert((id, added_in), epoch);
    }

    /// This server deleted pack `name`.
    pub fn pack_deleted(&mut self, name: &str) {
        let epoch = self.epoch();
        self.deleted.insert(name.to_string(), epoch);
    }

    /// This server deleted the deltas of `layer`.
    pub fn layer_deleted(&mut self, layer: LayerId) {
        let epoch = self.epoch();
        self.layers.insert(layer, epoch);
    }
}

impl LogReader {
    /// A reader for the server `writer` (whose own records it skips), with the collection grace,
    /// the epoch bounds and the read-only flag of `options`; it notes the newest epoch it
    /// lists in `seen_epoch`.
    pub fn new(writer: String, options: &S3Options, seen_epoch: Arc<AtomicU64>) -> LogReader {
        LogReader {
            writer,
            grace: options.grace,
            epoch_every: options.epoch_every,
            epoch_records: options.epoch_records.max(1),
            read_only: options.read_only,
            skew_ms: None,
            markers: BTreeMap::new(),
            from: 0,
            applied: BTreeMap::new(),
            damaged: BTreeMap::new(),
            removals: Arc::new(Mutex::new(Removals {
                freed: HashMap::new(),
                deleted: HashMap::new(),
                layers: HashMap::new(),
                seen_epoch: Arc::clone(&seen_epoch),
            })),
            seen_epoch,
            read_own: false,
            gap: None,
        }
    }

    /// Whether this reader has found the epochs it has to read next deleted (the oldest epoch
    /// left, if so): nothing it knows may be trusted until it starts again from a snapshot
    /// ([`LogReader::restart`]).
    pub fn gap(&self) -> Option<u64> {
        self.gap
    }

    /// Starts again from a snapshot of epochs `0..=epoch`, forgetting every record read,
    /// and reading this server's own records too until [`LogReader::caught_up`].
    pub fn restart(&mut self, epoch: u64, entries: Vec<Entry>) -> Read {
        self.markers.clear();
        self.gap = None;
        self.read_own = true;
        self.start_after(epoch, entries)
    }

    /// The catalog built again has read the whole log after its snapshot.
    pub fn caught_up(&mut self) {
        self.read_own = false;
    }

    /// The records in the bucket that cannot be read, with why.
    pub fn damaged(&self) -> impl Iterator<Item = (&String, &String)> {
        self.damaged.iter().map(|(k, (_, why))| (k, why))
    }

    /// Where this server notes its own removals.
    pub fn removals(&self) -> Arc<Mutex<Removals>> {
        Arc::clone(&self.removals)
    }

    fn bucket_now(&mut self, remote: &Remote) -> Result<i64> {
        let skew = match self.skew_ms {
            Some(s) => s,
            None if self.read_only => 0,
            None => {
                let before = local_ms();
                let bucket = remote.bucket_now(&self.writer)?;
                let s = bucket - (before + local_ms()) / 2;
                self.skew_ms = Some(s);
                s
            }
        };
        Ok(local_ms() + skew)
    }

    /// Whether epoch `e` is settled: no record can land in it any more that a reader would
    /// not ignore (see `late_from` in `read_epoch`), with a second more for this server's
    /// reading of the bucket's clock.
    fn settled(&self, e: u64, now_ms: i64) -> bool {
        self.markers
            .get(&(e + 1))
            .is_some_and(|m| now_ms >= m + self.half_grace_ms() + 2 * SLACK_MS)
    }

    /// G/2 in ms: an acknowledged record returned that soon after the listing that placed it.
    fn half_grace_ms(&self) -> i64 {
        (self.grace / 2).as_millis() as i64
    }

    /// When records of epoch `e` count as late (see `read_epoch`): none while marker e+1 is
    /// unknown, or without a grace period.
    pub fn late_from(&self, e: u64) -> Option<i64> {
        // An acknowledged record's PUT returned within G/2 of a listing that began before
        // marker e+1 was written; with the bucket's whole seconds its date lies before that
        // marker's plus G/2 plus a second. Without a grace period there is no such bound (one
        // server alone writes and reads the bucket, placing records by a listing up to a
        // minute old): no record is late.
        self.markers
            .get(&(e + 1))
            .filter(|_| !self.grace.is_zero())
            .map(|m| m + self.half_grace_ms() + SLACK_MS)
    }

    /// Every epoch below the first number is settled and was read after it settled; the
    /// second gives, for each of those whose successor's marker this reader knows, when its
    /// records count as late (see [`LogReader::late_from`]).
    pub fn settled_epochs(&self) -> (u64, BTreeMap<u64, Option<i64>>) {
        let late = self
            .markers
            .range(1..self.from.max(1) + 1)
            .map(|(&next, _)| (next - 1, self.late_from(next - 1)))
            .collect();
        (self.from, late)
    }

    /// Starts from a snapshot of epochs `0..=epoch` instead of the log's beginning: returns
    /// its entries as events read (in the order given), and reads the log from epoch
    /// `epoch + 1` on. What the snapshot removed stays removed from the records read next
    /// (as if read in epoch `epoch`).
    pub fn start_after(&mut self, epoch: u64, entries: Vec<Entry>) -> Read {
        self.from = epoch + 1;
        self.applied.clear();
        self.damaged.clear();
        self.seen_epoch.fetch_max(epoch, Ordering::AcqRel);
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            for event in self.filter(epoch, &entry.origin, vec![entry.event]) {
                events.push(ReadEvent {
                    origin: entry.origin.clone(),
                    written_ms: entry.written_ms,
                    event,
                });
            }
        }
        events
    }

    /// Reads what is new in the log: the events of other servers' records not read yet (at the
    /// first read, of every epoch).
    ///
    /// A read that fails part way returns the events of the records it did read (they count
    /// as read) with the error; the records it did not reach are read by the next one.
    pub fn read(&mut self, remote: &Remote) -> (Read, Result<()>) {
        let mut events = Vec::new();
        let result = self.read_into(remote, &mut events);
        (events, result)
    }

    fn read_into(&mut self, remote: &Remote, events: &mut Read) -> Result<()> {
        let now = self.bucket_now(remote)?;
        let listed = match self.from {
            0 => remote.list(log_record::EPOCHS)?,
            from => remote.list_after(log_record::EPOCHS, &log_record::epoch_marker(from - 1))?,
        };
        self.check_gap(&listed, self.from)?;
        for l in &listed {
            if let Some(e) = log_record::parse_epoch_marker(&l.key) {
                self.markers.insert(e, l.modified_ms);
            }
        }
        let from_before = self.from;
        let Some(&current) = self.markers.keys().next_back() else {
            return Ok(()); // no log yet
        };
        self.seen_epoch.fetch_max(current, Ordering::AcqRel);
        let mut current_records = 0;
        for e in self.from..=current {
            let settled = self.settled(e, now);
            let records = remote.list(&log_record::epoch_dir(e))?;
            if e == current {
                current_records = records.len();
            }
            self.read_epoch(remote, e, &records, events)?;
            if settled && e == self.from {
                // Read once more after it settled: it never changes again. The additions its
                // removals cancel were read by now: a record is never placed below the epoch
                // its writer last listed, so it lands in the epoch of what it removes or a
                // later one. (A pack's news retried into a later epoch is the exception: that
                // pack stays in the catalog until the next complete listing of packs.)
                self.applied.remove(&e);
                let mut removals = lock(&self.removals);
                removals.freed.retain(|_, at| *at > e);
                removals.deleted.retain(|_, at| *at > e);
                removals.layers.retain(|_, at| *at > e);
                self.from = e + 1;
            }
        }
        if self.from > from_before {
            // Epochs read for the last time may have been deleted behind a snapshot while
            // they were read (a reader two grace periods behind): their marker goes first.
            let after = match from_before {
                0 => remote.list(log_record::EPOCHS)?,
                from => {
                    remote.list_after(log_record::EPOCHS, &log_record::epoch_marker(from - 1))?
                }
            };
            self.check_gap(&after, from_before)?;
        }
        if self.read_only {
            return Ok(());
        }
        if let Err(e) = self.advance(remote, current, current_records, now) {
            // Only a step forward: the next refresh, here or elsewhere, takes it.
            tracing::warn!("beginning the log's epoch {}: {e}", current + 1);
        }
        Ok(())
    }

    /// Finds a gap: the markers listed from epoch `next` on begin above it, so the epochs
    /// between (at least `next`, which this reader has to read) were deleted behind a
    /// snapshot.
    fn check_gap(&mut self, listed: &[Listed], next: u64) -> Result<()> {
        let oldest = listed
            .iter()
            .filter_map(|l| log_record::parse_epoch_marker(&l.key))
            .min();
        match oldest {
            Some(oldest) if oldest > next => {
                self.gap = Some(oldest);
                Err(Error::Unavailable(format!(
                    "this server has to read the log from epoch {next} on, but its oldest                      epoch left is {oldest}: the epochs between were deleted behind a snapshot"
                )))
            }
            _ => Ok(()),
        }
    }

    fn read_epoch(
        &mut self,
        remote: &Remote,
        e: u64,
        records: &[Listed],
        events: &mut Read,
    ) -> Result<()> {
        let late_from = self.late_from(e);
        // A damaged record removed from the bucket (by hand) no longer stops collection.
        self.damaged
            .retain(|key, (epoch, _)| *epoch != e || records.iter().any(|l| &l.key == key));
        let applied = self.applied.entry(e).or_default();
        let mut wanted = Vec::new();
        for l in records {
            if applied.contains(&l.key) {
                continue;
            }
            let skip = match log_record::parse_record_key(&l.key) {
                // This server's own: applied when it committed.
                Some((_, writer, _)) if writer == self.writer && !self.read_own => Some(""),
                _ => ignored(l, late_from),
            };
            match skip {
                Some(why) => {
                    if !why.is_empty() {
                        tracing::warn!("{}: {why}; ignored", l.key);
                    }
                    applied.insert(l.key.clone());
                }
                None => wanted.push((l.key.clone(), l.modified_ms)),
            }
        }
        let keys: Vec<String> = wanted.iter().map(|(k, _)| k.clone()).collect();
        // A record counts as read once fetched (or found gone, or refused): one the fetches
        // did not reach is fetched by the next refresh.
        remote.for_each_object(&keys, |i, body| {
            let (key, written_ms) = &wanted[i];
            match body {
                Ok(body) => match LogRecord::decode(key, &body) {
                    Ok(record) => {
                        let origin = Origin {
                            writer: Arc::from(record.writer),
                            seq: record.seq,
                        };
                        let kept = self.filter(e, &origin, record.events);
                        events.extend(kept.into_iter().map(|event| ReadEvent {
                            origin: origin.clone(),
                            written_ms: *written_ms,
                            event,
                        }));
                    }
                    Err(err) => {
                        tracing::error!("{err}; nothing is collected while it is there");
                        self.damaged.insert(key.clone(), (e, err.to_string()));
                    }
                },
                Err(Error::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
            self.applied.entry(e).or_default().insert(key.clone());
            Ok(())
        })
    }

    /// Drops additions whose removal was read already, and remembers removals (read in epoch
    /// `e`).
    fn filter(&mut self, e: u64, origin: &Origin, events: Vec<Event>) -> Vec<Event> {
        let mut removals = lock(&self.removals);
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match &event {
                Event::BlockAdded { id, .. }
                    if removals.freed.contains_key(&(*id, origin.clone())) =>
                {
                    continue
                }
                Event::PackAdded { name, .. } if removals.deleted.contains_key(name) => continue,
                Event::DeltaAdded { layer, .. } if removals.layers.contains_key(layer) => continue,
                Event::LayerDeleted { layer } => {
                    removals.layers.insert(*layer, e);
                }
                Event::BlockFreed { id, added_in } => {
                    removals.freed.insert((*id, added_in.clone()), e);
                }
                Event::PackDeleted { name } => {
                    removals.deleted.insert(name.clone(), e);
                }
                _ => {}
            }
            out.push(event);
        }
        out
    }

    /// Begins epoch `current + 1` if `current` holds `epoch_records` records or its marker is
    /// older than `epoch_every`.
    fn advance(&mut self, remote: &Remote, current: u64, records: usize, now: i64) -> Result<()> {
        let age_ms = now - self.markers[&current];
        if records < self.epoch_records && age_ms < self.epoch_every.as_millis() as i64 {
            return Ok(());
        }
        match remote.create(&log_record::epoch_marker(current + 1), Bytes::new()) {
            Ok(_) => {
                // Epoch current + 2 cannot begin before this marker existed: this server's
                // records may go into current + 1 at once (the writer rule's argument holds
                // with this creation in the place of a listing).
                self.seen_epoch.fetch_max(current + 1, Ordering::AcqRel);
                Ok(())
            }
            Err(Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Why a listed record of an epoch whose records are late from `late_from` is not read (by
/// anyone), if it is not.
pub(crate) fn ignored(l: &Listed, late_from: Option<i64>) -> Option<&'static str> {
    if log_record::parse_record_key(&l.key).is_none() {
        Some("not a log record's key")
    } else if late_from.is_some_and(|late| l.modified_ms >= late) {
        Some("written after its epoch was settled (never acknowledged)")
    } else if l.size > MAX_RECORD_BYTES {
        Some("larger than any record a server writes")
    } else {
        None
    }
}

/// The bucket keeps whole seconds.
const SLACK_MS: i64 = 1000;
/// A listed record larger than this is not fetched: no server writes one (a record holds at
/// most `MAX_EVENTS` events, and a pack's entries are bounded by the pack size).
const MAX_RECORD_BYTES: u64 = 256 << 20;

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
