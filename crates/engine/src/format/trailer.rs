//! The trailer: 176 bytes at the very end, found by seeking to `len - 176`.
//!
//! ```text
//! off len field
//!   0   8 index offset
//!   8   8 index length
//!  16   8 logical size (bytes of the original)
//!  24   8 zstd records       32 8 raw records        40 8 reference records
//!  48   8 zero runs          56 8 zero bytes          64 8 hole runs
//!  72   8 hole bytes         80 8 reference bytes     88 8 unique bytes (stored chunks' plaintext)
//!  96   8 payload bytes (stored chunks on disk)
//! 104  48 content digest: SHA-256 then 16 zero bytes; encrypted files: the SHA-256 sealed with
//!         the metadata key (32 bytes ciphertext + 16 bytes tag)
//! 152  16 checksum: BLAKE3 of bytes 0..152, first 16 bytes
//! 168   8 end magic "AFLOWEND"
//! ```
//!
//! The SHA-256 covers every byte of the original except hole extents (found with SEEK_HOLE and
//! recorded as hole records, whose layout the sealed index covers); for input without holes it is
//! exactly `sha256sum` of the original.

use super::{short_check, Fields, END_MAGIC};
use crate::crypto::Keys;
use crate::error::{Error, Result};

/// Size of the trailer on disk.
pub const TRAILER_LEN: usize = 176;

/// Counts and sizes that describe a file without decoding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub logical_bytes: u64,
    pub zstd_chunks: u64,
    pub raw_chunks: u64,
    pub reference_chunks: u64,
    pub zero_runs: u64,
    pub zero_bytes: u64,
    pub hole_runs: u64,
    pub hole_bytes: u64,
    pub reference_bytes: u64,
    pub unique_bytes: u64,
    pub payload_bytes: u64,
}

/// The decoded trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub index_offset: u64,
    pub index_len: u64,
    pub totals: Totals,
    /// Raw digest field; see [`Trailer::content_digest`].
    pub digest_field: [u8; 48],
}

impl Trailer {
    /// Fills the digest field from the SHA-256, sealing it when the file is encrypted.
    pub fn seal_digest(sha256: [u8; 32], keys: Option<&Keys>) -> [u8; 48] {
        let mut field = [0u8; 48];
        match keys {
            None => field[..32].copy_from_slice(&sha256),
            Some(keys) => {
                let mut buf = sha256.to_vec();
                keys.seal_meta(&[0; 24], &mut buf);
                field.copy_from_slice(&buf);
            }
        }
        field
    }

    /// The SHA-256 of the content: plain, or opened with the keys of an encrypted file.
    pub fn content_digest(&self, keys: Option<&Keys>) -> Result<[u8; 32]> {
        match keys {
            None => {
                if self.digest_field[32..] != [0; 16] {
                    return Err(Error::corrupt("digest padding not zero"));
                }
                Ok(self.digest_field[..32].try_into().expect("32 bytes"))
            }
            Some(keys) => {
                let mut buf = self.digest_field.to_vec();
                keys.open_meta(&[0; 24], &mut buf)?;
                Ok(buf[..].try_into().expect("32 bytes"))
            }
        }
    }

    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = Vec::with_capacity(TRAILER_LEN);
        let t = &self.totals;
        for value in [
            self.index_offset,
            self.index_len,
            t.logical_bytes,
            t.zstd_chunks,
            t.raw_chunks,
            t.reference_chunks,
            t.zero_runs,
            t.zero_bytes,
            t.hole_runs,
            t.hole_bytes,
            t.reference_bytes,
            t.unique_bytes,
            t.payload_bytes,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.digest_field);
        let check: [u8; 16] = short_check(&out);
        out.extend_from_slice(&check);
        out.extend_from_slice(&END_MAGIC);
        out.try_into().expect("trailer length")
    }

    pub fn decode(bytes: &[u8; TRAILER_LEN]) -> Result<Trailer> {
        if bytes[168..] != END_MAGIC {
            return Err(Error::corrupt(
                "end magic missing (file truncated or not complete)",
            ));
        }
        if short_check::<16>(&bytes[..152]) != bytes[152..168] {
            return Err(Error::corrupt("trailer checksum mismatch"));
        }
        let mut f = Fields::new(&bytes[..152]);
        let index_offset = f.u64();
        let index_len = f.u64();
        let totals = Totals {
            logical_bytes: f.u64(),
            zstd_chunks: f.u64(),
            raw_chunks: f.u64(),
            reference_chunks: f.u64(),
            zero_runs: f.u64(),
            zero_bytes: f.u64(),
            hole_runs: f.u64(),
            hole_bytes: f.u64(),
            reference_bytes: f.u64(),
            unique_bytes: f.u64(),
            payload_bytes: f.u64(),
        };
        Ok(Trailer {
            index_offset,
            index_len,
            totals,
            digest_field: f.array(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flips() {
        let trailer = Trailer {
            index_offset: 1000,
            index_len: 40,
            totals: Totals {
                logical_bytes: 5,
                zstd_chunks: 1,
                ..Totals::default()
            },
            digest_field: Trailer::seal_digest([9; 32], None),
        };
        let bytes = trailer.encode();
        let back = Trailer::decode(&bytes).unwrap();
        assert_eq!(back, trailer);
        assert_eq!(back.content_digest(None).unwrap(), [9; 32]);
        for bit in 0..TRAILER_LEN * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Trailer::decode(&bad).is_err(), "bit {bit}");
        }
    }
}
