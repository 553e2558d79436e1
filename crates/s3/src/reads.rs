//! Read counts in the bucket. Each server owns one empty object per block it has counted reads
//! of, its count in the key (`reads/UUID/WRITER.COUNT`): servers never overwrite each other's
//! counts, and one listing gives every block's total without reading any object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aetherflow_store::{BlockId, Result};
use bytes::Bytes;

use crate::keys;
use crate::remote::Remote;
use crate::sync::lock;

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
struct ReadCount {
    written: u64,
    pending: u64,
}

/// This server's read counts, and every server's as the bucket has them.
#[derive(Debug)]
pub(crate) struct ReadCounts {
    remote: Arc<Remote>,
    writer_id: String,
    counts: Mutex<HashMap<BlockId, ReadCount>>,
    /// A read-only store (a check) counts nothing and writes nothing.
    read_only: bool,
}

impl ReadCounts {
    pub fn new(remote: Arc<Remote>, writer_id: String, read_only: bool) -> ReadCounts {
        ReadCounts {
            remote,
            writer_id,
            counts: Mutex::default(),
            read_only,
        }
    }

    /// Every server's reads of block `id`.
    pub fn of(&self, id: BlockId) -> Result<u64> {
        let listed = self.remote.list(&keys::reads_of(id))?;
        let sums = sum_by_writer(listed.iter().filter_map(|l| keys::parse_reads(&l.key)));
        let pending = lock(&self.counts).get(&id).map_or(0, |c| c.pending);
        Ok(sums.get(&id).copied().unwrap_or(0) + pending)
    }

    /// Every server's reads of every block.
    pub fn all(&self) -> Result<HashMap<BlockId, u64>> {
        let listed = self.remote.list(keys::READS)?;
        let mut sums = sum_by_writer(listed.iter().filter_map(|l| keys::parse_reads(&l.key)));
        for (id, c) in lock(&self.counts).iter() {
            *sums.entry(*id).or_default() += c.pending;
        }
        Ok(sums)
    }

    /// Counts `n` more reads of block `id`; they reach the bucket with the next flush.
    pub fn add(&self, id: BlockId, n: u64) {
        if !self.read_only {
            lock(&self.counts).entry(id).or_default().pending += n;
        }
    }

    /// Writes the counts that changed since the last flush: for each block, the new key first,
    /// then the old one goes, so a crash in between never loses counts. Runs in the background
    /// (and when the store closes), so no client's read waits for it.
    pub fn flush(&self) -> Result<()> {
        let due: Vec<(BlockId, ReadCount)> = lock(&self.counts)
            .iter()
            .filter(|(_, c)| c.pending > 0)
            .map(|(id, c)| (*id, *c))
            .collect();
        for (id, c) in due {
            let new = c.written + c.pending;
            self.remote
                .put(&keys::reads(id, &self.writer_id, new), Bytes::new(), false)?;
            if c.written > 0 {
                self.remote
                    .delete(&keys::reads(id, &self.writer_id, c.written))?;
            }
            // The block may have been freed meanwhile: then its entry is gone and stays gone.
            if let Some(entry) = lock(&self.counts).get_mut(&id) {
                entry.written = new;
                entry.pending -= c.pending;
            }
        }
        Ok(())
    }

    /// Deletes every server's read counts of a freed block.
    pub fn forget(&self, id: BlockId) -> Result<()> {
        lock(&self.counts).remove(&id);
        for l in self.remote.list(&keys::reads_of(id))? {
            self.remote.delete(&l.key)?;
        }
        Ok(())
    }
}
