//! Writing the buffer back: buffered chunks gathered into what is stored (a group written whole
//! together as one, any other chunk on its own), identified, deduplicated against the whole
//! seed domain, compressed and sealed on all cores, staged, and the map committed in one
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

/// What one stored chunk of a write-back covers: the buffered chunks whose map rows will name
/// it, in order.
struct Piece<'a> {
    members: &'a [Taken],
}

impl Piece<'_> {
    /// Whether the piece patches content the store held (see [`REWRITE_LEVEL`]).
    fn rewrite(&self) -> bool {
        self.members.iter().any(|t| t.rewrite)
    }

    /// The piece's content, `None` for a zero chunk.
    fn content(&self) -> Option<Bytes> {
        match self.members {
            [one] => match &one.content {
                Pending::Data(b) if !is_zero(b) => Some(b.clone()),
                _ => None,
            },
            several => {
                let mut joined = Vec::with_capacity(
                    several
                        .iter()
                        .map(|t| match &t.content {
                            Pending::Data(b) => b.len(),
                            Pending::Zero => 0,
                        })
                        .sum(),
                );
                for t in several {
                    if let Pending::Data(b) = &t.content {
                        joined.extend_from_slice(b);
                    }
                }
                Some(Bytes::from(joined))
            }
        }
    }
}

/// A buffer snapshot (in index order) cut into pieces: an aligned group of `group` chunks
/// all buffered with fresh data (written whole, not patched, none zero) is one piece, any
/// other chunk a piece of its own. `chunks` is the volume's chunk count (its last group may be
/// short).
fn pieces(snapshot: &[Taken], group: u64, chunks: u64) -> Vec<Piece<'_>> {
    let mut out = Vec::with_capacity(snapshot.len());
    let mut at = 0;
    while at < snapshot.len() {
        let first = snapshot[at].index;
        let n = if group > 1 && first % group == 0 {
            (first + group).min(chunks) - first
        } else {
            1
        } as usize;
        let whole_group = n > 1
            && snapshot.len() - at >= n
            && snapshot[at..at + n].iter().enumerate().all(|(k, t)| {
                t.index == first + k as u64 && !t.rewrite && matches!(t.content, Pending::Data(_))
            });
        let take = if whole_group { n } else { 1 };
        out.push(Piece {
            members: &snapshot[at..at + take],
        });
        at += take;
    }
    out
}

/// `pieces` cut into batches of about `chunks` buffered chunks each (a piece is never split).
fn batches<'p, 'a>(pieces: &'p [Piece<'a>], chunks: usize) -> Vec<&'p [Piece<'a>]> {
    let mut out = Vec::new();
    let (mut start, mut held) = (0, 0);
    for (i, p) in pieces.iter().enumerate() {
        held += p.members.len();
        if held >= chunks {
            out.push(&pieces[start..=i]);
            (start, held) = (i + 1, 0);
        }
    }
    if start < pieces.len() {
        out.push(&pieces[start..]);
    }
    out
}

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
        let started = std::time::Instant::now();
        let mut encoded = 0usize;
        if !snapshot.is_empty() {
            let pin = self.store.pin();
            let chunks = self.size.div_ceil(u64::from(self.chunk_size));
            let pieces = pieces(&snapshot, self.group, chunks);
            // At least four batches to a full buffer, so that the two stages overlap.
            let batch_bytes = BATCH_BYTES.min(self.limit / 4);
            let batch_chunks = (batch_bytes / u64::from(self.chunk_size)).max(1) as usize;
            let mut previous: Option<Prepared> = None;
            for part in batches(&pieces, batch_chunks) {
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
                let prepared = prepared?;
                encoded += prepared.encoded.len();
                previous = Some(prepared);
            }
            if let Some(last) = previous {
                self.commit_batch(last)?;
            }
            // Chunks the commits released go at the next sync (the pin kept them).
            drop(pin);
            tracing::debug!(
                "volume {}: wrote back {} chunks ({encoded} stored anew) in {:?}",
                self.name,
                snapshot.len(),
                started.elapsed()
            );
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
        pieces: &[Piece<'_>],
        staging: &HashMap<ChunkId, u32>,
    ) -> Result<Prepared> {
        let keys = self.keys.as_deref();
        // Each piece's content and identity (or zero), on all cores.
        let entries: Vec<Option<(ChunkId, Bytes)>> = pieces
            .par_iter()
            .map(|p| p.content().map(|b| (ChunkId::of(keys, &b), b)))
            .collect();
        // Distinct contents, each with its level: a rewrite's if every copy of it is one.
        let rewrite_level = self.level.min(REWRITE_LEVEL);
        let mut distinct: HashMap<ChunkId, (&Bytes, i32)> = HashMap::new();
        // In the order of the volume, so that the new chunks lie in their pack in the order a
        // sequential reader asks for them (one ranged GET fetches a run of them).
        let mut in_order: Vec<ChunkId> = Vec::new();
        for (chunk, piece) in entries.iter().zip(pieces) {
            if let Some((id, data)) = chunk {
                let level = if piece.rewrite() {
                    rewrite_level
                } else {
                    self.level
                };
                let slot = distinct.entry(*id).or_insert_with(|| {
                    in_order.push(*id);
                    (data, level)
                });
                slot.1 = slot.1.max(level);
            }
        }
        let mut stored_len: HashMap<ChunkId, u32> = HashMap::new();
        let mut ids: Vec<ChunkId> = Vec::new();
        for id in &in_order {
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
            .zip(pieces)
            .flat_map(|(chunk, piece)| {
                let entry = match chunk {
                    Some((id, _)) => MapEntry::Chunk {
                        id: *id,
                        stored_len: stored_len[id],
                    },
                    None => MapEntry::Zero,
                };
                piece.members.iter().map(move |t| (t.index, entry))
            })
            .collect();
        Ok(Prepared {
            changes,
            encoded,
            decoded: distinct
                .into_iter()
                .map(|(id, (data, _))| (id, data.clone()))
                .collect(),
            done: pieces
                .iter()
                .flat_map(|p| p.members.iter().map(|t| (t.index, t.generation)))
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(index: u64, content: Pending, rewrite: bool) -> Taken {
        Taken {
            index,
            content,
            generation: index,
            rewrite,
        }
    }

    fn data(index: u64) -> Taken {
        taken(
            index,
            Pending::Data(Bytes::from(vec![index as u8 + 1; 4])),
            false,
        )
    }

    fn cut(snapshot: &[Taken], group: u64, chunks: u64) -> Vec<Vec<u64>> {
        pieces(snapshot, group, chunks)
            .iter()
            .map(|p| p.members.iter().map(|t| t.index).collect())
            .collect()
    }

    #[test]
    fn only_whole_groups_of_fresh_data_are_stored_as_one() {
        let snapshot = vec![
            data(0),
            data(1),
            data(2),
            data(3),
            // A patched chunk breaks its group, and so does a missing one (7).
            taken(4, Pending::Data(Bytes::from_static(b"p")), true),
            data(5),
            data(6),
            data(8),
            taken(9, Pending::Zero, false),
            data(10),
            data(11),
            // Not aligned: 13..17 is no group.
            data(13),
            data(14),
            data(15),
            data(16),
            // The volume's last group is short: 20 and 21.
            data(20),
            data(21),
        ];
        assert_eq!(
            cut(&snapshot, 4, 22),
            [
                vec![0, 1, 2, 3],
                vec![4],
                vec![5],
                vec![6],
                vec![8],
                vec![9],
                vec![10],
                vec![11],
                vec![13],
                vec![14],
                vec![15],
                vec![16],
                vec![20, 21],
            ]
        );
        // Chunks of the group size or larger: every chunk alone.
        assert_eq!(cut(&snapshot[..4], 1, 22).len(), 4);
        let group = &pieces(&snapshot, 4, 22)[0];
        assert_eq!(
            group.content().unwrap(),
            Bytes::from([[1u8; 4], [2; 4], [3; 4], [4; 4]].concat())
        );
        assert!(!group.rewrite());
        assert_eq!(pieces(&snapshot, 4, 22)[5].content(), None, "zero chunk");
        let all = pieces(&snapshot, 4, 22);
        let sizes = |b: Vec<&[Piece<'_>]>| -> Vec<usize> {
            b.iter()
                .map(|p| p.iter().map(|p| p.members.len()).sum())
                .collect()
        };
        assert_eq!(sizes(batches(&all, 5)), [5, 5, 5, 2]);
        assert_eq!(sizes(batches(&all, 100)), [17]);
    }
}
