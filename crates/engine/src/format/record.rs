//! Records: the body of an `.af` file, one per piece of content, in content order.
//!
//! ```text
//! data (kind 2 zstd, 3 raw): kind u8 | raw_len u32 | stored_len u32 | id [32] | payload_check [8]
//!                            | check u32 | payload
//! reference (kind 1):        kind u8 | ordinal u64 | raw_len u32 | check u32
//! zero run (kind 0):         kind u8 | length u64 | check u32
//! hole (kind 4):             kind u8 | length u64 | check u32
//! end of body (kind 255):    kind u8 | check u32
//! ```
//!
//! `check` is the first four bytes of BLAKE3 over the record header before it, so a flipped bit in
//! a length is caught before the length is used. A data record's payload is the zstd frame or the
//! raw bytes, followed by a 16-byte AEAD tag when the file is encrypted; its plaintext must hash to
//! `id`. `payload_check` is the first 8 bytes of BLAKE3 over the payload of a plain zstd record
//! (zeros otherwise: a raw payload is its plaintext, which `id` covers, and an encrypted one is
//! covered by its tag), so that no flipped bit goes unnoticed, even one zstd would never read.
//! A reference names the `ordinal`-th data record of the file (counting from 0).

use std::io::{Read, Write};

use super::header::read_exact_or;
use super::{short_check, Fields};
use crate::crypto::ChunkId;
use crate::error::{Error, Result};

/// How a data record's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Zstd,
    Raw,
}

/// One record of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Data {
        codec: Codec,
        raw_len: u32,
        stored_len: u32,
        id: ChunkId,
        payload_check: [u8; 8],
    },
    Reference {
        ordinal: u64,
        raw_len: u32,
    },
    Zero {
        len: u64,
    },
    Hole {
        len: u64,
    },
    End,
}

const KIND_ZERO: u8 = 0;
const KIND_REF: u8 = 1;
const KIND_ZSTD: u8 = 2;
const KIND_RAW: u8 = 3;
const KIND_HOLE: u8 = 4;
const KIND_END: u8 = 255;

/// Longest record header (a data record's).
pub const MAX_HEADER_LEN: usize = 1 + 4 + 4 + 32 + 8 + 4;

impl Record {
    /// Logical bytes this record stands for.
    pub fn logical_len(&self) -> u64 {
        match *self {
            Record::Data { raw_len, .. } | Record::Reference { raw_len, .. } => raw_len.into(),
            Record::Zero { len } | Record::Hole { len } => len,
            Record::End => 0,
        }
    }

    /// The kind byte, also used by index entries.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Data {
                codec: Codec::Zstd, ..
            } => KIND_ZSTD,
            Record::Data {
                codec: Codec::Raw, ..
            } => KIND_RAW,
            Record::Reference { .. } => KIND_REF,
            Record::Zero { .. } => KIND_ZERO,
            Record::Hole { .. } => KIND_HOLE,
            Record::End => KIND_END,
        }
    }

    /// Serialises the record header (not the payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        out.push(self.kind());
        match self {
            Record::Data {
                raw_len,
                stored_len,
                id,
                payload_check,
                ..
            } => {
                out.extend_from_slice(&raw_len.to_le_bytes());
                out.extend_from_slice(&stored_len.to_le_bytes());
                out.extend_from_slice(&id.0);
                out.extend_from_slice(payload_check);
            }
            Record::Reference { ordinal, raw_len } => {
                out.extend_from_slice(&ordinal.to_le_bytes());
                out.extend_from_slice(&raw_len.to_le_bytes());
            }
            Record::Zero { len } | Record::Hole { len } => {
                out.extend_from_slice(&len.to_le_bytes())
            }
            Record::End => {}
        }
        let check: [u8; 4] = short_check(&out);
        out.extend_from_slice(&check);
        out
    }

    /// Writes the header; the caller writes the payload of a data record right after.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<usize> {
        let bytes = self.encode();
        out.write_all(&bytes)?;
        Ok(bytes.len())
    }

    /// Reads one record header and checks it against `max_chunk` (the file's chunk ceiling):
    /// lengths beyond it are refused before anything is allocated for them.
    pub fn read(input: &mut impl Read, max_chunk: u32, tag_len: usize) -> Result<(Record, usize)> {
        let truncated = || Error::corrupt("body truncated");
        let mut buf = [0u8; MAX_HEADER_LEN];
        read_exact_or(input, &mut buf[..1], truncated())?;
        let fields_len = match buf[0] {
            KIND_ZSTD | KIND_RAW => 48,
            KIND_REF => 12,
            KIND_ZERO | KIND_HOLE => 8,
            KIND_END => 0,
            other => return Err(Error::corrupt(format!("unknown record kind {other}"))),
        };
        let total = 1 + fields_len + 4;
        read_exact_or(input, &mut buf[1..total], truncated())?;
        let (body, check) = buf[..total].split_at(total - 4);
        if short_check::<4>(body) != check {
            return Err(Error::corrupt("record header checksum mismatch"));
        }
        let mut f = Fields::new(&body[1..]);
        let record = match buf[0] {
            kind @ (KIND_ZSTD | KIND_RAW) => {
                let raw_len = f.u32();
                let stored_len = f.u32();
                let id = ChunkId(f.array());
                let payload_check = f.array();
                let codec = if kind == KIND_ZSTD {
                    Codec::Zstd
                } else {
                    Codec::Raw
                };
                let stored_ceiling = zstd_bound(max_chunk) + tag_len as u64;
                if raw_len == 0 || raw_len > max_chunk || u64::from(stored_len) > stored_ceiling {
                    return Err(Error::corrupt("data record sizes out of range"));
                }
                if codec == Codec::Raw && stored_len as usize != raw_len as usize + tag_len {
                    return Err(Error::corrupt("raw record size mismatch"));
                }
                Record::Data {
                    codec,
                    raw_len,
                    stored_len,
                    id,
                    payload_check,
                }
            }
            KIND_REF => {
                let ordinal = f.u64();
                let raw_len = f.u32();
                if raw_len == 0 || raw_len > max_chunk {
                    return Err(Error::corrupt("reference size out of range"));
                }
                Record::Reference { ordinal, raw_len }
            }
            KIND_ZERO => Record::Zero {
                len: nonzero(f.u64())?,
            },
            KIND_HOLE => Record::Hole {
                len: nonzero(f.u64())?,
            },
            _ => Record::End,
        };
        Ok((record, total))
    }
}

fn nonzero(len: u64) -> Result<u64> {
    if len == 0 {
        return Err(Error::corrupt("empty run"));
    }
    Ok(len)
}

/// zstd's worst-case compressed size for `len` input bytes (ZSTD_COMPRESSBOUND).
pub fn zstd_bound(len: u32) -> u64 {
    let len = u64::from(len);
    let margin = if len < (128 << 10) {
        ((128 << 10) - len) >> 11
    } else {
        0
    };
    len + (len >> 8) + margin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        let records = [
            Record::Data {
                codec: Codec::Zstd,
                raw_len: 10,
                stored_len: 7,
                id: ChunkId([3; 32]),
                payload_check: [1; 8],
            },
            Record::Data {
                codec: Codec::Raw,
                raw_len: 10,
                stored_len: 10,
                id: ChunkId([4; 32]),
                payload_check: [1; 8],
            },
            Record::Reference {
                ordinal: 9,
                raw_len: 10,
            },
            Record::Zero { len: 1 << 40 },
            Record::Hole { len: 15 << 40 },
            Record::End,
        ];
        for record in records {
            let bytes = record.encode();
            let (back, len) = Record::read(&mut &bytes[..], 1 << 20, 0).unwrap();
            assert_eq!((back, len), (record.clone(), bytes.len()));
            for bit in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                if let Ok((r, _)) = Record::read(&mut &bad[..], 1 << 20, 0) {
                    panic!("flip at bit {bit} of {record:?} read as {r:?}");
                }
            }
        }
    }

    #[test]
    fn hostile_sizes_are_refused() {
        let big = Record::Data {
            codec: Codec::Zstd,
            raw_len: u32::MAX,
            stored_len: 1,
            id: ChunkId([0; 32]),
            payload_check: [1; 8],
        };
        assert!(Record::read(&mut &big.encode()[..], 1 << 20, 0).is_err());
        let stored = Record::Data {
            codec: Codec::Zstd,
            raw_len: 1,
            stored_len: u32::MAX,
            id: ChunkId([0; 32]),
            payload_check: [1; 8],
        };
        assert!(Record::read(&mut &stored.encode()[..], 1 << 20, 0).is_err());
    }
}
