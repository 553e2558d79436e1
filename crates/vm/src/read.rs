//! Reading: whole blocks through the cache, or streamed and by range for blocks of any size.
//!
//! Every chunk is checked three ways before its bytes are used: the store's payload check, the
//! codec (authentication tag when seeded), and the chunk identity recomputed from the plaintext.
//! A whole read also checks the block's SHA-256 before returning anything.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use aetherflow_engine::codec::ChunkDecoder;
use aetherflow_engine::crypto::{ChunkId, Keys, NonceSource, Seed};
use aetherflow_store::{BlockId, Checksum, Extent, Manifest};
use bytes::Bytes;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::allocate::legacy_checksum_nonce;
use crate::cache::CachedBlock;
use crate::error::{Error, Result};
use crate::keys::Domain;
use crate::VirtualMemory;

/// Chunks decoded together when streaming: enough to keep both cores busy, few enough to bound
/// memory (at most this many maximum-size chunks).
const STREAM_BATCH: usize = 8;

/// Whether a streamed whole read may keep the block in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caching {
    Keep,
    Skip,
}

/// What a streamed read delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSummary {
    /// Bytes written.
    pub bytes: u64,
    /// The block's size.
    pub size: u64,
    /// True when the whole block was read and its SHA-256 matched (ranges check chunk
    /// identities only).
    pub whole_checked: bool,
}

impl VirtualMemory {
    /// The block's bytes, verified. A hit in the cache returns shared bytes without decompressing;
    /// the seed is checked on hits too.
    pub fn read(&self, id: BlockId, seed: Option<&Seed>) -> Result<Bytes> {
        if self.store.known_gone(id) {
            // Freed by another server sharing the store: nothing cached of it may be served.
            self.cache.remove(&id);
        } else if let Some(hit) = self.cache.get(&id) {
            self.authorize(id, hit.seed.as_ref(), seed)?;
            self.count_access(id);
            return Ok(hit.data);
        }
        let manifest = self.manifest_of(id)?;
        let domain = self.authorize(id, manifest.seed.as_ref(), seed)?;
        if manifest.size > self.config.max_whole_read {
            return Err(Error::TooLarge {
                id,
                size: manifest.size,
                limit: self.config.max_whole_read,
            });
        }
        let mut out = vec![0u8; manifest.size as usize];
        let keys = domain.as_ref().map(|d| Arc::clone(&d.keys));
        // Split the output into one slice per extent. Chunks are decoded a wave at a time on all
        // cores while the previous wave is hashed, so the SHA-256 costs little extra time.
        let mut slices = Vec::with_capacity(manifest.extents.len());
        let mut rest = &mut out[..];
        for e in &manifest.extents {
            let (head, tail) = rest.split_at_mut(e.len() as usize);
            slices.push((e, head));
            rest = tail;
        }
        let wave_len = rayon::current_num_threads().max(2);
        // A remote store fetches them all at once while the waves decode.
        self.store
            .prefetch(&manifest.chunk_refs().copied().collect::<Vec<_>>());
        let mut sha = Sha256::new();
        // Waves are [previous_start, start) (decoded, to hash) and [start, start + wave_end).
        let (mut previous_start, mut start) = (0, 0);
        loop {
            let (done, todo) = slices.split_at_mut(start);
            let previous = &done[previous_start..];
            let wave_end = todo.len().min(wave_len);
            let wave = &mut todo[..wave_end];
            let ((), decoded) = rayon::join(
                || previous.iter().for_each(|(_, s)| sha.update(&**s)),
                || {
                    wave.par_iter_mut().try_for_each_init(
                        || ChunkDecoder::new(keys.clone()),
                        |decoder, (extent, slice)| -> Result<()> {
                            if let Extent::Chunk { id: chunk, .. } = extent {
                                let decoder = decoder
                                    .as_mut()
                                    .map_err(|e| Error::Internal(format!("chunk decoder: {e}")))?;
                                let plain =
                                    self.decode_chunk(id, chunk, decoder, keys.as_deref())?;
                                if plain.len() != slice.len() {
                                    return Err(corrupt(
                                        id,
                                        "chunk length differs from the manifest",
                                    ));
                                }
                                slice.copy_from_slice(&plain);
                            }
                            Ok(())
                        },
                    )
                },
            );
            decoded?;
            if wave_end == 0 {
                break;
            }
            previous_start = start;
            start += wave_end;
        }
        let digest: [u8; 32] = sha.finalize().into();
        self.check_digest(id, &manifest, domain.as_deref(), digest)?;
        let data = Bytes::from(out);
        if !self.keep(id, data.clone(), manifest.seed) {
            return Err(Error::NotFound(id));
        }
        self.count_access(id);
        Ok(data)
    }

    /// Caches a verified block; `false` (and nothing cached) if it was freed meanwhile. A free
    /// removes the block from the cache after the store, so checking the store after inserting
    /// leaves no freed block cached.
    fn keep(&self, id: BlockId, data: Bytes, seed: Option<aetherflow_store::SeedBinding>) -> bool {
        self.cache.insert(id, CachedBlock { data, seed });
        if matches!(
            self.store.manifest(id),
            Err(aetherflow_store::Error::NotFound(_))
        ) {
            self.cache.remove(&id);
            return false;
        }
        true
    }

    /// A cache hit answered without blocking: `None` when the block is not cached (or its seed's
    /// keys are not derived yet), so the caller takes the slow path ([`VirtualMemory::read`]) on
    /// a thread that may block. Seeds are checked exactly as [`VirtualMemory::read`] does.
    pub fn read_if_cached(&self, id: BlockId, seed: Option<&Seed>) -> Option<Result<Bytes>> {
        let hit = self.cache.peek(&id)?;
        if self.store.known_gone(id) {
            // Freed by another server sharing the store.
            self.cache.remove(&id);
            return None;
        }
        if let Some(binding) = &hit.seed {
            let Some(seed) = seed else {
                return Some(Err(Error::SeedRequired(id)));
            };
            let domain = self.domains.get_cached(seed, binding.kdf)?;
            if !crate::keys::matches(&domain, binding) {
                return Some(Err(Error::WrongSeed(id)));
            }
        }
        self.cache.count_hit();
        self.count_access_in_memory(id);
        Some(Ok(hit.data))
    }

    /// Streams the block (or `range` of it) to `out` in bounded memory. For a whole read the
    /// SHA-256 is checked at the end: bytes already written cannot be taken back, so on
    /// [`Error::Corrupt`] the receiver must discard them (the server aborts the response).
    ///
    /// A cached block is written from the cache. A whole read of a block small enough for the
    /// cache ([`BlockCache::admits`]) keeps a copy as the stream passes and caches it once its
    /// SHA-256 is checked, so that the next read decompresses nothing.
    pub fn read_to(
        &self,
        id: BlockId,
        seed: Option<&Seed>,
        range: Option<Range<u64>>,
        out: &mut dyn Write,
    ) -> Result<ReadSummary> {
        if self.store.known_gone(id) {
            self.cache.remove(&id);
        } else if let Some(hit) = self.cache.get(&id) {
            self.authorize(id, hit.seed.as_ref(), seed)?;
            let size = hit.data.len() as u64;
            let range = range.unwrap_or(0..size);
            if range.start > range.end || range.end > size {
                return Err(out_of_block(id, &range, size));
            }
            out.write_all(&hit.data[range.start as usize..range.end as usize])?;
            self.count_access(id);
            return Ok(ReadSummary {
                bytes: range.end - range.start,
                size,
                whole_checked: true,
            });
        }
        let summary = self.stream(id, seed, range, out, Caching::Keep)?;
        self.count_access(id);
        Ok(summary)
    }

    /// [`VirtualMemory::read_to`] without counting a read; checks and exports, which visit
    /// every block once, pass [`Caching::Skip`] so as not to push out what clients read.
    pub(crate) fn stream(
        &self,
        id: BlockId,
        seed: Option<&Seed>,
        range: Option<Range<u64>>,
        out: &mut dyn Write,
        caching: Caching,
    ) -> Result<ReadSummary> {
        let manifest = self.manifest_of(id)?;
        let domain = self.authorize(id, manifest.seed.as_ref(), seed)?;
        let whole = 0..manifest.size;
        let range = range.unwrap_or(whole.clone());
        if range.start > range.end || range.end > manifest.size {
            return Err(out_of_block(id, &range, manifest.size));
        }
        let checking = range == whole;
        // A whole block that the cache would keep is kept as it passes (bounded by the cache's
        // admission size), and cached once its SHA-256 is checked.
        let mut kept = (caching == Caching::Keep && checking && self.cache.admits(manifest.size))
            .then(|| Vec::with_capacity(manifest.size as usize));
        let keys = domain.as_ref().map(|d| Arc::clone(&d.keys));
        let mut sha = Sha256::new();
        // (extent, the part of it wanted), in order.
        let mut wanted = Vec::new();
        let mut at = 0u64;
        for e in &manifest.extents {
            let span = at..at + e.len();
            let lo = span.start.max(range.start);
            let hi = span.end.min(range.end);
            if lo < hi {
                wanted.push((*e, (lo - at) as usize..(hi - at) as usize));
            }
            at = span.end;
        }
        let zeros = vec![0u8; 1 << 20];
        let mut written = 0u64;
        let ids_of = |batch: &[(Extent, Range<usize>)]| -> Vec<ChunkId> {
            batch
                .iter()
                .filter_map(|(e, _)| match e {
                    Extent::Chunk { id, .. } => Some(*id),
                    Extent::Zero { .. } => None,
                })
                .collect()
        };
        let batches: Vec<&[(Extent, Range<usize>)]> = wanted.chunks(STREAM_BATCH).collect();
        for (i, batch) in batches.iter().enumerate() {
            // A remote store fetches this batch and the next while this one decodes.
            let ahead = batches[i..batches.len().min(i + 2)].concat();
            self.store.prefetch(&ids_of(&ahead));
            let decoded: Vec<Option<Vec<u8>>> = batch
                .par_iter()
                .map_init(
                    || ChunkDecoder::new(keys.clone()),
                    |decoder, (extent, _)| -> Result<Option<Vec<u8>>> {
                        let Extent::Chunk { id: chunk, .. } = extent else {
                            return Ok(None);
                        };
                        let decoder = decoder
                            .as_mut()
                            .map_err(|e| Error::Internal(format!("chunk decoder: {e}")))?;
                        self.decode_chunk(id, chunk, decoder, keys.as_deref())
                            .map(Some)
                    },
                )
                .collect::<Result<_>>()?;
            for ((_, part), plain) in batch.iter().zip(decoded) {
                match plain {
                    Some(plain) => {
                        let piece = plain
                            .get(part.clone())
                            .ok_or_else(|| corrupt(id, "chunk shorter than the manifest says"))?;
                        if checking {
                            sha.update(piece);
                        }
                        if let Some(kept) = &mut kept {
                            kept.extend_from_slice(piece);
                        }
                        out.write_all(piece)?;
                    }
                    None => {
                        let mut left = part.len();
                        while left > 0 {
                            let n = left.min(zeros.len());
                            if checking {
                                sha.update(&zeros[..n]);
                            }
                            if let Some(kept) = &mut kept {
                                kept.extend_from_slice(&zeros[..n]);
                            }
                            out.write_all(&zeros[..n])?;
                            left -= n;
                        }
                    }
                }
                written += part.len() as u64;
            }
        }
        if checking {
            self.check_digest(id, &manifest, domain.as_deref(), sha.finalize().into())?;
        }
        if let Some(kept) = kept {
            self.keep(id, Bytes::from(kept), manifest.seed);
        }
        Ok(ReadSummary {
            bytes: written,
            size: manifest.size,
            whole_checked: checking,
        })
    }

    /// The manifest of a block, after checking the seed (for callers that need the size first).
    pub fn block_size(&self, id: BlockId, seed: Option<&Seed>) -> Result<u64> {
        let manifest = self.manifest_of(id)?;
        self.authorize(id, manifest.seed.as_ref(), seed)?;
        Ok(manifest.size)
    }

    pub(crate) fn manifest_of(&self, id: BlockId) -> Result<Manifest> {
        self.store
            .manifest(id)
            .map_err(|e| Error::from_store(id, e))
    }

    /// Fetches, decodes and verifies one chunk of `block`.
    fn decode_chunk(
        &self,
        block: BlockId,
        chunk: &ChunkId,
        decoder: &mut ChunkDecoder,
        keys: Option<&Keys>,
    ) -> Result<Vec<u8>> {
        let stored = self
            .store
            .chunk(chunk)
            .map_err(|e| Error::from_store(block, e))?;
        open_stored(&stored, chunk, decoder, keys).map_err(|e| Error::from_engine(block, e))
    }

    fn check_digest(
        &self,
        id: BlockId,
        manifest: &Manifest,
        domain: Option<&Domain>,
        digest: [u8; 32],
    ) -> Result<()> {
        let expected = expected_digest(id, manifest, domain)?;
        if expected != digest {
            return Err(corrupt(id, "SHA-256 of the content does not match"));
        }
        Ok(())
    }
}

/// Opens a chunk as the store returned it (its payload already checked against the store's
/// own check): decrypts it under the nonce it was sealed with, decompresses it, and checks the
/// plaintext against its identity. Shared by blocks and volumes.
pub(crate) fn open_stored(
    stored: &aetherflow_store::StoredChunk,
    chunk: &ChunkId,
    decoder: &mut ChunkDecoder,
    keys: Option<&Keys>,
) -> aetherflow_engine::Result<Vec<u8>> {
    let info = stored.info;
    let nonce = if info.nonce_stored {
        NonceSource::Stored
    } else {
        NonceSource::Identity
    };
    let plain = decoder.open_payload(info.codec, info.raw_len, chunk, &stored.payload, nonce)?;
    if ChunkId::of(keys, &plain) != *chunk {
        return Err(aetherflow_engine::Error::Corrupt(
            "a chunk does not match its identity".into(),
        ));
    }
    Ok(plain)
}

/// The SHA-256 a block must have: plain, or opened with the seed's keys.
pub(crate) fn expected_digest(
    id: BlockId,
    manifest: &Manifest,
    domain: Option<&Domain>,
) -> Result<[u8; 32]> {
    match (&manifest.checksum, domain) {
        (Checksum::Plain(d), _) => Ok(*d),
        (Checksum::Sealed { nonce, sealed }, Some(domain)) => {
            open_digest(id, domain, nonce, sealed)
        }
        (Checksum::SealedById(sealed), Some(domain)) => {
            open_digest(id, domain, &legacy_checksum_nonce(id), sealed)
        }
        (Checksum::Sealed { .. } | Checksum::SealedById(_), None) => Err(Error::SeedRequired(id)),
    }
}

fn open_digest(id: BlockId, domain: &Domain, nonce: &[u8; 24], sealed: &[u8]) -> Result<[u8; 32]> {
    let mut buf = sealed.to_vec();
    domain
        .keys
        .open_meta(nonce, &mut buf)
        .map_err(|_| corrupt(id, "sealed checksum does not open"))?;
    buf.try_into()
        .map_err(|_| corrupt(id, "sealed checksum has the wrong length"))
}

fn out_of_block(id: BlockId, range: &Range<u64>, size: u64) -> Error {
    Error::InvalidArgument(format!(
        "range {}..{} is outside block {id} of {size} bytes",
        range.start, range.end
    ))
}

fn corrupt(block: BlockId, what: &str) -> Error {
    Error::Corrupt {
        block,
        what: what.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, VmConfig};
    use aetherflow_engine::codec::ChunkEncoder;
    use aetherflow_store::NewChunk;

    /// A block written as format 1 wrote seeded blocks: chunks sealed under their identity as
    /// nonce, the checksum under a nonce made from the block id. It must still read.
    #[test]
    fn blocks_sealed_by_format_1_still_read() {
        let mut config = VmConfig::new(Backend::Memory);
        config.kdf = aetherflow_engine::KdfParams::MINIMUM;
        let vm = VirtualMemory::open(config).unwrap();
        let seed = Seed::new("legacy").unwrap();
        let domain = vm.domains.for_new_blocks(&seed, vm.config.kdf).unwrap();
        let data = b"written by format one, still readable. ".repeat(3000);
        let chunk = domain.keys.chunk_id(&data);
        let encoded = ChunkEncoder::new(3, Some(Arc::clone(&domain.keys)))
            .unwrap()
            .encode(&data, chunk)
            .unwrap();
        assert_eq!(encoded.codec, aetherflow_store::Codec::Zstd);
        let stored_len = encoded.payload.len() as u32;
        let staged = vm
            .store
            .stage_chunks(&[NewChunk::new(
                chunk,
                encoded.codec,
                false,
                encoded.raw_len,
                encoded.payload.into(),
            )])
            .unwrap();
        let id = BlockId::random();
        let mut sealed = Sha256::digest(&data).to_vec();
        domain
            .keys
            .seal_meta(&legacy_checksum_nonce(id), &mut sealed);
        let manifest = Manifest {
            size: data.len() as u64,
            created: 0,
            checksum: Checksum::SealedById(sealed.try_into().unwrap()),
            seed: Some(domain.binding),
            extents: vec![Extent::Chunk {
                id: chunk,
                raw_len: data.len() as u32,
                stored_len,
            }],
        };
        vm.store.commit_block(id, &manifest, staged).unwrap();
        assert_eq!(&vm.read(id, Some(&seed)).unwrap()[..], &data[..]);
        vm.cache.remove(&id);
        let mut streamed = Vec::new();
        vm.read_to(id, Some(&seed), None, &mut streamed).unwrap();
        assert_eq!(streamed, data);
        let wrong = Seed::new("other").unwrap();
        assert!(matches!(
            vm.read(id, Some(&wrong)),
            Err(Error::WrongSeed(_))
        ));
    }
}
