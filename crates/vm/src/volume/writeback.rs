//! Writing the buffer back: buffered chunks identified, deduplicated against the whole seed
//! domain, compressed and sealed on all cores, staged, and the map committed in one
//! transaction; then the entries committed leave the buffer. Range changes (trims and zeroes
//! of whole chunks) go to the map here too, under the same lock, so that map changes happen in
//! the order the writes were answered.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::MutexGuard;

use aetherflow_engine::codec::{is_zero, ChunkEncoder};
use aetherflow_engine::crypto::{ChunkId, NonceSource};
use aetherflow_store::{MapEntry, NewChunk};
use bytes::Bytes;
use rayon::prelude::*;

use super::buffer::Pending;
use super::Volume;
use crate::error::{Error, Result};

/// Plaintext bytes written back per transaction: a large buffer goes in parts, so that a
/// store with little room left still takes what fits, and memory for the encoded chunks stays
/// small.
const BATCH_BYTES: u64 = 16 << 20;

/// Zero entries committed per transaction by [`Volume::zero`].
const ZERO_BATCH: u64 = 64 * 1024;

impl Volume {
    /// Commits everything buffered now; with `durable`, this and every commit before it is
    /// durable when this returns. The caller holds the write-back lock.
    pub(super) fn write_back(&self, _lock: &MutexGuard<'_, ()>, durable: bool) -> Result<()> {
        let snapshot = self.buffer.snapshot();
        if !snapshot.is_empty() {
            let pin = self.store.pin();
            let batch = (BATCH_BYTES / u64::from(self.chunk_size)).max(1) as usize;
            for part in snapshot.chunks(batch) {
                self.commit_batch(part)?;
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

    /// Writes back part of the buffer: its chunks stored, its map rows committed (with relaxed
    /// durability), its entries out of the buffer.
    fn commit_batch(&self, snapshot: &[(u64, Pending, u64)]) -> Result<()> {
        let keys = self.keys.as_deref();
        // Each data chunk's identity (or zero), on all cores.
        let entries: Vec<(u64, Option<(ChunkId, &Bytes)>)> = snapshot
            .par_iter()
            .map(|(index, content, _)| match content {
                Pending::Data(b) if !is_zero(b) => (*index, Some((ChunkId::of(keys, b), b))),
                _ => (*index, None),
            })
            .collect();
        let mut distinct: HashMap<ChunkId, &Bytes> = HashMap::new();
        for (_, chunk) in &entries {
            if let Some((id, data)) = chunk {
                distinct.entry(*id).or_insert(data);
            }
        }
        let ids: Vec<ChunkId> = distinct.keys().copied().collect();
        let found = self
            .store
            .find_chunks(&ids)
            .map_err(|e| self.store_error(e))?;
        let mut stored_len: HashMap<ChunkId, u32> = HashMap::new();
        let mut new = Vec::new();
        for (id, info) in ids.iter().zip(found) {
            match info {
                Some(info) => {
                    stored_len.insert(*id, info.stored_len);
                }
                None => new.push((*id, distinct[id])),
            }
        }
        let level = self.level;
        let sealing = self.keys.clone();
        let encoded: Vec<NewChunk> = new
            .par_iter()
            .map_init(
                // One key seals a domain's chunks for ever: nonces come from the payload.
                || ChunkEncoder::with_nonce(level, sealing.clone(), NonceSource::Stored),
                |encoder, (id, data)| -> Result<NewChunk> {
                    let encoder = encoder
                        .as_mut()
                        .map_err(|e| Error::Internal(format!("chunk encoder: {e}")))?;
                    let e = encoder.encode(data, *id).map_err(Error::from_encoder)?;
                    Ok(NewChunk {
                        id: *id,
                        codec: e.codec,
                        nonce_stored: sealing.is_some(),
                        raw_len: e.raw_len,
                        payload: e.payload.into(),
                    })
                },
            )
            .collect::<Result<_>>()?;
        for c in &encoded {
            stored_len.insert(c.id, c.payload.len() as u32);
        }
        let staged = self
            .store
            .stage_chunks(&encoded)
            .map_err(|e| self.store_error(e))?;
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
        self.store
            .commit_volume(&self.name, &changes, staged, false)
            .map_err(|e| self.store_error(e))?;
        // What was just written is what is read next, often: keep it decoded.
        for (id, data) in &distinct {
            self.cache.insert_chunk(*id, (*data).clone());
        }
        let done: Vec<(u64, u64)> = snapshot.iter().map(|(i, _, g)| (*i, *g)).collect();
        self.buffer.committed(&done);
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
