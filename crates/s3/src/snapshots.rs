//! Writing and finding snapshots of the log (the layout is `log_snapshot`'s).
//!
//! A snapshot of epochs `0..=E` is the previous snapshot with the records of the settled
//! epochs after it applied: it is built from the bucket alone (never from a server's catalog,
//! which holds its own changes not logged yet and other servers' unsettled records), so every
//! server that builds it for the same E builds the same blocks, packs and volumes. It is
//! written when the log since the last snapshot has grown to a fraction of that snapshot
//! ([`S3Options::snapshot_after`]), so that writing snapshots costs in proportion to what
//! changed, and a cold start reads a snapshot and at most that fraction of it in records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use aetherflow_store::{BlockId, Error, Result};
use bytes::Bytes;

use crate::log_reader::ignored;
use crate::log_record::{self, Event, LogRecord, Origin};
use crate::log_snapshot::{
    self, done_key, parse_done_key, parse_snapshot_epoch, Done, Entry, Segment, INDEX,
};
use crate::remote::Remote;
use crate::store::S3Options;
use crate::view::View;
use crate::volume_objects::{self, LayerId};

/// How long a snapshot remembers a pack or a layer deleted, so that news of the pack retried
/// after its deletion (or a delta of a deleted layer) is not taken for live.
const TOMBSTONE_KEEP_MS: i64 = 24 * 3600 * 1000;

/// The newest complete snapshot in the bucket that can be read, with its entries; `None` if
/// there is none. A snapshot that cannot be read is logged and passed over for an older one.
pub(crate) fn newest(remote: &Remote) -> Result<Option<(Done, Vec<Entry>)>> {
    for epoch in complete_epochs(remote)?.into_iter().rev() {
        let loaded = read_done(remote, epoch).and_then(|done| {
            let entries = read_entries(remote, &done)?;
            Ok((done, entries))
        });
        match loaded {
            Ok(found) => return Ok(Some(found)),
            Err(e) if unusable(&e) => {
                tracing::error!("the snapshot of the log at epoch {epoch} is unusable: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The `DONE` of the newest complete snapshot whose `DONE` can be read and whose segments are
/// all listed at the sizes it names (they are not read).
fn newest_done(remote: &Remote) -> Result<Option<Done>> {
    let index = remote.list(INDEX)?;
    let mut epochs: Vec<u64> = index
        .iter()
        .filter_map(|l| parse_done_key(&l.key))
        .collect();
    epochs.sort_unstable();
    for epoch in epochs.into_iter().rev() {
        match read_done(remote, epoch) {
            Ok(done) if segments_listed(&index, &done) => return Ok(Some(done)),
            Ok(_) => tracing::error!(
                "the snapshot of the log at epoch {epoch} lacks segments its DONE names"
            ),
            Err(e) if unusable(&e) => {
                tracing::error!("the snapshot of the log at epoch {epoch} is unusable: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether every segment `done` names is in the listing `index`, at the size it names.
fn segments_listed(index: &[crate::remote::Listed], done: &Done) -> bool {
    let sizes: HashMap<&str, u64> = index.iter().map(|l| (l.key.as_str(), l.size)).collect();
    done.segment_keys()
        .iter()
        .zip(&done.segments)
        .all(|(key, (size, _))| sizes.get(key.as_str()) == Some(size))
}

fn unusable(e: &Error) -> bool {
    e.is_corrupt() || matches!(e, Error::NotFound(_))
}

/// The epochs of the snapshots that have a `DONE`, in order.
fn complete_epochs(remote: &Remote) -> Result<Vec<u64>> {
    let mut epochs: Vec<u64> = remote
        .list(INDEX)?
        .iter()
        .filter_map(|l| parse_done_key(&l.key))
        .collect();
    epochs.sort_unstable();
    Ok(epochs)
}

fn read_done(remote: &Remote, epoch: u64) -> Result<Done> {
    let key = done_key(epoch);
    Done::decode(&key, &remote.get(&key)?)
}

/// The entries of the snapshot `done` completes, every segment checked against it.
fn read_entries(remote: &Remote, done: &Done) -> Result<Vec<Entry>> {
    let keys = done.segment_keys();
    let mut entries = Vec::new();
    remote.for_each_object(&keys, |i, bytes| {
        let bytes = bytes?;
        done.verify_segment(i, &keys[i], &bytes)?;
        entries.extend(Segment::decode(&keys[i], &bytes)?.entries);
        Ok(())
    })?;
    Ok(entries)
}

/// What the log says once a run of its epochs is applied: the events still in force, each
/// with the record it came in. Applying the events of one epoch is order-free (additions
/// first, then what they cancel), as it is for a reader.
#[derive(Debug, Default)]
struct Survivors {
    packs: BTreeMap<String, Entry>,
    /// By id: the block's additions in force, oldest first (more than one while an imported
    /// id waits for the free of the block that held it before).
    blocks: BTreeMap<BlockId, Vec<Entry>>,
    heads: BTreeMap<String, Entry>,
    deltas: BTreeMap<(LayerId, u64), Entry>,
    deleted_packs: BTreeMap<String, Entry>,
    deleted_layers: BTreeMap<LayerId, Entry>,
    newest_ms: i64,
}

fn sort_key(e: &Entry) -> (u64, &str, u64) {
    (e.epoch, &e.origin.writer, e.origin.seq)
}

impl Survivors {
    /// The state a snapshot holds.
    fn from_snapshot(entries: Vec<Entry>) -> Survivors {
        let mut s = Survivors::default();
        s.apply(entries);
        s
    }

    /// Applies the events of one epoch (or of a snapshot).
    fn apply(&mut self, entries: Vec<Entry>) {
        let mut removals = Vec::new();
        for entry in entries {
            self.newest_ms = self.newest_ms.max(entry.written_ms);
            match &entry.event {
                Event::BlockAdded { id, .. } => {
                    let known = self.blocks.entry(*id).or_default();
                    if !known.iter().any(|k| k.origin == entry.origin) {
                        known.push(entry);
                        known.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
                    }
                }
                Event::PackAdded { name, .. } => {
                    if !self.deleted_packs.contains_key(name) {
                        self.packs.insert(name.clone(), entry);
                    }
                }
                Event::DeltaAdded { layer, seq, .. } => {
                    if !self.deleted_layers.contains_key(layer) {
                        self.deltas.insert((*layer, *seq), entry);
                    }
                }
                Event::HeadChanged { name } => {
                    self.heads.insert(name.clone(), entry);
                }
                Event::BlockFreed { .. }
                | Event::PackDeleted { .. }
                | Event::LayerDeleted { .. } => removals.push(entry),
            }
        }
        for entry in removals {
            match &entry.event {
                Event::BlockFreed { id, added_in } => self.free(*id, added_in),
                Event::PackDeleted { name } => {
                    self.packs.remove(name);
                    self.deleted_packs.insert(name.clone(), entry);
                }
                Event::LayerDeleted { layer } => {
                    let layer = *layer;
                    self.deltas.retain(|(l, _), _| *l != layer);
                    self.deleted_layers.insert(layer, entry);
                }
                _ => unreachable!("only removals"),
            }
        }
    }

    fn free(&mut self, id: BlockId, added_in: &Origin) {
        if let Some(known) = self.blocks.get_mut(&id) {
            known.retain(|k| k.origin != *added_in);
            if known.is_empty() {
                self.blocks.remove(&id);
            }
        }
    }

    /// The entries of the snapshot, sorted: packs, blocks, volume heads, deltas, then what
    /// was deleted lately (older deletions are forgotten).
    fn into_entries(self) -> Vec<Entry> {
        let recent = |e: &Entry| e.written_ms >= self.newest_ms - TOMBSTONE_KEEP_MS;
        let mut out: Vec<Entry> = self.packs.into_values().collect();
        out.extend(self.blocks.into_values().flatten());
        out.extend(self.heads.into_values());
        out.extend(self.deltas.into_values());
        out.extend(self.deleted_packs.into_values().filter(recent));
        out.extend(self.deleted_layers.into_values().filter(recent));
        out
    }
}

/// Why no snapshot was written, or which was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Written (or found written by another server) at this epoch.
    Written(u64),
    /// No settled epoch after the newest snapshot.
    UpToDate,
    /// The records since the newest snapshot are fewer bytes than the threshold.
    TooLittleChange { log_bytes: u64, threshold: u64 },
}

/// Writes a snapshot of the settled epochs if the log since the newest snapshot is large
/// enough (see the module documentation). `writer`: this server's id (its segments' names).
pub(crate) fn write_if_due(
    remote: &Remote,
    view: &View,
    writer: &str,
    options: &S3Options,
) -> Result<SnapshotOutcome> {
    // Every epoch below `settled_below` is settled, with its markers known to the reader.
    view.follow_log_within(std::time::Duration::ZERO)?;
    let (settled_below, lateness) = view.settled_log();
    let late_from = |e: u64| lateness.get(&e).copied().flatten();
    let Some(top) = settled_below.checked_sub(1) else {
        return Ok(SnapshotOutcome::UpToDate);
    };
    let previous = newest_done(remote)?;
    let start = match &previous {
        Some(done) if done.epoch >= top => return Ok(SnapshotOutcome::UpToDate),
        Some(done) => done.epoch + 1,
        None => 0,
    };
    let mut epochs = Vec::new();
    let mut log_bytes = 0;
    for e in start..=top {
        let records: Vec<_> = remote
            .list(&log_record::epoch_dir(e))?
            .into_iter()
            .filter(|l| match ignored(l, late_from(e)) {
                Some(why) => {
                    tracing::debug!("{}: {why}; not in the snapshot", l.key);
                    false
                }
                None => true,
            })
            .collect();
        log_bytes += records.iter().map(|l| l.size).sum::<u64>();
        epochs.push((e, records));
    }
    let previous_bytes = previous.as_ref().map_or(0, Done::bytes);
    let threshold = options
        .snapshot_min_bytes
        .max((previous_bytes as f64 * options.snapshot_after) as u64);
    if log_bytes < threshold {
        return Ok(SnapshotOutcome::TooLittleChange {
            log_bytes,
            threshold,
        });
    }
    let previous_epoch = previous.as_ref().map(|d| d.epoch);
    let previous = match &previous {
        Some(done) => read_entries(remote, done)?,
        None => Vec::new(),
    };
    let mut survivors = Survivors::from_snapshot(previous);
    let mut touched_heads = BTreeSet::new();
    for (e, records) in epochs {
        let keys: Vec<String> = records.iter().map(|l| l.key.clone()).collect();
        let mut entries = Vec::new();
        // A record that cannot be read stops the snapshot: what it says is unknown.
        remote.for_each_object(&keys, |i, body| {
            let record = LogRecord::decode(&keys[i], &body?)?;
            let origin = Origin {
                writer: Arc::from(record.writer),
                seq: record.seq,
            };
            for event in record.events {
                if let Event::HeadChanged { name } = &event {
                    touched_heads.insert(name.clone());
                }
                entries.push(Entry {
                    epoch: e,
                    origin: origin.clone(),
                    written_ms: records[i].modified_ms,
                    event,
                });
            }
            Ok(())
        })?;
        survivors.apply(entries);
    }
    // A volume whose head is gone (deleted) is dropped; one that cannot be looked up stays.
    for name in touched_heads {
        if let Err(Error::NotFound(_)) = remote.head(&volume_objects::volume_key(&name)) {
            survivors.heads.remove(&name);
        }
    }
    // A server that stalled here while others wrote a newer snapshot and trimmed the log
    // behind it may have missed records: only a snapshot built on the newest one is written.
    let newest_now = newest_done(remote)?.map(|d| d.epoch);
    if newest_now != previous_epoch {
        return Err(Error::Unavailable(format!(
            "a snapshot of the log at epoch {newest_now:?} was written while this one was built \
             on {previous_epoch:?}: not written"
        )));
    }
    let segments = log_snapshot::segments(top, survivors.into_entries());
    let done = Done::of(top, writer, &segments);
    for (key, bytes) in done.segment_keys().into_iter().zip(segments) {
        remote.put(&key, Bytes::from(bytes), false)?;
    }
    match remote.create(&done_key(top), Bytes::from(done.encode())) {
        Ok(_) => Ok(SnapshotOutcome::Written(top)),
        Err(Error::AlreadyExists(_)) => {
            // Another server wrote it first, and its segments count, not these; or this
            // server's own create was retried after its answer was lost.
            let theirs = read_done(remote, top)?;
            if theirs.writer == writer {
                return Ok(SnapshotOutcome::Written(top));
            }
            for key in done.segment_keys() {
                if let Err(e) = remote.delete(&key) {
                    tracing::warn!("{key} stays behind: {e}");
                }
            }
            Ok(SnapshotOutcome::Written(top))
        }
        Err(e) => Err(e),
    }
}

/// What a deletion behind a snapshot removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogTrimmed {
    /// The snapshot the log was trimmed behind (`None`: no snapshot was old enough).
    pub behind: Option<u64>,
    /// Epoch markers and records deleted.
    pub markers: u64,
    pub records: u64,
    /// Objects of older snapshots deleted.
    pub snapshot_objects: u64,
}

/// Deletes the raw log behind the newest complete snapshot whose `DONE` is at least two grace
/// periods old by the bucket's clock, and the snapshots before it: the markers of its epochs
/// first (a reader still behind them then finds the gap before it lists their records), then
/// their records; of each older snapshot its `DONE` first, then its segments. A deletion cut
/// short leaves what it did not reach for the next. `done_behind`: the snapshot this server
/// trimmed the log behind already (nothing is done again for it).
pub(crate) fn trim_log(
    remote: &Remote,
    writer: &str,
    grace: std::time::Duration,
    done_behind: Option<u64>,
) -> Result<LogTrimmed> {
    let index = remote.list(INDEX)?;
    let mut trimmed = LogTrimmed::default();
    let newer = |e: u64| done_behind.is_none_or(|done| e > done);
    if !index
        .iter()
        .any(|l| parse_done_key(&l.key).is_some_and(newer))
    {
        return Ok(trimmed);
    }
    let now = remote.bucket_now(writer)?;
    let old_enough = now - 2 * grace.as_millis() as i64;
    let mut candidates: Vec<u64> = index
        .iter()
        .filter(|l| l.modified_ms <= old_enough)
        .filter_map(|l| parse_done_key(&l.key))
        .collect();
    candidates.sort_unstable();
    // Only a snapshot whose DONE reads, with every segment it names in the listing at the
    // size it names, counts.
    let complete = |epoch: u64| -> Result<bool> {
        let done = match read_done(remote, epoch) {
            Ok(done) => done,
            Err(e) if unusable(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(segments_listed(&index, &done))
    };
    let mut behind = None;
    for epoch in candidates.into_iter().rev() {
        if done_behind.is_some_and(|done| epoch <= done) {
            return Ok(trimmed);
        }
        if complete(epoch)? {
            behind = Some(epoch);
            break;
        }
    }
    let Some(epoch) = behind else {
        return Ok(trimmed);
    };
    trimmed.behind = Some(epoch);
    let log = remote.list(log_record::LOG)?;
    for l in &log {
        if log_record::parse_epoch_marker(&l.key).is_some_and(|e| e <= epoch) {
            remote.delete(&l.key)?;
            trimmed.markers += 1;
        }
    }
    for l in &log {
        if log_record::parse_record_key(&l.key).is_some_and(|(e, _, _)| e <= epoch) {
            remote.delete(&l.key)?;
            trimmed.records += 1;
        }
    }
    let older =
        |l: &&crate::remote::Listed| parse_snapshot_epoch(&l.key).is_some_and(|e| e < epoch);
    let (dones, segments): (Vec<_>, Vec<_>) = index
        .iter()
        .filter(older)
        .partition(|l| parse_done_key(&l.key).is_some());
    for l in dones.into_iter().chain(segments) {
        remote.delete(&l.key)?;
        trimmed.snapshot_objects += 1;
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{Checksum, Manifest};

    fn entry(epoch: u64, writer: &str, seq: u64, event: Event) -> Entry {
        Entry {
            epoch,
            origin: Origin {
                writer: Arc::from(writer),
                seq,
            },
            written_ms: 1_000 * epoch as i64,
            event,
        }
    }

    fn added(id: BlockId) -> Event {
        Event::BlockAdded {
            id,
            manifest: Arc::new(Manifest {
                size: 0,
                created: 0,
                checksum: Checksum::Plain([0; 32]),
                seed: None,
                extents: vec![],
            }),
            imported: true,
        }
    }

    fn freed(id: BlockId, writer: &str, seq: u64) -> Event {
        Event::BlockFreed {
            id,
            added_in: Origin {
                writer: Arc::from(writer),
                seq,
            },
        }
    }

    fn pack(name: &str) -> Event {
        Event::PackAdded {
            name: name.into(),
            size: 100,
            entries: vec![],
        }
    }

    /// The blocks (with the record that added each) and the packs a snapshot keeps.
    fn kept(entries: &[Entry]) -> (Vec<(BlockId, u64)>, Vec<String>) {
        let mut blocks = Vec::new();
        let mut packs = Vec::new();
        for e in entries {
            match &e.event {
                Event::BlockAdded { id, .. } => blocks.push((*id, e.origin.seq)),
                Event::PackAdded { name, .. } => packs.push(name.clone()),
                _ => {}
            }
        }
        (blocks, packs)
    }

    #[test]
    fn one_epoch_gives_the_same_snapshot_in_any_order() {
        let (a, b) = (BlockId::random(), BlockId::random());
        let epoch = vec![
            entry(1, "w", 1, added(a)),
            entry(1, "v", 1, freed(a, "w", 1)),
            entry(1, "w", 2, added(b)),
            // An import reusing a's id after its free, in the same epoch.
            entry(1, "v", 2, added(a)),
            entry(1, "v", 3, Event::PackDeleted { name: "p1".into() }),
            entry(1, "w", 3, pack("p1")),
            entry(1, "w", 4, pack("p2")),
        ];
        let mut forward = Survivors::default();
        forward.apply(epoch.clone());
        let mut backward = Survivors::default();
        backward.apply(epoch.into_iter().rev().collect());
        let (f, b_) = (forward.into_entries(), backward.into_entries());
        assert_eq!(f, b_);
        let (mut blocks, packs) = kept(&f);
        blocks.sort();
        let mut want = vec![(a, 2), (b, 2)];
        want.sort();
        assert_eq!(blocks, want, "a's first block is freed, its import kept");
        assert_eq!(packs, vec!["p2".to_string()]);
    }

    #[test]
    fn a_deleted_pack_named_again_later_stays_deleted_until_its_tombstone_expires() {
        let mut s = Survivors::default();
        s.apply(vec![
            entry(1, "w", 1, pack("p")),
            entry(1, "w", 2, Event::PackDeleted { name: "p".into() }),
        ]);
        // News of the pack retried after its deletion, a few epochs on.
        s.apply(vec![entry(3, "x", 1, pack("p"))]);
        let kept_now = s.into_entries();
        assert_eq!(kept(&kept_now).1, Vec::<String>::new());
        // The snapshot keeps the tombstone, so the next one built on it still knows.
        let mut next = Survivors::from_snapshot(kept_now);
        next.apply(vec![entry(4, "x", 2, pack("p"))]);
        assert_eq!(kept(&next.into_entries()).1, Vec::<String>::new());
        // A day later the tombstone is forgotten.
        let mut s = Survivors::default();
        s.apply(vec![entry(
            1,
            "w",
            2,
            Event::PackDeleted { name: "p".into() },
        )]);
        let mut late = entry(2, "x", 1, pack("q"));
        late.written_ms += TOMBSTONE_KEEP_MS + 5_000;
        s.apply(vec![late]);
        assert!(!s
            .into_entries()
            .iter()
            .any(|e| matches!(&e.event, Event::PackDeleted { .. })));
    }
}
