//! Staging: chunks of concurrent allocations gathered into one open pack, uploaded when it is
//! full or when a commit needs its chunks in the bucket.
//!
//! A commit that needs a pack still open seals it and uploads it itself; one that needs a pack
//! another thread is uploading waits for that upload. So small blocks committed at the same time
//! share pack objects (fewer PUTs), and no commit waits for chunks it does not use.
//!
//! **Group commit.** At most [`Writer`]'s `commit_uploads` packs sealed by commits are in
//! flight at once. A commit that finds them all busy waits for one to end, while its chunks
//! stay in the open pack; the commits that arrive meanwhile join it, and when a turn frees,
//! one of them seals and uploads the pack for all. So a lone allocation never waits, and the
//! busier the server, the more commits share one PUT, with no timer to tune: a commit waits at
//! most for one upload besides its own. (A pack that fills is uploaded by whoever filled it,
//! outside this limit.)
//!
//! Lock order: the writer's turns, then its current slot, then a slot's state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use aetherflow_store::{ChunkInfo, Error, Result};
use bytes::Bytes;

use crate::log_record::{self, Event, Origin};
use crate::pack::PackBuilder;

enum SlotState {
    /// Being filled.
    Open(PackBuilder),
    Uploading,
    /// In the bucket; the record of the commits that joined it is being written.
    Logging,
    /// In the bucket, with how the record of the commits that joined it ended (`None`: none
    /// joined).
    Uploaded(Option<(Origin, std::result::Result<(), String>)>),
    Failed(String),
}

/// A slot's state and the log events of the commits that joined it.
struct SlotInner {
    state: SlotState,
    events: Vec<Event>,
    /// The oldest view of the condemned marks those commits relied on.
    marks_at: Option<Instant>,
}

/// One pack object, from its first staged chunk to its upload, and the log record of the
/// commits that wait for it: whoever uploads the pack writes their record right after, so
/// that a group of commits costs one pack PUT and one record PUT.
pub struct PackSlot {
    pub name: String,
    inner: Mutex<SlotInner>,
    settled: Condvar,
}

/// Commits' events one pack's record holds at most: more go in records of their own.
const MAX_JOINED: usize = log_record::MAX_EVENTS / 2;

impl std::fmt::Debug for PackSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackSlot")
            .field("name", &self.name)
            .finish()
    }
}

/// Where a staged chunk waits: the note a [`aetherflow_store::StagedChunk`] carries.
#[derive(Debug)]
pub struct StagedNote {
    pub slot: Arc<PackSlot>,
    pub entry: usize,
}

/// A sealed pack's bytes and entries, for the uploader.
pub type Sealed = (Bytes, Vec<(u64, ChunkInfo)>);

/// The open pack of this process.
#[derive(Debug)]
pub struct Writer {
    /// Names this process's objects apart from other servers'.
    pub writer_id: String,
    next: AtomicU64,
    current: Mutex<Arc<PackSlot>>,
    target_size: usize,
    /// Commit-sealed packs that may be in flight at once; 0 for no limit (see the module
    /// documentation).
    commit_uploads: usize,
    /// Commit-sealed packs in flight now.
    turns: Mutex<usize>,
    /// Signalled when one of them ends.
    turn_freed: Condvar,
}

/// A commit's turn to upload a pack: held for the upload, given back when dropped (whether the
/// upload succeeded or not).
#[must_use]
#[derive(Debug)]
pub struct UploadTurn<'a>(&'a Writer);

impl Drop for UploadTurn<'_> {
    fn drop(&mut self) {
        *self.0.turns.lock().expect("turns lock") -= 1;
        self.0.turn_freed.notify_all();
    }
}

impl Writer {
    pub fn new(writer_id: String, target_size: usize, commit_uploads: usize) -> Writer {
        let first = Arc::new(PackSlot::new(format!("{writer_id}-000000")));
        Writer {
            writer_id,
            next: AtomicU64::new(1),
            current: Mutex::new(first),
            target_size,
            commit_uploads,
            turns: Mutex::new(0),
            turn_freed: Condvar::new(),
        }
    }

    fn fresh_slot(&self) -> Arc<PackSlot> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Arc::new(PackSlot::new(format!("{}-{n:06}", self.writer_id)))
    }

    /// Appends records to the open pack. Returns where each went, and a pack that became full
    /// (sealed: the caller uploads it).
    pub fn stage(
        &self,
        records: &[(ChunkInfo, &[u8])],
    ) -> (Vec<StagedNote>, Option<(Arc<PackSlot>, Sealed)>) {
        let mut current = self.current.lock().expect("writer lock");
        let slot = Arc::clone(&current);
        let mut notes = Vec::with_capacity(records.len());
        let full = {
            let mut inner = slot.inner.lock().expect("slot lock");
            let SlotState::Open(builder) = &mut inner.state else {
                unreachable!("the current slot is always open");
            };
            for (info, payload) in records {
                let entry = builder.append(info, payload);
                notes.push(StagedNote {
                    slot: Arc::clone(&slot),
                    entry,
                });
            }
            builder.len() >= self.target_size
        };
        if !full {
            return (notes, None);
        }
        *current = self.fresh_slot();
        let sealed = slot.take_for_upload();
        (notes, sealed.map(|s| (slot, s)))
    }

    /// Seals `slot` for a commit that needs its chunks in the bucket, once this commit has a
    /// turn to upload (see the module documentation). Returns the pack's contents and the turn
    /// if this caller sealed it and must upload it; `None` if another thread sealed it (the
    /// caller then waits for that upload).
    pub fn seal_for_commit(&self, slot: &Arc<PackSlot>) -> Option<(Sealed, UploadTurn<'_>)> {
        let mut turns = self.turns.lock().expect("turns lock");
        while self.commit_uploads != 0 && *turns >= self.commit_uploads {
            if !slot.is_open() {
                return None;
            }
            turns = self.turn_freed.wait(turns).expect("turns lock");
        }
        let sealed = self.seal(slot)?;
        *turns += 1;
        Some((sealed, UploadTurn(self)))
    }

    /// Seals `slot` if it is still the open pack, so nothing more goes into it, and returns
    /// its contents for the caller to upload; `None` if it was sealed already.
    pub fn seal(&self, slot: &Arc<PackSlot>) -> Option<Sealed> {
        let mut current = self.current.lock().expect("writer lock");
        if Arc::ptr_eq(&current, slot) {
            *current = self.fresh_slot();
        }
        drop(current);
        slot.take_for_upload()
    }
}

impl PackSlot {
    fn new(name: String) -> PackSlot {
        PackSlot {
            name,
            inner: Mutex::new(SlotInner {
                state: SlotState::Open(PackBuilder::new()),
                events: Vec::new(),
                marks_at: None,
            }),
            settled: Condvar::new(),
        }
    }

    fn is_open(&self) -> bool {
        matches!(
            self.inner.lock().expect("slot lock").state,
            SlotState::Open(_)
        )
    }

    fn take_for_upload(&self) -> Option<Sealed> {
        let mut inner = self.inner.lock().expect("slot lock");
        match std::mem::replace(&mut inner.state, SlotState::Uploading) {
            SlotState::Open(builder) => Some(builder.finish()),
            other => {
                inner.state = other;
                None
            }
        }
    }

    /// Joins a commit's log event to this pack's record, if the pack is not in the bucket
    /// yet (and its record not full); `false` otherwise, and the commit writes its own.
    /// `marks_at`: as for `LogWriter::commit_all`.
    pub fn join(&self, event: Event, marks_at: Option<Instant>) -> bool {
        let mut inner = self.inner.lock().expect("slot lock");
        let open = matches!(inner.state, SlotState::Open(_) | SlotState::Uploading);
        if !open || inner.events.len() >= MAX_JOINED {
            return false;
        }
        inner.events.push(event);
        inner.marks_at = inner.marks_at.into_iter().chain(marks_at).min();
        true
    }

    /// After a successful upload: the events joined so far, for the uploader to write as
    /// one record, with the oldest view of the marks they relied on; no more join. Empty if
    /// none did (the pack is then settled at once).
    pub fn begin_logging(&self) -> (Vec<Event>, Option<Instant>) {
        let mut inner = self.inner.lock().expect("slot lock");
        let marks_at = inner.marks_at.take();
        let events = std::mem::take(&mut inner.events);
        inner.state = if events.is_empty() {
            SlotState::Uploaded(None)
        } else {
            SlotState::Logging
        };
        drop(inner);
        self.settled.notify_all();
        (events, marks_at)
    }

    /// Records how the joined commits' record ended, and wakes them.
    pub fn finish_logging(&self, origin: Origin, result: &Result<()>) {
        let mut inner = self.inner.lock().expect("slot lock");
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        inner.state = SlotState::Uploaded(Some((origin, outcome)));
        drop(inner);
        self.settled.notify_all();
    }

    /// For a commit that joined: waits for the pack and its record; returns the record and
    /// how its write ended (an error if the pack itself could not be uploaded).
    pub fn wait_logged(&self) -> Result<(Origin, Result<()>)> {
        let mut inner = self.inner.lock().expect("slot lock");
        loop {
            match &inner.state {
                SlotState::Uploaded(Some((origin, outcome))) => {
                    let outcome = outcome.clone().map_err(Error::Unavailable);
                    return Ok((origin.clone(), outcome));
                }
                SlotState::Uploaded(None) => {
                    unreachable!("a pack a commit joined is logged before it settles")
                }
                SlotState::Failed(e) => {
                    return Err(Error::Unavailable(format!(
                        "uploading pack {} failed: {e}",
                        self.name
                    )))
                }
                SlotState::Open(_) => unreachable!("a slot is sealed before anyone waits for it"),
                SlotState::Uploading | SlotState::Logging => {
                    inner = self.settled.wait(inner).expect("slot lock");
                }
            }
        }
    }

    /// Makes entry `entry` say `info`, the commit's description of the chunk, so that reads
    /// check the stored bytes against what the committer vouched for. A pack already sealed
    /// keeps the description given when the chunk was staged.
    pub fn restate(&self, entry: usize, info: &ChunkInfo) {
        if let SlotState::Open(builder) = &mut self.inner.lock().expect("slot lock").state {
            if builder.entry(entry).1 != *info {
                builder.restate(entry, info);
            }
        }
    }

    /// Records that this pack's upload failed and wakes the commits waiting for it (a
    /// success is [`PackSlot::begin_logging`]).
    pub fn fail_upload(&self, e: &Error) {
        let mut inner = self.inner.lock().expect("slot lock");
        inner.state = SlotState::Failed(e.to_string());
        inner.events.clear();
        drop(inner);
        self.settled.notify_all();
    }

    /// Waits until the pack is in the bucket (or its upload failed).
    pub fn wait_uploaded(&self) -> Result<()> {
        let mut inner = self.inner.lock().expect("slot lock");
        loop {
            match &inner.state {
                SlotState::Uploaded(_) | SlotState::Logging => return Ok(()),
                SlotState::Failed(e) => {
                    return Err(Error::Unavailable(format!(
                        "uploading pack {} failed: {e}",
                        self.name
                    )))
                }
                SlotState::Open(_) => {
                    unreachable!("a slot is sealed before anyone waits for it")
                }
                SlotState::Uploading => {
                    inner = self.settled.wait(inner).expect("slot lock");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{ChunkId, Codec};

    fn record(n: u8) -> (ChunkInfo, Vec<u8>) {
        let payload = vec![n; 64];
        let info = ChunkInfo {
            id: ChunkId::plain(&[n]),
            codec: Codec::Raw,
            nonce_stored: false,
            raw_len: 64,
            stored_len: 64,
            check: aetherflow_store::types::payload_check(&payload),
        };
        (info, payload)
    }

    fn stage(writer: &Writer, n: u8) -> Arc<PackSlot> {
        let (info, payload) = record(n);
        let (mut notes, full) = writer.stage(&[(info, &payload)]);
        assert!(full.is_none());
        notes.remove(0).slot
    }

    fn event(n: u8) -> Event {
        Event::HeadChanged {
            name: format!("v{n}"),
        }
    }

    #[test]
    fn commits_join_a_pack_until_it_is_in_the_bucket_and_learn_its_record() {
        let writer = Writer::new("w".into(), 1 << 20, 1);
        let slot = stage(&writer, 1);
        let (older, newer) = (Instant::now(), Instant::now());
        assert!(slot.join(event(1), Some(newer)), "open");
        let (_sealed, _turn) = writer.seal_for_commit(&slot).expect("seals");
        assert!(slot.join(event(2), Some(older)), "uploading");
        assert_eq!(
            slot.begin_logging(),
            (vec![event(1), event(2)], Some(older))
        );
        assert!(
            !slot.join(event(3), None),
            "in the bucket: its record is being written"
        );
        let origin = Origin {
            writer: "w".into(),
            seq: 4,
        };
        slot.finish_logging(origin.clone(), &Ok(()));
        let (logged, written) = slot.wait_logged().unwrap();
        assert_eq!(logged, origin);
        assert!(written.is_ok());
        slot.wait_uploaded().unwrap();

        // A pack whose upload fails writes no record: its commits learn that.
        let failed = stage(&writer, 2);
        assert!(failed.join(event(4), None));
        let _ = writer.seal(&failed).expect("seals");
        failed.fail_upload(&Error::Unavailable("down".into()));
        assert!(failed.wait_logged().is_err());
    }

    #[test]
    fn a_lone_commit_seals_at_once() {
        let writer = Writer::new("w".into(), 1 << 20, 1);
        let slot = stage(&writer, 1);
        let ((_, entries), _turn) = writer.seal_for_commit(&slot).expect("this commit seals");
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn commits_that_arrive_during_an_upload_share_the_next_pack() {
        let writer = Arc::new(Writer::new("w".into(), 1 << 20, 1));
        let first = stage(&writer, 1);
        let (_, turn) = writer
            .seal_for_commit(&first)
            .expect("the first commit seals");
        // While the first pack uploads, two more commits stage into the next one and ask.
        let b = stage(&writer, 2);
        let c = stage(&writer, 3);
        assert!(Arc::ptr_eq(&b, &c));
        let waiting: Vec<_> = [b, c]
            .into_iter()
            .map(|slot| {
                let writer = Arc::clone(&writer);
                std::thread::spawn(move || {
                    writer
                        .seal_for_commit(&slot)
                        .map(|((_, entries), _turn)| entries.len())
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            waiting.iter().all(|t| !t.is_finished()),
            "a commit sealed while the only turn was taken"
        );
        drop(turn);
        let sealed: Vec<usize> = waiting
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        // Exactly one of them sealed (and would upload) the pack, holding both chunks.
        assert_eq!(sealed, vec![2]);
    }

    #[test]
    fn without_a_limit_every_commit_seals_its_pack_at_once() {
        let writer = Writer::new("w".into(), 1 << 20, 0);
        let first = stage(&writer, 1);
        let _turn = writer.seal_for_commit(&first).expect("seals");
        let second = stage(&writer, 2);
        assert!(writer.seal_for_commit(&second).is_some());
    }

    #[test]
    fn a_commit_whose_pack_another_sealed_stops_waiting_for_a_turn() {
        let writer = Arc::new(Writer::new("w".into(), 1 << 20, 1));
        let first = stage(&writer, 1);
        let (_, turn) = writer.seal_for_commit(&first).expect("seals");
        let next = stage(&writer, 2);
        let waiter = {
            let (writer, next) = (Arc::clone(&writer), Arc::clone(&next));
            std::thread::spawn(move || writer.seal_for_commit(&next).is_none())
        };
        // The pack is sealed meanwhile (it filled, say), then a turn frees.
        assert!(writer.seal(&next).is_some());
        drop(turn);
        assert!(
            waiter.join().unwrap(),
            "it must wait for that upload instead"
        );
    }
}
