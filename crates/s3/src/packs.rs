//! [`PackWriter`]: the open pack that concurrent allocations stage into, and the uploads of
//! sealed ones. An uploaded pack enters the view under the epoch gate, so that collection
//! knows which running allocations may still commit chunks staged into it.

use std::sync::Arc;

use aetherflow_store::epoch::EpochGate;
use aetherflow_store::{ChunkInfo, Error, Result};
use bytes::Bytes;

use crate::keys;
use crate::log_record::Event;
use crate::log_writer::LogWriter;
use crate::remote::Remote;
use crate::view::View;
use crate::writer::{PackSlot, Sealed, StagedNote, Writer};

/// Stages chunks into packs and uploads them; see the module documentation.
#[derive(Debug)]
pub(crate) struct PackWriter {
    writer: Writer,
    remote: Arc<Remote>,
    view: Arc<View>,
    gate: Arc<EpochGate>,
    log: Arc<LogWriter>,
}

impl PackWriter {
    pub fn new(
        writer: Writer,
        remote: Arc<Remote>,
        view: Arc<View>,
        gate: Arc<EpochGate>,
        log: Arc<LogWriter>,
    ) -> PackWriter {
        PackWriter {
            writer,
            remote,
            view,
            gate,
            log,
        }
    }

    /// Names this process's objects apart from other servers'.
    pub fn writer_id(&self) -> &str {
        &self.writer.writer_id
    }

    /// Appends records to the open pack (uploading it if that filled it); returns where each
    /// went.
    pub fn stage(&self, records: &[(ChunkInfo, &[u8])]) -> Result<Vec<StagedNote>> {
        let (notes, full) = self.writer.stage(records);
        if let Some((slot, sealed)) = full {
            self.upload(&slot, sealed)?;
        }
        Ok(notes)
    }

    /// Makes sure `slot`'s pack is in the bucket: uploads it if still open (once this commit
    /// has a turn: see `writer`), else waits for the thread uploading it.
    pub fn ensure_uploaded(&self, slot: &Arc<PackSlot>) -> Result<()> {
        if let Some((sealed, _turn)) = self.writer.seal_for_commit(slot) {
            self.upload(slot, sealed)?;
        }
        slot.wait_uploaded()
    }

    /// Stages `chunks` and uploads their pack at once (compaction and rescues).
    pub fn write_now(&self, chunks: &[(ChunkInfo, Bytes)]) -> Result<()> {
        let records: Vec<(ChunkInfo, &[u8])> = chunks.iter().map(|(i, p)| (*i, &p[..])).collect();
        let notes = self.stage(&records)?;
        for slot in slots_of(&notes) {
            self.ensure_uploaded(&slot)?;
        }
        Ok(())
    }

    /// Uploads a sealed pack and makes its chunks findable, then writes the record of the
    /// commits that joined it (`PackSlot::join`); wakes the commits waiting for either.
    fn upload(&self, slot: &PackSlot, sealed: Sealed) -> Result<()> {
        // A bug must not leave the commits that wait for this pack waiting for ever.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.upload_now(slot, sealed)
        }))
        .unwrap_or_else(|_| {
            let e = Error::Unavailable(format!(
                "uploading pack {} failed on a bug (logged above)",
                slot.name
            ));
            slot.fail_upload(&e);
            Err(e)
        })
    }

    fn upload_now(&self, slot: &PackSlot, (bytes, entries): Sealed) -> Result<()> {
        let size = bytes.len() as u64;
        if let Err(e) = self.remote.put(&keys::pack(&slot.name), bytes, false) {
            slot.fail_upload(&e);
            return Err(e);
        }
        self.log.note(Event::PackAdded {
            name: slot.name.clone(),
            size,
            entries: entries.clone(),
        });
        self.gate.record(|stamp| {
            self.view
                .change(|c| c.add_pack(&slot.name, size, None, entries, Some(stamp), true))
        });
        let (joined, marks_at) = slot.begin_logging();
        if !joined.is_empty() {
            // The pack's news rides in the same record, ahead of the blocks.
            let (origin, written) = self.log.commit_all(joined, marks_at);
            slot.finish_logging(origin, &written);
        }
        Ok(())
    }
}

/// The distinct pack slots of `notes`.
pub(crate) fn slots_of<'a>(notes: impl IntoIterator<Item = &'a StagedNote>) -> Vec<Arc<PackSlot>> {
    let mut slots: Vec<Arc<PackSlot>> = Vec::new();
    for note in notes {
        if !slots.iter().any(|s| Arc::ptr_eq(s, &note.slot)) {
            slots.push(Arc::clone(&note.slot));
        }
    }
    slots
}
