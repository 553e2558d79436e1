//! Turning one chunk into its cheapest stored form, and back.
//!
//! The choice, in order: a zero run (no payload), zstd when it shrinks the chunk, raw otherwise.
//! References to earlier identical chunks are decided by the caller, which sees chunks in order.
//! A quick entropy estimate on a sample skips zstd for data that cannot shrink (media, ciphertext,
//! random), so such data flows at memory speed.

use std::sync::Arc;

use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::CParameter;

use crate::crypto::{ChunkId, Keys, NonceSource};
use crate::error::{Error, Result};
use crate::format::record::{Codec, Record};

/// zstd level used when none is given.
pub const DEFAULT_LEVEL: i32 = 3;

/// One stored chunk: its identity, how the payload is encoded, and the payload (with the AEAD
/// tag appended when encrypted).
#[derive(Debug)]
pub struct EncodedChunk {
    pub id: ChunkId,
    pub codec: Codec,
    pub raw_len: u32,
    /// See [`crate::format::record`]: BLAKE3 of a plain zstd payload, zeros otherwise.
    pub payload_check: [u8; 8],
    pub payload: Vec<u8>,
}

/// The payload check of a record (see [`crate::format::record`]).
pub fn payload_check(codec: Codec, encrypted: bool, payload: &[u8]) -> [u8; 8] {
    match (codec, encrypted) {
        (Codec::Zstd, false) => crate::format::short_check(payload),
        _ => [0; 8],
    }
}

/// True when every byte is zero, compared sixteen bytes at a time.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(16);
    blocks
        .by_ref()
        .all(|b| u128::from_ne_bytes(b.try_into().expect("16 bytes")) == 0)
        && blocks.remainder().iter().all(|&b| b == 0)
}

/// Shannon entropy in bits per byte of up to 8 spread samples of 4 KiB each.
fn sampled_entropy(data: &[u8]) -> f64 {
    const WINDOW: usize = 4096;
    const SAMPLES: usize = 8;
    // Four tables, filled in turn: a run of equal bytes (zeros, often) would otherwise make
    // every increment wait for the one before it.
    let mut tables = [[0u32; 256]; 4];
    let step = (data.len() / SAMPLES).max(WINDOW);
    for start in (0..data.len()).step_by(step).take(SAMPLES) {
        let window = &data[start..(start + WINDOW).min(data.len())];
        let mut quads = window.chunks_exact(4);
        for q in quads.by_ref() {
            tables[0][q[0] as usize] += 1;
            tables[1][q[1] as usize] += 1;
            tables[2][q[2] as usize] += 1;
            tables[3][q[3] as usize] += 1;
        }
        for &b in quads.remainder() {
            tables[0][b as usize] += 1;
        }
    }
    let counts: [u32; 256] = std::array::from_fn(|b| tables.iter().map(|t| t[b]).sum());
    let total = f64::from(counts.iter().sum::<u32>());
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / total;
            -p * p.log2()
        })
        .sum()
}

/// Above this sampled entropy zstd is not even tried: it could not save more than a fraction of a
/// percent, and trying costs as much as compressing text.
const INCOMPRESSIBLE_BITS_PER_BYTE: f64 = 7.95;

/// Compresses (and encrypts) chunks. One per worker thread: it owns a zstd context.
pub struct ChunkEncoder {
    compressor: Compressor<'static>,
    keys: Option<Arc<Keys>>,
    /// Where the nonce of each sealed chunk comes from (see [`NonceSource`]).
    nonce: NonceSource,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("encrypted", &self.keys.is_some())
            .finish()
    }
}

impl ChunkEncoder {
    /// An encoder for `.af` files, whose sealed chunks take their identity as nonce.
    pub fn new(level: i32, keys: Option<Arc<Keys>>) -> Result<Self> {
        ChunkEncoder::with_nonce(level, keys, NonceSource::Identity)
    }

    /// An encoder whose sealed chunks take their nonce from `nonce`.
    pub fn with_nonce(level: i32, keys: Option<Arc<Keys>>, nonce: NonceSource) -> Result<Self> {
        let mut compressor = Compressor::new(level).map_err(Error::Io)?;
        // Each chunk is compressed on its own and so starts without history. At the default level
        // a hash table one step larger than zstd's level-3 default wins back that loss (measured
        // on Silesia in 2 MiB chunks: ratio 4.219 -> 4.247, speed -12 %; docs/design.md).
        if level == DEFAULT_LEVEL {
            compressor
                .set_parameter(CParameter::HashLog(18))
                .map_err(Error::Io)?;
        }
        // Identity hashes check every chunk; zstd's own checksum would only repeat that work.
        compressor
            .set_parameter(CParameter::ChecksumFlag(false))
            .map_err(Error::Io)?;
        Ok(ChunkEncoder {
            compressor,
            keys,
            nonce,
            scratch: Vec::new(),
        })
    }

    /// The chunk's identity in this encoder's domain.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId::of(self.keys.as_deref(), data)
    }

    /// Encodes a non-zero chunk whose identity is already known.
    pub fn encode(&mut self, data: &[u8], id: ChunkId) -> Result<EncodedChunk> {
        let sealed = self.encode_for_store(data, id)?;
        Ok(EncodedChunk {
            payload_check: payload_check(sealed.codec, self.keys.is_some(), &sealed.payload),
            id,
            codec: sealed.codec,
            raw_len: sealed.raw_len,
            payload: sealed.payload,
        })
    }

    /// [`ChunkEncoder::encode`] without the `.af` record's payload check, for a store, which
    /// keeps a check of its own over every payload: computing both would hash each payload
    /// twice for one use.
    pub fn encode_for_store(&mut self, data: &[u8], id: ChunkId) -> Result<StorePayload> {
        let raw_len = u32::try_from(data.len())
            .map_err(|_| Error::InvalidArgument("chunk larger than 4 GiB".into()))?;
        let mut codec = Codec::Raw;
        if sampled_entropy(data) < INCOMPRESSIBLE_BITS_PER_BYTE {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(data.len()));
            self.compressor
                .compress_to_buffer(data, &mut self.scratch)
                .map_err(Error::Io)?;
            if self.scratch.len() < data.len() {
                codec = Codec::Zstd;
            }
        }
        let mut payload = match codec {
            // The compressed bytes leave with the scratch buffer (its spare room given back),
            // rather than being copied out of it: the next chunk starts a fresh one.
            Codec::Zstd => {
                let mut out = std::mem::take(&mut self.scratch);
                out.shrink_to_fit();
                out
            }
            Codec::Raw => data.to_vec(),
        };
        if let Some(keys) = &self.keys {
            keys.seal_chunk(&id, self.nonce, &aad(codec, raw_len), &mut payload);
        }
        Ok(StorePayload {
            codec,
            raw_len,
            payload,
        })
    }

    /// Seals later chunks under `keys` (the identity's keys, or none) with nonces from
    /// `nonce`: an encoder kept by a thread serves one domain after another without building
    /// a new zstd context each time.
    pub fn set_keys(&mut self, keys: Option<Arc<Keys>>, nonce: NonceSource) {
        self.keys = keys;
        self.nonce = nonce;
    }
}

/// A chunk encoded for a store (see [`ChunkEncoder::encode_for_store`]).
#[derive(Debug)]
pub struct StorePayload {
    pub codec: Codec,
    pub raw_len: u32,
    pub payload: Vec<u8>,
}

/// Associated data bound to every encrypted payload: how to decode it and to what size.
fn aad(codec: Codec, raw_len: u32) -> [u8; 5] {
    let mut aad = [0u8; 5];
    aad[0] = match codec {
        Codec::Zstd => 2,
        Codec::Raw => 3,
    };
    aad[1..].copy_from_slice(&raw_len.to_le_bytes());
    aad
}

/// Decrypts, decompresses and verifies chunks. One per worker thread.
pub struct ChunkDecoder {
    decompressor: Decompressor<'static>,
    keys: Option<Arc<Keys>>,
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkDecoder")
            .field("encrypted", &self.keys.is_some())
            .finish()
    }
}

impl ChunkDecoder {
    pub fn new(keys: Option<Arc<Keys>>) -> Result<Self> {
        Ok(ChunkDecoder {
            decompressor: Decompressor::new().map_err(Error::Io)?,
            keys,
        })
    }

    /// Opens later chunks under `keys` (see [`ChunkEncoder::set_keys`]).
    pub fn set_keys(&mut self, keys: Option<Arc<Keys>>) {
        self.keys = keys;
    }

    /// Decrypts and decompresses a payload whose bytes the caller has checked already (a store
    /// keeps a check of its own over each payload), without checking the result: the caller
    /// checks the plaintext against its identity, which covers every codec. An encrypted
    /// payload is still authenticated.
    pub fn open_payload(
        &mut self,
        codec: Codec,
        raw_len: u32,
        id: &ChunkId,
        payload: &[u8],
        nonce: NonceSource,
    ) -> Result<Vec<u8>> {
        let plain = match (&self.keys, codec) {
            (None, Codec::Raw) => payload.to_vec(),
            (None, Codec::Zstd) => self.decompress(payload, raw_len)?,
            (Some(keys), _) => {
                let mut opened = payload.to_vec();
                keys.open_chunk(id, nonce, &aad(codec, raw_len), &mut opened)?;
                match codec {
                    Codec::Raw => opened,
                    Codec::Zstd => self.decompress(&opened, raw_len)?,
                }
            }
        };
        if plain.len() != raw_len as usize {
            return Err(Error::corrupt("chunk decoded to the wrong size"));
        }
        Ok(plain)
    }

    fn decompress(&mut self, payload: &[u8], raw_len: u32) -> Result<Vec<u8>> {
        self.decompressor
            .decompress(payload, raw_len as usize)
            .map_err(|e| Error::corrupt(format!("zstd: {e}")))
    }

    /// Restores a chunk of an `.af` file and checks it against `id`. The output is never larger
    /// than `raw_len`, which the record reader has already bounded.
    pub fn decode(&mut self, record: &Record, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.decode_sealed(record, payload, NonceSource::Identity)
    }

    /// [`ChunkDecoder::decode`] for a chunk sealed with its nonce from `nonce`.
    pub fn decode_sealed(
        &mut self,
        record: &Record,
        mut payload: Vec<u8>,
        nonce: NonceSource,
    ) -> Result<Vec<u8>> {
        let Record::Data {
            codec,
            raw_len,
            id,
            payload_check: check,
            ..
        } = *record
        else {
            return Err(Error::corrupt("expected a data record"));
        };
        if payload_check(codec, self.keys.is_some(), &payload) != check {
            return Err(Error::corrupt("chunk payload checksum mismatch"));
        }
        if let Some(keys) = &self.keys {
            keys.open_chunk(&id, nonce, &aad(codec, raw_len), &mut payload)?;
        }
        let plain = match codec {
            Codec::Raw => payload,
            Codec::Zstd => self.decompress(&payload, raw_len)?,
        };
        if plain.len() != raw_len as usize {
            return Err(Error::corrupt("chunk decoded to the wrong size"));
        }
        // A checked zstd payload or an authenticated ciphertext decodes to exactly the plaintext
        // that was stored, so only a plain raw payload (whose check *is* its identity) is hashed
        // again here; the content's SHA-256 still covers everything at the end.
        if codec == Codec::Raw && self.keys.is_none() && ChunkId::plain(&plain) != id {
            return Err(Error::corrupt("chunk content does not match its identity"));
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 1000]));
        assert!(is_zero(&[]));
        for at in [0, 7, 8, 500, 999] {
            let mut data = vec![0u8; 1000];
            data[at] = 1;
            assert!(!is_zero(&data), "{at}");
        }
    }

    #[test]
    fn text_is_compressed_and_noise_stored_raw() {
        let mut enc = ChunkEncoder::new(DEFAULT_LEVEL, None).unwrap();
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(2000);
        let encoded = enc.encode(&text, enc.chunk_id(&text)).unwrap();
        assert_eq!(encoded.codec, Codec::Zstd);
        assert!(encoded.payload.len() < text.len() / 10);

        let mut state = 88172645463325252u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let encoded = enc.encode(&noise, enc.chunk_id(&noise)).unwrap();
        assert_eq!(encoded.codec, Codec::Raw);
        assert_eq!(encoded.payload, noise);

        let mut dec = ChunkDecoder::new(None).unwrap();
        let record = Record::Data {
            codec: Codec::Raw,
            raw_len: noise.len() as u32,
            stored_len: noise.len() as u32,
            id: enc.chunk_id(&noise),
            payload_check: [0; 8],
        };
        assert_eq!(dec.decode(&record, noise.clone()).unwrap(), noise);
        let mut bad = noise.clone();
        bad[5] ^= 1;
        assert!(dec.decode(&record, bad).is_err());

        // A flip in a zstd payload is caught by the payload check even where zstd would not look.
        let encoded = enc.encode(&text, enc.chunk_id(&text)).unwrap();
        let record = Record::Data {
            codec: Codec::Zstd,
            raw_len: text.len() as u32,
            stored_len: encoded.payload.len() as u32,
            id: encoded.id,
            payload_check: encoded.payload_check,
        };
        assert_eq!(dec.decode(&record, encoded.payload.clone()).unwrap(), text);
        for at in 0..encoded.payload.len() {
            let mut bad = encoded.payload.clone();
            bad[at] ^= 0x80;
            assert!(dec.decode(&record, bad).is_err(), "flip at {at}");
        }
    }
}
