//! Writing the buffer back: buffered chunks identified, deduplicated against the whole seed
//! domain, compressed and sealed on all cores, staged, and the map committed in one
//! transaction; then the entries committed leave the buffer. Range changes (trims and zeroes
//! of whole chunks) go to the map here too, under the same lock, so that map changes happen in
//! the order the writes were answered.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::MutexGuard;

use aetherflow_engine::codec::is_zero;
use aetherflow_engine::crypto::ChunkId;
use aetherflow_store::{MapEntry, NewChunk};
use bytes::Bytes;
use rayon::prelude::*;

use super::buffer::{Pending, Taken};
use super::{coders, Volume};
use crate::error::{Error, Result};

/// Plaintext bytes written back per transaction: a large buffer goes in parts, so that a
/// store with little room left still takes what fits, and memory for the encoded chunks stays
/// small.
const BATCH_BYTES: u64 = 16 << 20;

/// zstd level of a rewrite (a chunk patched after it was written back; see
/// [`super::buffer::Buffer::put`]), unless the volume's level is lower. Random small writes pay
/// one chunk's compression each: at 64 KiB, level 1 takes about half the time of level 3
/// (`zstd -b1 -e3 -B64K`: 371 against 168 MB/s on fio's half-compressible data, 373 against
/// 223 MB/s on an ext4 image of real files), for 5 % more bytes on real files and none on
/// fio's. Chunks written whole (a copy, a conversion, a file's data) keep the volume's level.
const REWRITE_LEVEL: i32 = 1;

/// A batch of the buffer identified and encoded, ready to be committed.
struct Prepared {
    /// The map rows it sets.
    changes: Vec<(u64, MapEntry)>,
    /// The chunks it stores (the others are in the store already, or in the batch before).
    encoded: Vec<NewChunk>,
    /// The plaintext of each distinct chunk, for the cache.
    decoded: Vec<(ChunkId, Bytes)>,
    /// The buffer entries it writes back, with their generations.
    done: Vec<(u64, u64)>,
}

/// Zero entries committed per transaction by [`Volume::zero`].
const ZERO_BATCH: u64 = 64 * 1024;

impl Volume {
    /// Commits everything buffered now; with `durable`, this and every commit before it is
    /// durable when this returns. The caller holds the write-back lock.
    ///
    /// Batches go through two stages, overlapped: a batch is identified, deduplicated and
    /// encoded (on all cores) while the one before it is staged and committed (one thread, the
    /// store's writer), so that the cores do not wait for the store and the store does not wait
    /// for the cores. Batches commit in order, and a batch commits only if every one before it
    /// did.
    pub(super) fn write_back(&self, _lock: &MutexGuard<'_, ()>, durable: bool) -> Result<()> {
        let snapshot = self.buffer.snapshot();
        if !snapshot.is_empty() {
            let pin = self.store.pin();
            // At least four batches to a full buffer, so that the two stages overlap.
            let batch_bytes = BATCH_BYTES.min(self.limit / 4);
            let batch = (batch_bytes / u64::from(self.chunk_size)).max(1) as usize;
            let mut previous: Option<Prepared> = None;
            for part in snapshot.chunks(batch) {
                let before = previous.take();
                // Chunks the batch before is about to store count as found.
                let staging: HashMap<ChunkId, u32> = before
                    .as_ref()
                    .map(|p| {
                        p.encoded
                            .iter()
                            .map(|c| (c.id, c.payload.len() as u32))
                            .collect()
                    })
                    .unwrap_or_default();
                let (prepared, committed) = std::thread::scope(|scope| {
                    let committing = before.map(|p| scope.spawn(move || self.commit_batch(p)));
                    let prepared = self.prepare_batch(part, &staging);
                    let committed = committing.map_or(Ok(()), |c| {
                        c.join().unwrap_or_else(|_| {
                            Err(Error::Internal("a write-back commit panicked".into()))
                        })
                    });
                    (prepared, committed)
                });
                committed?;
                previous = Some(prepared?);
            }
            if let Some(last) = previous {
                self.commit_batch(last)?;
            }
            // Chunks the commits released go at the next sync (the pin kept them).
            drop(pin);
        }
        if durable {
            // One durable commit makes every relaxed one before it durable.
            self.store.sync().map_err(|e| self.store_error(e))?;
        }
        Ok(())
    }

    /// The first stage of a batch: each chunk identified, the new ones (not in the store, not
    /// in `staging`: being stored by the batch before) compressed and sealed.
    fn prepare_batch(
        &self,
        snapshot: &[Taken],
        staging: &HashMap<ChunkId, u32>,
    ) -> Result<Prepared> {
        let keys = self.keys.as_deref();
        // Each data chunk's identity (or zero), on all cores.
        let entries: Vec<(u64, Option<(ChunkId, &Bytes)>)> = snapshot
            .par_iter()
            .map(|t| match &t.content {
                Pending::Data(b) if !is_zero(b) => (t.index, Some((ChunkId::of(keys, b), b))),
                _ => (t.index, None),
            })
            .collect();
        // Distinct contents, each with its level: a rewrite's if every copy of it is one.
        let rewrite_level = self.level.min(REWRITE_LEVEL);
        let mut distinct: HashMap<ChunkId, (&Bytes, i32)> = HashMap::new();
        for ((_, chunk), taken) in entries.iter().zip(snapshot) {
            if let Some((id, data)) = chunk {
                let level = if taken.rewrite {
                    rewrite_level
                } else {
                    self.level
                };
                let slot = distinct.entry(*id).or_insert((data, level));
                slot.1 = slot.1.max(level);
            }
        }
        let mut stored_len: HashMap<ChunkId, u32> = HashMap::new();
        let mut ids: Vec<ChunkId> = Vec::new();
        for id in distinct.keys() {
            match staging.get(id) {
                Some(len) => {
                    stored_len.insert(*id, *len);
                }
                None => ids.push(*id),
            }
        }
        let found = self
            .store
            .find_chunks(&ids)
            .map_err(|e| self.store_error(e))?;
        let mut new = Vec::new();
        for (id, info) in ids.iter().zip(found) {
            match info {
                Some(info) => {
                    stored_len.insert(*id, info.stored_len);
                }
                None => new.push((*id, distinct[id])),
            }
        }
        let sealing = self.keys.as_ref();
        let encoded: Vec<NewChunk> = new
            .par_iter()
            .map(|(id, (data, level))| -> Result<NewChunk> {
                let e = coders::with_encoder(*level, sealing, |encoder| {
                    encoder.encode_for_store(data, *id)
                })
                .map_err(Error::from_encoder)?;
                Ok(NewChunk::new(
                    *id,
                    e.codec,
                    sealing.is_some(),
                    e.raw_len,
                    e.payload.into(),
                ))
            })
            .collect::<Result<_>>()?;
        for c in &encoded {
            stored_len.insert(c.id, c.payload.len() as u32);
        }
        let changes: Vec<(u64, MapEntry)> = entries
            .iter()
            .map(|(index, chunk)| {
                let entry = match chunk {
                    Some((id, _)) => MapEntry::Chunk {
                        id: *id,
                        stored_len: stored_len[id],
                    },
                    None => MapEntry::Zero,
                };
                (*index, entry)
            })
            .collect();
        Ok(Prepared {
            changes,
            encoded,
            decoded: distinct
                .into_iter()
                .map(|(id, (data, _))| (id, data.clone()))
                .collect(),
            done: snapshot.iter().map(|t| (t.index, t.generation)).collect(),
        })
    }

    /// The second stage of a batch: its new chunks staged, its map rows committed (with relaxed
    /// durability), its entries out of the buffer.
    fn commit_batch(&self, batch: Prepared) -> Result<()> {
        let staged = self
            .store
            .stage_chunks(&batch.encoded)
            .map_err(|e| self.store_error(e))?;
        self.store
            .commit_volume(&self.name, &batch.changes, staged, false)
            .map_err(|e| self.store_error(e))?;
        // What was just written is what is read next, often: keep it decoded.
        for (id, data) in batch.decoded {
            self.cache.insert_chunk(id, data);
        }
        self.buffer.committed(&batch.done);
        Ok(())
    }

    /// Deallocates whole chunks (a trim, punched zeroes): the map rows of the range go at once,
    /// at a cost of what the range held, whatever its length.
    pub(super) fn clear(&self, chunks: Range<u64>) -> Result<()> {
        // Under the write-back lock, so that no write-back of older buffered content lands
        // after the clear; buffered writes in the range are superseded and dropped.
        let _guard = self.writeback.lock().expect("write-back lock");
        self.buffer.drop_range(chunks.clone());
        self.store
            .clear_volume(&self.name, chunks, false)
            .map_err(|e| self.store_error(e))
    }

    /// Makes whole chunks zero chunks (zeroes written with `NO_HOLE`): no data, one map row
    /// each.
    pub(super) fn zero(&self, chunks: Range<u64>) -> Result<()> {
        let _guard = self.writeback.lock().expect("write-back lock");
        self.buffer.drop_range(chunks.clone());
        let mut at = chunks.start;
        while at < chunks.end {
            let to = (at + ZERO_BATCH).min(chunks.end);
            let changes: Vec<(u64, MapEntry)> = (at..to).map(|i| (i, MapEntry::Zero)).collect();
            self.store
                .commit_volume(&self.name, &changes, Vec::new(), false)
                .map_err(|e| self.store_error(e))?;
            at = to;
        }
        Ok(())
    }
}
