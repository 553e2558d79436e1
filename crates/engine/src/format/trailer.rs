//! The trailer: the last bytes of the file, found from its fixed-size end.
//!
//! ```text
//! varint × 13   index offset, index length, then the totals in the order of [`Totals`]
//! digest        SHA-256 (32 bytes); encrypted files: sealed with the metadata key (48 bytes)
//! u16           trailer length in bytes, everything here included
//! [16]          checksum: BLAKE3 of every trailer byte before it, first 16 bytes
//! [8]           end magic "AFLOWEND"
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first), so an empty or all-zero file's trailer is about
//! 70 bytes: 1 MiB of zeros compresses to about 200 bytes in all.
//!
//! The SHA-256 covers every byte of the original except hole extents (found with SEEK_HOLE and
//! recorded as hole records, whose layout the sealed index covers); for input without holes it is
//! exactly `sha256sum` of the original.

use super::{short_check, END_MAGIC};
use crate::crypto::{Keys, TAG_LEN};
use crate::error::{Error, Result};

/// Bytes at the very end with a fixed layout: length, checksum, end magic.
pub const FIXED_END: usize = 2 + 16 + 8;
/// Largest possible trailer: thirteen 10-byte varints, a sealed digest and the fixed end.
pub const MAX_TRAILER_LEN: usize = 13 * 10 + 32 + TAG_LEN + FIXED_END;

/// Counts and sizes that describe a file without decoding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
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
    /// Plaintext bytes of the stored (unique) chunks.
    pub unique_bytes: u64,
    /// Bytes the stored chunks take on disk (compressed, with tags).
    pub payload_bytes: u64,
}

/// The decoded trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub index_offset: u64,
    pub index_len: u64,
    pub totals: Totals,
    /// The digest as stored; see [`Trailer::content_digest`].
    pub digest_field: Vec<u8>,
}

impl Trailer {
    /// The digest field for a SHA-256: plain, or sealed when the file is encrypted.
    pub fn seal_digest(sha256: [u8; 32], keys: Option<&Keys>) -> Vec<u8> {
        let mut field = sha256.to_vec();
        if let Some(keys) = keys {
            keys.seal_meta(&[0; 24], &mut field);
        }
        field
    }

    /// The SHA-256 of the content: plain, or opened with the keys of an encrypted file.
    pub fn content_digest(&self, keys: Option<&Keys>) -> Result<[u8; 32]> {
        let mut field = self.digest_field.clone();
        if let Some(keys) = keys {
            keys.open_meta(&[0; 24], &mut field)?;
        }
        field
            .try_into()
            .map_err(|_| Error::corrupt("content digest has the wrong length"))
    }

    fn fields(&self) -> [u64; 13] {
        let t = &self.totals;
        [
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
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_TRAILER_LEN);
        for value in self.fields() {
            put_varint(&mut out, value);
        }
        out.extend_from_slice(&self.digest_field);
        let len = (out.len() + FIXED_END) as u16;
        out.extend_from_slice(&len.to_le_bytes());
        let check: [u8; 16] = short_check(&out);
        out.extend_from_slice(&check);
        out.extend_from_slice(&END_MAGIC);
        out
    }

    /// The trailer's full length, read from the fixed end of a file (its last [`FIXED_END`] bytes).
    pub fn len_from_end(end: &[u8; FIXED_END]) -> Result<usize> {
        if end[18..] != END_MAGIC {
            return Err(Error::corrupt(
                "end magic missing (file truncated or incomplete)",
            ));
        }
        let len = usize::from(u16::from_le_bytes([end[0], end[1]]));
        if !(FIXED_END + 32..=MAX_TRAILER_LEN).contains(&len) {
            return Err(Error::corrupt("trailer length out of range"));
        }
        Ok(len)
    }

    /// Decodes a whole trailer; `encrypted` says how long the digest is.
    pub fn decode(bytes: &[u8], encrypted: bool) -> Result<Trailer> {
        let end: &[u8; FIXED_END] = bytes
            .get(bytes.len().saturating_sub(FIXED_END)..)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::corrupt("trailer truncated"))?;
        if Trailer::len_from_end(end)? != bytes.len() {
            return Err(Error::corrupt("trailer length mismatch"));
        }
        let checked = bytes.len() - 24;
        if short_check::<16>(&bytes[..checked]) != bytes[checked..checked + 16] {
            return Err(Error::corrupt("trailer checksum mismatch"));
        }
        let digest_len = if encrypted { 32 + TAG_LEN } else { 32 };
        let fields_end = (bytes.len() - FIXED_END)
            .checked_sub(digest_len)
            .ok_or_else(|| Error::corrupt("trailer too short for its digest"))?;
        let mut at = 0;
        let mut values = [0u64; 13];
        for value in &mut values {
            *value = get_varint(&bytes[..fields_end], &mut at)?;
        }
        if at != fields_end {
            return Err(Error::corrupt("trailer fields do not fill the trailer"));
        }
        let [index_offset, index_len, logical_bytes, zstd_chunks, raw_chunks, reference_chunks, zero_runs, zero_bytes, hole_runs, hole_bytes, reference_bytes, unique_bytes, payload_bytes] =
            values;
        Ok(Trailer {
            index_offset,
            index_len,
            totals: Totals {
                logical_bytes,
                zstd_chunks,
                raw_chunks,
                reference_chunks,
                zero_runs,
                zero_bytes,
                hole_runs,
                hole_bytes,
                reference_bytes,
                unique_bytes,
                payload_bytes,
            },
            digest_field: bytes[fields_end..fields_end + digest_len].to_vec(),
        })
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or_else(|| Error::corrupt("varint truncated"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Error::corrupt("varint too long"))
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
                logical_bytes: u64::MAX,
                zstd_chunks: 1,
                ..Totals::default()
            },
            digest_field: Trailer::seal_digest([9; 32], None),
        };
        let bytes = trailer.encode();
        let back = Trailer::decode(&bytes, false).unwrap();
        assert_eq!(back, trailer);
        assert_eq!(back.content_digest(None).unwrap(), [9; 32]);
        assert!(Trailer::decode(&bytes, true).is_err());
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Trailer::decode(&bad, false).is_err(), "bit {bit}");
        }
    }
}
