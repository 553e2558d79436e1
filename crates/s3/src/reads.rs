//! Read counts in the bucket. Each server owns one empty object per block it has counted reads
//! of, its count in the key (`reads/UUID/WRITER.COUNT`): servers never overwrite each other's
//! counts, and one listing gives every block's total without reading any object.

use std::collections::HashMap;

use aetherflow_store::{BlockId, Result};
use bytes::Bytes;

use crate::keys;
use crate::store::Inner;

/// Sums the highest count of each writer (an older key may linger if its delete failed).
fn sum_by_writer<'a>(
    entries: impl Iterator<Item = (BlockId, &'a str, u64)>,
) -> HashMap<BlockId, u64> {
    let mut best: HashMap<(BlockId, &str), u64> = HashMap::new();
    for (id, writer, count) in entries {
        let b = best.entry((id, writer)).or_default();
        *b = (*b).max(count);
    }
    let mut sums = HashMap::new();
    for ((id, _), count) in best {
        *sums.entry(id).or_default() += count;
    }
    sums
}

/// This server's count of one block: what its object in the bucket says, and reads since.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadCount {
    written: u64,
    pending: u64,
}

impl Inner {
    pub(crate) fn reads_of(&self, id: BlockId) -> Result<u64> {
        let listed = self.remote.list(&keys::reads_of(id))?;
        let sums = sum_by_writer(listed.iter().filter_map(|l| keys::parse_reads(&l.key)));
        let pending = self.pending_reads(id);
        Ok(sums.get(&id).copied().unwrap_or(0) + pending)
    }

    pub(crate) fn all_reads(&self) -> Result<HashMap<BlockId, u64>> {
        let listed = self.remote.list(keys::READS)?;
        let mut sums = sum_by_writer(listed.iter().filter_map(|l| keys::parse_reads(&l.key)));
        for (id, c) in self.reads.lock().expect("reads lock").iter() {
            *sums.entry(*id).or_default() += c.pending;
        }
        Ok(sums)
    }

    fn pending_reads(&self, id: BlockId) -> u64 {
        self.reads
            .lock()
            .expect("reads lock")
            .get(&id)
            .map_or(0, |c| c.pending)
    }

    /// Counts `n` more reads of block `id`; they reach the bucket with the next flush.
    pub(crate) fn add_reads(&self, id: BlockId, n: u64) {
        self.reads
            .lock()
            .expect("reads lock")
            .entry(id)
            .or_default()
            .pending += n;
    }

    /// Writes the counts that changed since the last flush: for each block, the new key first,
    /// then the old one goes, so a crash in between never loses counts. Runs in the background
    /// (and when the store closes), so no client's read waits for it.
    pub(crate) fn flush_reads(&self) -> Result<()> {
        let due: Vec<(BlockId, ReadCount)> = self
            .reads
            .lock()
            .expect("reads lock")
            .iter()
            .filter(|(_, c)| c.pending > 0)
            .map(|(id, c)| (*id, *c))
            .collect();
        let writer = &self.writer.writer_id;
        for (id, c) in due {
            let new = c.written + c.pending;
            self.remote
                .put(&keys::reads(id, writer, new), Bytes::new(), false)?;
            if c.written > 0 {
                self.remote.delete(&keys::reads(id, writer, c.written))?;
            }
            let mut reads = self.reads.lock().expect("reads lock");
            // The block may have been freed meanwhile: then its entry is gone and stays gone.
            if let Some(entry) = reads.get_mut(&id) {
                entry.written = new;
                entry.pending -= c.pending;
            }
        }
        Ok(())
    }

    /// Deletes every server's read counts of a freed block.
    pub(crate) fn forget_reads(&self, id: BlockId) -> Result<()> {
        self.reads.lock().expect("reads lock").remove(&id);
        for l in self.remote.list(&keys::reads_of(id))? {
            self.remote.delete(&l.key)?;
        }
        Ok(())
    }
}
