//! A block's manifest: its size, checksum, seed tag and the list of extents that make it up.
//!
//! Encoded (little-endian), about 90 bytes plus 41 per chunk:
//!
//! ```text
//! version u8 = 1 or 2 | flags u8 (bit 0: seeded) | size u64 | created u64 (Unix seconds)
//! checksum: [32] SHA-256 of the content, or when seeded, sealed under the seed's metadata key:
//!           version 1: [48] (nonce derived from the block id: read, never written)
//!           version 2: nonce [24] | [48] (a random nonce)
//! seeded only: seed tag [32] | Argon2id memory KiB u32, passes u32, lanes u32
//! extent count u32
//! extent: 0 | len u64                                  a run of zeros
//!         1 | chunk id [32] | raw_len u32 | stored_len u32   a chunk
//! check [8]: BLAKE3 of everything before it
//! ```

use aetherflow_engine::crypto::ChunkId;

use crate::error::{Error, Result};

/// Unseeded manifests, and seeded ones whose checksum nonce is the block id's.
const VERSION_1: u8 = 1;
/// Seeded manifests whose checksum carries its own random nonce.
const VERSION_2: u8 = 2;
const FLAG_SEEDED: u8 = 1;
/// Sealed checksum: 32 bytes of ciphertext and a 16-byte tag.
pub const SEALED_CHECKSUM_LEN: usize = 48;
/// Nonce of a sealed checksum.
pub const CHECKSUM_NONCE_LEN: usize = 24;

/// The checksum of a block's content, readable by anyone or only with the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256 of the content.
    Plain([u8; 32]),
    /// SHA-256 sealed with the seed's metadata key under a random nonce, so that it cannot
    /// confirm guesses. A caller may choose a block id (import), so the nonce must not come
    /// from it.
    Sealed {
        nonce: [u8; CHECKSUM_NONCE_LEN],
        sealed: [u8; SEALED_CHECKSUM_LEN],
    },
    /// Sealed by manifest version 1, under a nonce derived from the block id. Still read;
    /// never written.
    SealedById([u8; SEALED_CHECKSUM_LEN]),
}

impl Checksum {
    /// Whether the checksum needs the seed to be read.
    pub fn is_sealed(&self) -> bool {
        !matches!(self, Checksum::Plain(_))
    }

    fn encoded_len(&self) -> u64 {
        match self {
            Checksum::Plain(_) => 32,
            Checksum::Sealed { .. } => (CHECKSUM_NONCE_LEN + SEALED_CHECKSUM_LEN) as u64,
            Checksum::SealedById(_) => SEALED_CHECKSUM_LEN as u64,
        }
    }
}

/// One piece of a block, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// `len` zero bytes, stored as their length only.
    Zero { len: u64 },
    /// A stored chunk.
    Chunk {
        id: ChunkId,
        raw_len: u32,
        stored_len: u32,
    },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Zero { len } => len,
            Extent::Chunk { raw_len, .. } => raw_len.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What ties a block to its seed, without revealing the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedBinding {
    /// Keyed hash (under a key derived from the seed) that tells the right seed from any other.
    pub tag: [u8; 32],
    /// Argon2id costs the keys were derived with: memory in KiB, passes, lanes.
    pub kdf: [u32; 3],
}

/// What a block is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Logical size in bytes.
    pub size: u64,
    /// Creation time, Unix seconds.
    pub created: u64,
    pub checksum: Checksum,
    /// How the block's seed is recognised; `None` for unseeded blocks.
    pub seed: Option<SeedBinding>,
    pub extents: Vec<Extent>,
}

impl Manifest {
    /// Logical bytes stored as zero runs.
    pub fn zero_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter_map(|e| match e {
                Extent::Zero { len } => Some(*len),
                Extent::Chunk { .. } => None,
            })
            .sum()
    }

    /// Every chunk reference, in order, repeats included.
    pub fn chunk_refs(&self) -> impl Iterator<Item = &ChunkId> {
        self.extents.iter().filter_map(|e| match e {
            Extent::Chunk { id, .. } => Some(id),
            Extent::Zero { .. } => None,
        })
    }

    /// Payload bytes of the distinct chunks this block uses (shared chunks counted in full).
    pub fn stored_bytes(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.extents
            .iter()
            .filter_map(|e| match e {
                Extent::Chunk { id, stored_len, .. } if seen.insert(*id) => {
                    Some(u64::from(*stored_len))
                }
                _ => None,
            })
            .sum()
    }

    /// Checks the structural promise every reader relies on: extents add up to `size`.
    pub fn validate(&self) -> Result<()> {
        let total = self
            .extents
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.len()));
        if total != Some(self.size) {
            return Err(Error::Corrupt(format!(
                "manifest extents add up to {total:?}, not the block size {}",
                self.size
            )));
        }
        Ok(())
    }

    /// Length of [`Manifest::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> u64 {
        let chunks = self.chunk_refs().count() as u64;
        let zeros = self.extents.len() as u64 - chunks;
        let seed = if self.seed.is_some() { 32 + 12 } else { 0 };
        2 + 8 + 8 + self.checksum.encoded_len() + seed + 4 + 9 * zeros + 41 * chunks + 8
    }

    pub fn encode(&self) -> Vec<u8> {
        let chunks = self.chunk_refs().count();
        let mut out = Vec::with_capacity(120 + 41 * chunks + 9 * (self.extents.len() - chunks));
        out.push(match self.checksum {
            Checksum::Sealed { .. } => VERSION_2,
            Checksum::Plain(_) | Checksum::SealedById(_) => VERSION_1,
        });
        out.push(if self.seed.is_some() { FLAG_SEEDED } else { 0 });
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        match &self.checksum {
            Checksum::Plain(h) => out.extend_from_slice(h),
            Checksum::Sealed { nonce, sealed } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(sealed);
            }
            Checksum::SealedById(s) => out.extend_from_slice(s),
        }
        if let Some(seed) = &self.seed {
            out.extend_from_slice(&seed.tag);
            for v in seed.kdf {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            match e {
                Extent::Zero { len } => {
                    out.push(0);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Extent::Chunk {
                    id,
                    raw_len,
                    stored_len,
                } => {
                    out.push(1);
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(&raw_len.to_le_bytes());
                    out.extend_from_slice(&stored_len.to_le_bytes());
                }
            }
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(&check.as_bytes()[..8]);
        out
    }

    /// Decodes and checks a manifest; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &dyn std::fmt::Display) -> Result<Manifest> {
        let corrupt = |why: &str| Error::Corrupt(format!("manifest of {what}: {why}"));
        if bytes.len() < 8 {
            return Err(corrupt("too short"));
        }
        let (body, check) = bytes.split_at(bytes.len() - 8);
        if blake3::hash(body).as_bytes()[..8] != *check {
            return Err(corrupt("checksum mismatch"));
        }
        Manifest::decode_checked(body).map_err(|why| corrupt(&why))
    }

    /// Decodes a manifest whose check has passed: the structure behind the checksum, which a
    /// fuzzer can reach only from here.
    pub fn decode_checked(body: &[u8]) -> Result<Manifest, String> {
        let mut r = Reader { buf: body };
        let short = || "truncated".to_string();
        let version = r.u8().ok_or_else(short)?;
        if version != VERSION_1 && version != VERSION_2 {
            return Err(format!("unknown version {version}"));
        }
        let flags = r.u8().ok_or_else(short)?;
        if flags & !FLAG_SEEDED != 0 {
            return Err("unknown flags".into());
        }
        let size = r.u64().ok_or_else(short)?;
        let created = r.u64().ok_or_else(short)?;
        let seeded = flags & FLAG_SEEDED != 0;
        let checksum = match (seeded, version) {
            (false, VERSION_1) => Checksum::Plain(r.array().ok_or_else(short)?),
            (true, VERSION_1) => Checksum::SealedById(r.array().ok_or_else(short)?),
            (true, _) => Checksum::Sealed {
                nonce: r.array().ok_or_else(short)?,
                sealed: r.array().ok_or_else(short)?,
            },
            (false, _) => return Err("version 2 is only for seeded blocks".into()),
        };
        let seed = if seeded {
            Some(SeedBinding {
                tag: r.array().ok_or_else(short)?,
                kdf: [
                    r.u32().ok_or_else(short)?,
                    r.u32().ok_or_else(short)?,
                    r.u32().ok_or_else(short)?,
                ],
            })
        } else {
            None
        };
        let count = r.u32().ok_or_else(short)? as usize;
        // Every extent takes at least 9 bytes: a hostile count cannot make us allocate more
        // than the manifest's own length.
        if count > r.buf.len() / 9 {
            return Err("extent count exceeds its bytes".into());
        }
        let mut extents = Vec::with_capacity(count);
        for _ in 0..count {
            extents.push(match r.u8().ok_or_else(short)? {
                0 => Extent::Zero {
                    len: r.u64().ok_or_else(short)?,
                },
                1 => Extent::Chunk {
                    id: ChunkId(r.array().ok_or_else(short)?),
                    raw_len: r.u32().ok_or_else(short)?,
                    stored_len: r.u32().ok_or_else(short)?,
                },
                _ => return Err("unknown extent kind".into()),
            });
        }
        if !r.buf.is_empty() {
            return Err("trailing bytes".into());
        }
        let manifest = Manifest {
            size,
            created,
            checksum,
            seed,
            extents,
        };
        manifest.validate().map_err(|e| e.to_string())?;
        Ok(manifest)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.buf.split_first_chunk::<N>()?;
        self.buf = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|a| a[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seeded: bool) -> Manifest {
        Manifest {
            size: 4096 + 100 + 7,
            created: 1_700_000_000,
            checksum: if seeded {
                Checksum::Sealed {
                    nonce: [6; 24],
                    sealed: [7; 48],
                }
            } else {
                Checksum::Plain([9; 32])
            },
            seed: seeded.then_some(SeedBinding {
                tag: [3; 32],
                kdf: [8192, 1, 1],
            }),
            extents: vec![
                Extent::Zero { len: 4096 },
                Extent::Chunk {
                    id: ChunkId([1; 32]),
                    raw_len: 100,
                    stored_len: 50,
                },
                Extent::Chunk {
                    id: ChunkId([2; 32]),
                    raw_len: 7,
                    stored_len: 7,
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_catches_every_flip() {
        for seeded in [false, true] {
            let m = sample(seeded);
            let bytes = m.encode();
            assert_eq!(Manifest::decode(&bytes, &"b").unwrap(), m);
            for at in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] ^= 0x10;
                assert!(Manifest::decode(&bad, &"b").is_err(), "flip at {at}");
            }
            for len in 0..bytes.len() {
                assert!(
                    Manifest::decode(&bytes[..len], &"b").is_err(),
                    "cut at {len}"
                );
            }
        }
    }

    #[test]
    fn version_1_sealed_checksums_still_read() {
        let mut m = sample(true);
        m.checksum = Checksum::SealedById([7; 48]);
        let bytes = m.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(Manifest::decode(&bytes, &"b").unwrap(), m);
        assert_eq!(sample(true).encode()[0], 2);
        assert_eq!(sample(false).encode()[0], 1);
    }

    #[test]
    fn extents_must_add_up() {
        let mut m = sample(false);
        m.size += 1;
        assert!(Manifest::decode(&m.encode(), &"b").is_err());
        assert_eq!(sample(false).stored_bytes(), 57);
        assert_eq!(sample(false).zero_bytes(), 4096);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn extent() -> impl Strategy<Value = Extent> {
        prop_oneof![
            (0u64..1 << 40).prop_map(|len| Extent::Zero { len }),
            (any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(
                |(id, raw_len, stored_len)| Extent::Chunk {
                    id: ChunkId(id),
                    raw_len,
                    stored_len,
                }
            ),
        ]
    }

    /// Appends the check a manifest carries, so that random bytes reach the decoder behind it.
    fn with_check(mut body: Vec<u8>) -> Vec<u8> {
        let check = blake3::hash(&body);
        body.extend_from_slice(&check.as_bytes()[..8]);
        body
    }

    proptest! {
        #[test]
        fn any_manifest_round_trips(extents in proptest::collection::vec(extent(), 0..20), seeded: bool, created: u64) {
            let m = Manifest {
                size: extents.iter().map(Extent::len).sum(),
                created,
                checksum: if seeded { Checksum::Sealed { nonce: [4; 24], sealed: [1; 48] } } else { Checksum::Plain([2; 32]) },
                seed: seeded.then_some(SeedBinding { tag: [3; 32], kdf: [8192, 1, 1] }),
                extents,
            };
            prop_assert_eq!(m.encoded_len(), m.encode().len() as u64);
            prop_assert_eq!(Manifest::decode(&m.encode(), &"p").unwrap(), m);
        }

        /// Random bodies with a valid check: the decoder behind the checksum must refuse or
        /// accept them without panicking, and whatever it accepts must encode back to them.
        #[test]
        fn arbitrary_checked_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let framed = with_check(bytes);
            if let Ok(m) = Manifest::decode(&framed, &"p") {
                prop_assert_eq!(m.encode(), framed);
            }
        }

        /// A valid manifest mutated in one place, its check recomputed: structure the decoder
        /// meets far more often than with random bytes.
        #[test]
        fn mutated_manifests_never_panic(extents in proptest::collection::vec(extent(), 0..8), seeded: bool, at: usize, byte: u8, cut: usize) {
            let m = Manifest {
                size: extents.iter().map(Extent::len).sum(),
                created: 1,
                checksum: if seeded { Checksum::Sealed { nonce: [4; 24], sealed: [1; 48] } } else { Checksum::Plain([2; 32]) },
                seed: seeded.then_some(SeedBinding { tag: [3; 32], kdf: [8192, 1, 1] }),
                extents,
            };
            let encoded = m.encode();
            let mut body = encoded[..encoded.len() - 8].to_vec();
            let at = at % body.len();
            body[at] = byte;
            body.truncate(body.len() - cut % 4);
            let framed = with_check(body);
            if let Ok(m) = Manifest::decode(&framed, &"p") {
                prop_assert_eq!(m.encode(), framed);
            }
        }
    }
}
