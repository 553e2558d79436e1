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
//!                                      --> nonce key  (synthetic chunk nonces, stores only)
//! ```
//!
//! A nonce under one key must never meet two different payloads. Where chunks are sealed decides
//! where their nonce comes from ([`NonceSource`]): an `.af` file has keys of its own (a fresh
//! salt per file) and stores each identity once, so the identity can serve as the nonce; a block
//! store keeps one key per seed domain for ever and may store one plaintext twice (two servers
//! that have not seen each other's chunks, a new zstd version), so there the nonce is derived
//! from the payload itself and stored in front of it.
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

/// Bytes of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;

/// Where the nonce of an encrypted chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceSource {
    /// The first 24 bytes of the chunk's identity, stored nowhere. Safe only where one key never
    /// seals two different payloads of one identity: an `.af` file (fresh keys per file, each
    /// identity stored once). Format-1 stores sealed their chunks this way; they still read.
    Identity,
    /// Synthetic, SIV-style: keyed BLAKE3 of the associated data and the payload, stored as the
    /// payload's first 24 bytes. A nonce repeats only with an identical payload, whoever seals
    /// it and whenever: what a store whose key lives as long as its seed needs.
    Stored,
}

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
    nonce_key: Zeroizing<[u8; 32]>,
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
            nonce_key: sub("aetherflow v2 chunk nonce"),
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

    /// Encrypts `buf` in place and appends the tag; with [`NonceSource::Stored`] the nonce goes
    /// in front. Equal plaintexts give equal ciphertexts either way (what dedup needs).
    pub fn seal_chunk(&self, id: &ChunkId, source: NonceSource, aad: &[u8], buf: &mut Vec<u8>) {
        match source {
            NonceSource::Identity => seal(&self.chunk_key, &id.0[..NONCE_LEN], aad, buf),
            NonceSource::Stored => {
                let nonce = self.synthetic_nonce(aad, buf);
                seal(&self.chunk_key, &nonce, aad, buf);
                buf.splice(0..0, nonce);
            }
        }
    }

    /// Checks the tag and decrypts in place (dropping a stored nonce); a bad tag is corruption
    /// (the seed was checked first).
    pub fn open_chunk(
        &self,
        id: &ChunkId,
        source: NonceSource,
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        match source {
            NonceSource::Identity => open(&self.chunk_key, &id.0[..NONCE_LEN], aad, buf),
            NonceSource::Stored => {
                if buf.len() < NONCE_LEN {
                    return Err(Error::corrupt("encrypted payload shorter than its nonce"));
                }
                let nonce: [u8; NONCE_LEN] = buf[..NONCE_LEN].try_into().expect("24 bytes");
                buf.drain(..NONCE_LEN);
                open(&self.chunk_key, &nonce, aad, buf)
            }
        }
    }

    /// The nonce [`NonceSource::Stored`] seals `payload` under: a keyed hash of everything the
    /// ciphertext depends on besides the key.
    fn synthetic_nonce(&self, aad: &[u8], payload: &[u8]) -> [u8; NONCE_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.nonce_key);
        h.update(&(aad.len() as u64).to_le_bytes());
        h.update(aad);
        h.update(payload);
        h.finalize().as_bytes()[..NONCE_LEN]
            .try_into()
            .expect("24 bytes")
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
        for source in [NonceSource::Identity, NonceSource::Stored] {
            let mut buf = b"hello".to_vec();
            k.seal_chunk(&id, source, b"aad", &mut buf);
            assert!(!buf.windows(5).any(|w| w == b"hello"));
            for at in 0..buf.len() {
                let mut tampered = buf.clone();
                tampered[at] ^= 1;
                assert!(k.open_chunk(&id, source, b"aad", &mut tampered).is_err());
            }
            assert!(k
                .open_chunk(&id, source, b"other", &mut buf.clone())
                .is_err());
            k.open_chunk(&id, source, b"aad", &mut buf).unwrap();
            assert_eq!(buf, b"hello");
        }
    }

    #[test]
    fn stored_nonces_differ_with_the_payload_and_repeat_with_it() {
        let k = keys("alpha");
        let id = k.chunk_id(b"one identity");
        let sealed = |payload: &[u8], aad: &[u8]| {
            let mut buf = payload.to_vec();
            k.seal_chunk(&id, NonceSource::Stored, aad, &mut buf);
            buf[..NONCE_LEN].to_vec()
        };
        // Two encodings of one plaintext (say two zstd versions) under one identity and key:
        // their nonces must differ, or their XOR and the Poly1305 key would leak.
        assert_ne!(sealed(b"frame A", b"aad"), sealed(b"frame B", b"aad"));
        assert_ne!(sealed(b"frame A", b"aad"), sealed(b"frame A", b"dda"));
        assert_eq!(sealed(b"frame A", b"aad"), sealed(b"frame A", b"aad"));
        assert_ne!(sealed(b"frame A", b"aad"), id.0[..NONCE_LEN].to_vec());
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
