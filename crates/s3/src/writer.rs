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

use aetherflow_store::{ChunkInfo, Error, Result};
use bytes::Bytes;

use crate::pack::PackBuilder;

enum SlotState {
    /// Being filled.
    Open(PackBuilder),
    Uploading,
    Uploaded,
    Failed(String),
}

/// One pack object, from its first staged chunk to its upload.
pub struct PackSlot {
    pub name: String,
    state: Mutex<SlotState>,
    settled: Condvar,
}

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
            let mut state = slot.state.lock().expect("slot lock");
            let SlotState::Open(builder) = &mut *state else {
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
            state: Mutex::new(SlotState::Open(PackBuilder::new())),
            settled: Condvar::new(),
        }
    }

    fn is_open(&self) -> bool {
        matches!(*self.state.lock().expect("slot lock"), SlotState::Open(_))
    }

    fn take_for_upload(&self) -> Option<Sealed> {
        let mut state = self.state.lock().expect("slot lock");
        match std::mem::replace(&mut *state, SlotState::Uploading) {
            SlotState::Open(builder) => Some(builder.finish()),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Makes entry `entry` say `info`, the commit's description of the chunk, so that reads
    /// check the stored bytes against what the committer vouched for. A pack already sealed
    /// keeps the description given when the chunk was staged.
    pub fn restate(&self, entry: usize, info: &ChunkInfo) {
        if let SlotState::Open(builder) = &mut *self.state.lock().expect("slot lock") {
            if builder.entry(entry).1 != *info {
                builder.restate(entry, info);
            }
        }
    }

    /// Records the end of this pack's upload and wakes the commits waiting for it.
    pub fn finish_upload(&self, result: &Result<()>) {
        let mut state = self.state.lock().expect("slot lock");
        *state = match result {
            Ok(()) => SlotState::Uploaded,
            Err(e) => SlotState::Failed(e.to_string()),
        };
        self.settled.notify_all();
    }

    /// Waits until the pack is in the bucket (or its upload failed).
    pub fn wait_uploaded(&self) -> Result<()> {
        let mut state = self.state.lock().expect("slot lock");
        loop {
            match &*state {
                SlotState::Uploaded => return Ok(()),
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
                    state = self.settled.wait(state).expect("slot lock");
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
