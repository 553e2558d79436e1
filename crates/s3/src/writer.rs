//! Staging: chunks of concurrent allocations gathered into one open pack, uploaded when it is
//! full or when a commit needs its chunks in the bucket.
//!
//! A commit that needs a pack still open seals it and uploads it itself; one that needs a pack
//! another thread is uploading waits for that upload. So small blocks committed at the same time
//! share pack objects (fewer PUTs), and no commit waits for chunks it does not use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use aetherflow_store::{ChunkInfo, Error, Result};
use bytes::Bytes;

use crate::pack::PackBuilder;

enum SlotState {
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
}

impl Writer {
    pub fn new(writer_id: String, target_size: usize) -> Writer {
        let first = Arc::new(PackSlot::new(format!("{writer_id}-000000")));
        Writer {
            writer_id,
            next: AtomicU64::new(1),
            current: Mutex::new(first),
            target_size,
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
