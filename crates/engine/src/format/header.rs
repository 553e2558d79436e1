//! The header: what a reader must know before the first record.
//!
//! ```text
//! off len field
//!   0   8 magic 89 41 46 4C 4F 57 0D 0A
//!   8   2 version (1)
//!  10   2 flags: bit 0 encrypted, bit 1 directory archive, bit 2 holes hashed (as zeros);
//!           other bits must be zero
//!  12   1 zstd level used (signed; informative)
//!  13   3 reserved, zero
//!  16   4 chunk minimum size
//!  20   4 chunk average size
//!  24   4 chunk maximum size
//!  28   4 header length in bytes (48 plain, 108 encrypted)
//! encrypted only:
//!  32  16 Argon2id salt
//!  48   4 Argon2id memory cost (KiB)
//!  52   4 Argon2id passes
//!  56   4 Argon2id lanes
//!  60  32 seed check: keyed BLAKE3 (check key) of bytes 0..60
//! always last:
//! -16  16 checksum: BLAKE3 of every header byte before it, first 16 bytes
//! ```

use std::io::Read;

use super::{short_check, Fields, Limits, MAGIC, MAX_CHUNK_CEILING, VERSION};
use crate::chunking::ChunkParams;
use crate::crypto::{KdfParams, Keys, Seed, SALT_LEN};
use crate::error::{Error, Result};

const FLAG_ENCRYPTED: u16 = 1;
const FLAG_ARCHIVE: u16 = 2;
const FLAG_HOLES_HASHED: u16 = 4;
const PLAIN_LEN: usize = 48;
const ENCRYPTED_LEN: usize = 108;

/// Key-derivation settings of an encrypted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encryption {
    pub salt: [u8; SALT_LEN],
    pub kdf: KdfParams,
    /// Keyed hash that a right seed reproduces.
    pub seed_check: [u8; 32],
}

/// The decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub level: i8,
    pub archive: bool,
    /// The content's SHA-256 counts the holes as the zeros they read as, so that it is the
    /// original file's (`sha256sum`'s). Set by writers when the holes are few enough to hash
    /// (see `compress`); older files leave holes out of the digest.
    pub holes_hashed: bool,
    pub chunking: ChunkParams,
    pub encryption: Option<Encryption>,
}

impl Header {
    /// Length of this header on disk.
    pub fn encoded_len(&self) -> usize {
        if self.encryption.is_some() {
            ENCRYPTED_LEN
        } else {
            PLAIN_LEN
        }
    }

    /// Builds the header of a new file; with keys, fills the seed check.
    pub fn new(
        level: i8,
        archive: bool,
        chunking: ChunkParams,
        crypto: Option<(&Keys, [u8; SALT_LEN], KdfParams)>,
    ) -> Header {
        Header::with_hashed_holes(level, archive, false, chunking, crypto)
    }

    /// [`Header::new`] for content whose holes are hashed as zeros (see
    /// [`Header::holes_hashed`]).
    pub fn with_hashed_holes(
        level: i8,
        archive: bool,
        holes_hashed: bool,
        chunking: ChunkParams,
        crypto: Option<(&Keys, [u8; SALT_LEN], KdfParams)>,
    ) -> Header {
        let mut header = Header {
            level,
            archive,
            holes_hashed,
            chunking,
            encryption: crypto.map(|(_, salt, kdf)| Encryption {
                salt,
                kdf,
                seed_check: [0; 32],
            }),
        };
        if let Some((keys, _, _)) = crypto {
            let bytes = header.encode();
            let check = keys.seed_check(&bytes[..60]);
            if let Some(enc) = header.encryption.as_mut() {
                enc.seed_check = check;
            }
        }
        header
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let mut flags = 0u16;
        if self.encryption.is_some() {
            flags |= FLAG_ENCRYPTED;
        }
        if self.archive {
            flags |= FLAG_ARCHIVE;
        }
        if self.holes_hashed {
            flags |= FLAG_HOLES_HASHED;
        }
        out.extend_from_slice(&flags.to_le_bytes());
        out.push(self.level as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.chunking.min.to_le_bytes());
        out.extend_from_slice(&self.chunking.avg.to_le_bytes());
        out.extend_from_slice(&self.chunking.max.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        if let Some(enc) = &self.encryption {
            out.extend_from_slice(&enc.salt);
            out.extend_from_slice(&enc.kdf.m_cost_kib.to_le_bytes());
            out.extend_from_slice(&enc.kdf.t_cost.to_le_bytes());
            out.extend_from_slice(&enc.kdf.p_cost.to_le_bytes());
            out.extend_from_slice(&enc.seed_check);
        }
        let check: [u8; 16] = short_check(&out);
        out.extend_from_slice(&check);
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Reads and checks a header from the start of `input`.
    pub fn read(input: &mut impl Read, limits: &Limits) -> Result<Header> {
        let mut bytes = [0u8; ENCRYPTED_LEN];
        read_exact_or(input, &mut bytes[..MAGIC.len()], Error::InvalidMagic)?;
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::InvalidMagic);
        }
        read_exact_or(input, &mut bytes[8..32], Error::corrupt("header truncated"))?;
        let mut f = Fields::new(&bytes[8..32]);
        let version = f.u16();
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let flags = f.u16();
        let expected_len = if flags & FLAG_ENCRYPTED != 0 {
            ENCRYPTED_LEN
        } else {
            PLAIN_LEN
        };
        let level = f.u8() as i8;
        let reserved: [u8; 3] = f.array();
        let chunking = ChunkParams {
            min: f.u32(),
            avg: f.u32(),
            max: f.u32(),
        };
        let declared_len = f.u32() as usize;
        read_exact_or(
            input,
            &mut bytes[32..expected_len],
            Error::corrupt("header truncated"),
        )?;
        let bytes = &bytes[..expected_len];
        let (body, check) = bytes.split_at(expected_len - 16);
        if short_check::<16>(body) != check {
            return Err(Error::corrupt("header checksum mismatch"));
        }
        // The checksum matched, so what follows are the writer's values; still refuse any that
        // this version does not define rather than guess.
        if declared_len != expected_len
            || reserved != [0; 3]
            || flags & !(FLAG_ENCRYPTED | FLAG_ARCHIVE | FLAG_HOLES_HASHED) != 0
        {
            return Err(Error::corrupt("header fields out of range"));
        }
        if chunking.max > MAX_CHUNK_CEILING || chunking.min == 0 || chunking.min > chunking.max {
            return Err(Error::LimitExceeded(format!(
                "chunk size {}..{} bytes is outside what readers accept (max {})",
                chunking.min, chunking.max, MAX_CHUNK_CEILING
            )));
        }
        let encryption = if flags & FLAG_ENCRYPTED != 0 {
            let mut f = Fields::new(&bytes[32..92]);
            let salt = f.array::<SALT_LEN>();
            let kdf = KdfParams {
                m_cost_kib: f.u32(),
                t_cost: f.u32(),
                p_cost: f.u32(),
            };
            kdf.check(limits.max_kdf_memory_kib)?;
            Some(Encryption {
                salt,
                kdf,
                seed_check: f.array::<32>(),
            })
        } else {
            None
        };
        Ok(Header {
            level,
            archive: flags & FLAG_ARCHIVE != 0,
            holes_hashed: flags & FLAG_HOLES_HASHED != 0,
            chunking,
            encryption,
        })
    }

    /// Derives the keys of an encrypted file and checks the seed against the header.
    /// Returns `None` for a plain file (a seed given for it is not needed).
    pub fn unlock(&self, seed: Option<&Seed>) -> Result<Option<Keys>> {
        let Some(enc) = &self.encryption else {
            return Ok(None);
        };
        let seed = seed.ok_or(Error::SeedRequired)?;
        let keys = Keys::derive(seed, &enc.salt, enc.kdf)?;
        let encoded = self.encode();
        if keys.seed_check(&encoded[..60]) != enc.seed_check {
            return Err(Error::WrongSeed);
        }
        Ok(Some(keys))
    }
}

/// `read_exact` that turns an early end of input into the given error.
pub(crate) fn read_exact_or(input: &mut impl Read, buf: &mut [u8], eof: Error) -> Result<()> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(eof),
        Err(e) => Err(Error::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_and_encrypted() {
        let plain = Header::new(3, false, ChunkParams::DEFAULT, None);
        let bytes = plain.encode();
        assert_eq!(
            Header::read(&mut &bytes[..], &Limits::default()).unwrap(),
            plain
        );

        let seed = Seed::new("s").unwrap();
        let keys = Keys::derive(&seed, &[1; 16], KdfParams::MINIMUM).unwrap();
        let enc = Header::new(
            5,
            true,
            ChunkParams::DEFAULT,
            Some((&keys, [1; 16], KdfParams::MINIMUM)),
        );
        let bytes = enc.encode();
        let back = Header::read(&mut &bytes[..], &Limits::default()).unwrap();
        assert_eq!(back, enc);
        assert!(back.unlock(Some(&seed)).unwrap().is_some());
        assert!(matches!(
            back.unlock(Some(&Seed::new("t").unwrap())),
            Err(Error::WrongSeed)
        ));
        assert!(matches!(back.unlock(None), Err(Error::SeedRequired)));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = Header::new(3, false, ChunkParams::DEFAULT, None).encode();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Header::read(&mut &bad[..], &Limits::default()).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn not_af_is_invalid_magic() {
        assert!(matches!(
            Header::read(&mut &b"hello world"[..], &Limits::default()),
            Err(Error::InvalidMagic)
        ));
        assert!(matches!(
            Header::read(&mut &b""[..], &Limits::default()),
            Err(Error::InvalidMagic)
        ));
    }
}
