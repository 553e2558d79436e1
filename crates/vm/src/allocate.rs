//! Allocation: chunk, deduplicate against the whole seed domain, compress, stage, commit.
//!
//! Input is consumed in batches of a few MiB: each batch's chunks are hashed and, when new,
//! compressed (and encrypted) on all cores, then staged in the store. The manifest is committed
//! at the end, so memory stays bounded by a batch whatever the block's size, and a failure at
//! any point (bad input, full disk, capacity) leaves nothing visible.

use std::collections::HashMap;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use aetherflow_engine::chunking::{split, Chunker};
use aetherflow_engine::codec::{is_zero, ChunkEncoder};
use aetherflow_engine::crypto::{ChunkId, Keys, NonceSource, Seed};
use aetherflow_store::{BlockId, Checksum, Extent, Manifest, NewChunk};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::VirtualMemory;

/// Input bytes chunked before a batch is encoded: enough to keep both cores busy.
const BATCH_BYTES: usize = 4 << 20;

/// Where an allocation's bytes come from.
enum Input<'a, R> {
    /// Held whole in memory: cut in place.
    Memory(&'a [u8]),
    /// A reader known to hold at most one batch.
    Small(R),
    /// A reader of any length: cut on a thread of its own.
    Stream(R),
}

/// Cuts the next batch of about [`BATCH_BYTES`]; `true` with the last one.
fn next_batch(chunker: &mut Chunker<impl Read>) -> std::io::Result<(Vec<Vec<u8>>, bool)> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while bytes < BATCH_BYTES {
        match chunker.next_chunk()? {
            Some(chunk) => {
                bytes += chunk.len();
                batch.push(chunk);
            }
            None => return Ok((batch, true)),
        }
    }
    Ok((batch, false))
}

/// Nonce under which manifest version 1 sealed a block's checksum. A caller may choose a block id
/// (import), so new checksums are sealed under a random nonce instead; this one only reads.
pub(crate) fn legacy_checksum_nonce(id: BlockId) -> [u8; 24] {
    let mut nonce = [0u8; 24];
    nonce[..16].copy_from_slice(id.0.as_bytes());
    nonce[16..].copy_from_slice(b"checksum");
    nonce
}

impl VirtualMemory {
    /// Stores `data` as a new block; durable when this returns (durable backends).
    pub fn allocate(&self, data: &[u8], seed: Option<&Seed>) -> Result<BlockId> {
        let id = BlockId::random();
        let size = data.len() as u64;
        self.reserve(size)?;
        let mut reserved = size;
        let result = self.allocate_reserved(id, Input::<&[u8]>::Memory(data), seed, &mut reserved);
        self.release(reserved);
        result.map(|()| id)
    }

    /// Stores everything `input` yields as a new block, in bounded memory. `size_hint` lets an
    /// allocation that cannot fit be refused before any byte is read.
    pub fn allocate_from(
        &self,
        input: impl Read + Send,
        size_hint: Option<u64>,
        seed: Option<&Seed>,
    ) -> Result<BlockId> {
        let id = BlockId::random();
        self.allocate_under(id, input, size_hint, seed)?;
        Ok(id)
    }

    /// Stores a block under a chosen id (import keeps ids); fails if the id is taken, here or
    /// (on a shared store) by another server.
    pub fn allocate_as(
        &self,
        id: BlockId,
        input: impl Read + Send,
        size_hint: Option<u64>,
        seed: Option<&Seed>,
    ) -> Result<()> {
        self.store
            .reserve_block(id)
            .map_err(|e| Error::from_store(id, e))?;
        let result = self.allocate_under(id, input, size_hint, seed);
        if result.is_err() {
            self.store.unreserve_block(id);
        }
        result
    }

    fn allocate_under(
        &self,
        id: BlockId,
        input: impl Read + Send,
        size_hint: Option<u64>,
        seed: Option<&Seed>,
    ) -> Result<()> {
        let hint = size_hint.unwrap_or(0);
        self.reserve(hint)?;
        let mut reserved = hint;
        let input = if size_hint.is_some_and(|n| n <= BATCH_BYTES as u64) {
            Input::Small(input)
        } else {
            Input::Stream(input)
        };
        let result = self.allocate_reserved(id, input, seed, &mut reserved);
        self.release(reserved);
        result
    }

    fn allocate_reserved(
        &self,
        id: BlockId,
        input: Input<'_, impl Read + Send>,
        seed: Option<&Seed>,
        reserved: &mut u64,
    ) -> Result<()> {
        let domain = seed
            .map(|s| self.domains.for_new_blocks(s, self.config.kdf))
            .transpose()?;
        let keys = domain.as_ref().map(|d| &d.keys);
        let _pin = self.store.pin();
        let gear_seed = keys.map_or(0, |k| k.gear_seed());
        let chunking = self.config.chunking;
        let mut builder = BlockBuilder::default();
        let mut sha = Sha256::new();
        let mut process = |batch: &[&[u8]]| -> Result<()> {
            let size = builder.size + batch.iter().map(|c| c.len() as u64).sum::<u64>();
            if size > *reserved {
                self.reserve(size - *reserved)?;
                *reserved = size;
            }
            let (_, encoded) = rayon::join(
                || batch.iter().for_each(|c| sha.update(c)),
                || self.encode_batch(batch, keys, &mut builder),
            );
            builder.staged.extend(self.store.stage_chunks(&encoded?)?);
            Ok(())
        };
        match input {
            Input::Memory(data) => {
                // Cut in place: chunks are borrowed slices, never copied.
                let cuts = split(data, chunking, gear_seed);
                let mut start = 0;
                while start < cuts.len() {
                    let mut end = start;
                    let mut bytes = 0;
                    while end < cuts.len() && bytes < BATCH_BYTES {
                        bytes += cuts[end].len();
                        end += 1;
                    }
                    let batch: Vec<&[u8]> =
                        cuts[start..end].iter().map(|r| &data[r.clone()]).collect();
                    process(&batch)?;
                    start = end;
                }
            }
            Input::Small(input) => {
                // One batch: no pipeline to fill.
                let mut chunker = Chunker::new(input, chunking, gear_seed);
                loop {
                    let (batch, done) = next_batch(&mut chunker)?;
                    process(&batch.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
                    if done {
                        break;
                    }
                }
            }
            Input::Stream(input) => {
                // The next batch is read and cut on a thread of its own while this one is
                // hashed, compressed and staged.
                let mut chunker = Chunker::new(input, chunking, gear_seed);
                std::thread::scope(|scope| -> Result<()> {
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    scope.spawn(move || loop {
                        let next = next_batch(&mut chunker);
                        let last = next.as_ref().map_or(true, |(_, done)| *done);
                        if tx.send(next).is_err() || last {
                            break;
                        }
                    });
                    for next in rx {
                        let (batch, done) = next?;
                        process(&batch.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
                        if done {
                            break;
                        }
                    }
                    Ok(())
                })?;
            }
        }
        let digest: [u8; 32] = sha.finalize().into();
        let checksum = match &domain {
            None => Checksum::Plain(digest),
            Some(d) => {
                let mut nonce = [0u8; 24];
                getrandom::getrandom(&mut nonce)
                    .map_err(|e| Error::Internal(format!("no system randomness: {e}")))?;
                let mut sealed = digest.to_vec();
                d.keys.seal_meta(&nonce, &mut sealed);
                Checksum::Sealed {
                    nonce,
                    sealed: sealed.try_into().expect("32 bytes and a 16-byte tag"),
                }
            }
        };
        let manifest = Manifest {
            size: builder.size,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            checksum,
            seed: domain.as_ref().map(|d| d.binding),
            extents: builder.extents,
        };
        self.store
            .commit_block(id, &manifest, builder.staged)
            .map_err(|e| Error::from_store(id, e))
    }

    /// Hashes a batch, finds what the store already holds, and encodes the rest in parallel.
    fn encode_batch(
        &self,
        batch: &[&[u8]],
        keys: Option<&std::sync::Arc<Keys>>,
        builder: &mut BlockBuilder,
    ) -> Result<Vec<NewChunk>> {
        let ids: Vec<Option<ChunkId>> = batch
            .par_iter()
            .map(|c| (!is_zero(c)).then(|| ChunkId::of(keys.map(|k| &**k), c)))
            .collect();
        let mut unknown: Vec<ChunkId> = ids
            .iter()
            .flatten()
            .filter(|id| !builder.known.contains_key(*id))
            .copied()
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        for (id, info) in unknown.iter().zip(self.store.find_chunks(&unknown)?) {
            if let Some(info) = info {
                builder.known.insert(*id, info.stored_len);
            }
        }
        // The first occurrence of each chunk not held anywhere is encoded.
        let mut to_encode = Vec::new();
        let mut claimed = std::collections::HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                if !builder.known.contains_key(id) && claimed.insert(*id) {
                    to_encode.push((i, *id));
                }
            }
        }
        let level = self.config.level;
        let new_chunks: Vec<NewChunk> = to_encode
            .par_iter()
            .map_init(
                // One key seals a domain's chunks for ever: nonces come from the payload.
                || ChunkEncoder::with_nonce(level, keys.cloned(), NonceSource::Stored),
                |encoder, &(i, id)| {
                    let encoder = encoder
                        .as_mut()
                        .map_err(|e| Error::Internal(format!("chunk encoder: {e}")))?;
                    let e = encoder
                        .encode_for_store(batch[i], id)
                        .map_err(Error::from_encoder)?;
                    Ok(NewChunk::new(
                        id,
                        e.codec,
                        keys.is_some(),
                        e.raw_len,
                        e.payload.into(),
                    ))
                },
            )
            .collect::<Result<_>>()?;
        for c in &new_chunks {
            builder.known.insert(c.id, c.payload.len() as u32);
        }
        for (chunk, id) in batch.iter().zip(&ids) {
            builder.push(chunk.len() as u64, id.map(|id| (id, builder.known[&id])));
        }
        Ok(new_chunks)
    }
}

/// The manifest and staged chunks of the block being allocated.
#[derive(Default)]
struct BlockBuilder {
    size: u64,
    extents: Vec<Extent>,
    staged: Vec<aetherflow_store::StagedChunk>,
    /// Chunks this block can refer to (held by the store or staged here), with stored sizes.
    known: HashMap<ChunkId, u32>,
}

impl BlockBuilder {
    /// Appends one chunk: a zero run (merged with one before it) or a stored chunk.
    fn push(&mut self, len: u64, chunk: Option<(ChunkId, u32)>) {
        self.size += len;
        match chunk {
            None => {
                if let Some(Extent::Zero { len: run }) = self.extents.last_mut() {
                    *run += len;
                } else {
                    self.extents.push(Extent::Zero { len });
                }
            }
            Some((id, stored_len)) => self.extents.push(Extent::Chunk {
                id,
                raw_len: len as u32,
                stored_len,
            }),
        }
    }
}
