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

impl Inner {
    pub(crate) fn reads_of(&self, id: BlockId) -> Result<u64> {
        let listed = self.remote.list(&keys::reads_of(id))?;
        let sums = sum_by_writer(listed.iter().filter_map(|l| keys::parse_reads(&l.key)));
        Ok(sums.get(&id).copied().unwrap_or(0))
    }

    pub(crate) fn all_reads(&self) -> Result<HashMap<BlockId, u64>> {
        let listed = self.remote.list(keys::READS)?;
        Ok(sum_by_writer(
            listed.iter().filter_map(|l| keys::parse_reads(&l.key)),
        ))
    }

    /// Adds `n` reads to this server's count of block `id`: the new key first, then the old
    /// one goes, so a crash in between never loses counts.
    pub(crate) fn add_reads(&self, id: BlockId, n: u64) -> Result<()> {
        let mut reads = self.reads.lock().expect("reads lock");
        let old = reads.get(&id).copied().unwrap_or(0);
        let new = old + n;
        let writer = &self.writer.writer_id;
        self.remote
            .put(&keys::reads(id, writer, new), Bytes::new(), false)?;
        if old > 0 {
            self.remote.delete(&keys::reads(id, writer, old))?;
        }
        reads.insert(id, new);
        Ok(())
    }

    /// Deletes every server's read counts of a freed block.
    pub(crate) fn forget_reads(&self, id: BlockId) -> Result<()> {
        for l in self.remote.list(&keys::reads_of(id))? {
            self.remote.delete(&l.key)?;
        }
        Ok(())
    }
}
