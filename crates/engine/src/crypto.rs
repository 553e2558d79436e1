//! Seeds, keys and chunk identities.
//!
//! Key hierarchy (see `docs/design.md`):
//!
//! ```text
//! seed --Argon2id(salt, m, t, p)--> master key (32 bytes)
//! master --blake3::derive_key(context)--> id key     (keyed BLAKE3 chunk identities)
//!                                      --> chunk key  (XChaCha20-Poly1305 per chunk)
//!                                      --> meta key   (index MAC and sealed content digest)
//!                                      --> check key  (header key check: wrong seed refused up front)
//!                                      --> gear seed  (keyed content-defined chunk boundaries)
//! ```
//!
//! Secrets live in [`Zeroizing`] buffers, are wiped on drop, and have no `Debug` that prints
//! them, no `Clone` and no `Default`.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Bytes of the AEAD authentication tag appended to every encrypted payload.
pub const TAG_LEN: usize = 16;

/// Bytes of random salt stored in the header of an encrypted file.
pub const SALT_LEN: usize = 16;

/// A user's secret. Never printed, never stored; wiped from memory on drop.
pub struct Seed(Zeroizing<Vec<u8>>);

impl Seed {
    /// Wraps the seed's bytes. An empty seed is refused: it would look like "no seed" to a person.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.is_empty() {
            return Err(Error::InvalidArgument("the seed is empty".into()));
        }
        Ok(Seed(bytes))
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Keyed BLAKE3 of the seed: lets a process recognise a seed it has seen (to reuse derived
    /// keys) without keeping the seed. Use a key that never leaves the process.
    pub fn fingerprint(&self, key: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(key, self.expose()).as_bytes()
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

/// Argon2id cost parameters, stored in the header so that a reader uses the writer's costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended setting scaled to 64 MiB: ~0.1–0.2 s on one core, so that
    /// guessing seeds is expensive while opening a file stays interactive.
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Cheapest accepted setting; for tests that derive many keys.
    pub const MINIMUM: KdfParams = KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        p_cost: 1,
    };

    /// Refuses costs a hostile file could use to make a reader allocate or spin without bound.
    pub fn check(&self, max_memory_kib: u32) -> Result<()> {
        if self.m_cost_kib < Self::MINIMUM.m_cost_kib || self.t_cost == 0 || self.p_cost == 0 {
            return Err(Error::corrupt(
                "key derivation parameters below the minimum",
            ));
        }
        if self.m_cost_kib > max_memory_kib || self.t_cost > 64 || self.p_cost > 16 {
            return Err(Error::LimitExceeded(format!(
                "key derivation asks for {} MiB, {} passes, {} lanes (limit {} MiB, 64, 16)",
                self.m_cost_kib / 1024,
                self.t_cost,
                self.p_cost,
                max_memory_kib / 1024
            )));
        }
        Ok(())
    }
}

/// The keys of one dedup and encryption domain (one `.af` file, or one seed in a store).
pub struct Keys {
    id_key: Zeroizing<[u8; 32]>,
    chunk_key: Zeroizing<[u8; 32]>,
    meta_key: Zeroizing<[u8; 32]>,
    check_key: Zeroizing<[u8; 32]>,
    gear_seed: u64,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Runs Argon2id over the seed and derives the sub-keys. This is the slow step.
    pub fn derive(seed: &Seed, salt: &[u8; SALT_LEN], params: KdfParams) -> Result<Keys> {
        let argon_params =
            Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
                .map_err(|e| Error::InvalidArgument(format!("key derivation parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        let mut master = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(seed.expose(), salt, master.as_mut())
            .map_err(|e| Error::InvalidArgument(format!("key derivation: {e}")))?;
        Ok(Keys::from_master(&master))
    }

    fn from_master(master: &[u8; 32]) -> Keys {
        let sub = |context: &str| Zeroizing::new(blake3::derive_key(context, master));
        let gear = sub("aetherflow v1 chunk boundary seed");
        Keys {
            id_key: sub("aetherflow v1 chunk identity"),
            chunk_key: sub("aetherflow v1 chunk encryption"),
            meta_key: sub("aetherflow v1 metadata authentication"),
            check_key: sub("aetherflow v1 seed check"),
            gear_seed: u64::from_le_bytes(gear[..8].try_into().expect("8 bytes")),
        }
    }

    /// Seed for the chunker's gear table, so that chunk boundaries do not reveal content.
    pub fn gear_seed(&self) -> u64 {
        self.gear_seed
    }

    /// The value stored in the header that tells a right seed from a wrong one.
    pub fn seed_check(&self, header_prefix: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.check_key, header_prefix).as_bytes()
    }

    /// Keyed MAC over metadata (the index), so that a seeded file's layout cannot be altered.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.meta_key, data).as_bytes()
    }

    /// A keyed BLAKE3 hasher under the metadata key, for metadata too large to gather first
    /// (a directory archive's entry table). Callers start it with a context string of their own.
    pub fn mac_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.meta_key)
    }

    /// Encrypts `buf` in place and appends the tag. The nonce comes from the chunk id, which is
    /// a keyed hash of the plaintext: equal plaintexts give equal ciphertexts (what dedup needs),
    /// and a nonce repeats only together with its plaintext.
    pub fn seal_chunk(&self, id: &ChunkId, aad: &[u8], buf: &mut Vec<u8>) {
        seal(&self.chunk_key, &id.0[..24], aad, buf)
    }

    /// Checks the tag and decrypts in place; a bad tag is corruption (the seed was checked first).
    pub fn open_chunk(&self, id: &ChunkId, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        open(&self.chunk_key, &id.0[..24], aad, buf)
    }

    /// Seals a small metadata value (the content digest) under the metadata key.
    pub fn seal_meta(&self, nonce: &[u8; 24], buf: &mut Vec<u8>) {
        seal(&self.meta_key, nonce, b"meta", buf)
    }

    /// Opens a value sealed by [`Keys::seal_meta`].
    pub fn open_meta(&self, nonce: &[u8; 24], buf: &mut Vec<u8>) -> Result<()> {
        open(&self.meta_key, nonce, b"meta", buf)
    }

    /// The identity of a chunk under these keys.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(
            *blake3::Hasher::new_keyed(&self.id_key)
                .update(data)
                .finalize()
                .as_bytes(),
        )
    }
}

fn seal(key: &[u8; 32], nonce: &[u8], aad: &[u8], buf: &mut Vec<u8>) {
    let cipher = XChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, buf)
        .expect("XChaCha20-Poly1305 accepts any payload below 256 GiB");
    buf.extend_from_slice(&tag);
}

fn open(key: &[u8; 32], nonce: &[u8], aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    if buf.len() < TAG_LEN {
        return Err(Error::corrupt("encrypted payload shorter than its tag"));
    }
    let tag_at = buf.len() - TAG_LEN;
    let tag = Tag::clone_from_slice(&buf[tag_at..]);
    buf.truncate(tag_at);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, buf, &tag)
        .map_err(|_| Error::corrupt("authentication tag mismatch"))
}

/// A chunk's identity: BLAKE3 of its plaintext, keyed when a seed is in use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Identity of a chunk in the unseeded domain.
    pub fn plain(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Identity under `keys` when present, plain otherwise.
    pub fn of(keys: Option<&Keys>, data: &[u8]) -> ChunkId {
        match keys {
            Some(keys) => keys.chunk_id(data),
            None => ChunkId::plain(data),
        }
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

/// Fresh random salt for a new file.
pub fn random_salt() -> Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::getrandom(&mut salt)
        .map_err(|e| Error::Io(std::io::Error::other(format!("no system randomness: {e}"))))?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: &str) -> Keys {
        Keys::derive(
            &Seed::new(seed).unwrap(),
            &[7; SALT_LEN],
            KdfParams::MINIMUM,
        )
        .unwrap()
    }

    #[test]
    fn chunk_round_trip_and_tamper() {
        let k = keys("alpha");
        let id = k.chunk_id(b"hello");
        let mut buf = b"hello".to_vec();
        k.seal_chunk(&id, b"aad", &mut buf);
        assert_ne!(&buf[..5], b"hello");
        let mut tampered = buf.clone();
        tampered[2] ^= 1;
        assert!(k.open_chunk(&id, b"aad", &mut tampered).is_err());
        assert!(k.open_chunk(&id, b"other", &mut buf.clone()).is_err());
        k.open_chunk(&id, b"aad", &mut buf).unwrap();
        assert_eq!(buf, b"hello");
    }

    #[test]
    fn seeds_give_disjoint_identities() {
        let (a, b) = (keys("alpha"), keys("beta"));
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.chunk_id(b"x"), ChunkId::plain(b"x"));
        assert_ne!(a.seed_check(b"h"), b.seed_check(b"h"));
        assert_eq!(a.chunk_id(b"x"), keys("alpha").chunk_id(b"x"));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let seed = Seed::new("hunter2").unwrap();
        assert!(!format!("{seed:?}").contains("hunter2"));
        assert!(Seed::new("").is_err());
    }

    #[test]
    fn hostile_kdf_costs_are_refused() {
        let huge = KdfParams {
            m_cost_kib: u32::MAX,
            t_cost: 1,
            p_cost: 1,
        };
        assert!(matches!(huge.check(1 << 20), Err(Error::LimitExceeded(_))));
        assert!(KdfParams::DEFAULT.check(1 << 20).is_ok());
    }
}
