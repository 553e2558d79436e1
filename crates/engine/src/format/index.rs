//! The index: one entry per record, so that stats and ranged reads need no decompression.
//!
//! ```text
//! count u64 | entry{count} | seal [32]
//! entry: kind u8 | logical_offset u64 | location u64
//! ```
//!
//! `location` is the file offset of a data record's header, the ordinal of the data record a
//! reference repeats, and zero for runs. An entry's length is the distance to the next entry's
//! logical offset (the last one ends at the trailer's logical size). `seal` is BLAKE3 of the bytes
//! before it, keyed with the metadata key when the file is encrypted, so that an encrypted file's
//! layout cannot be altered without the seed.

use super::Fields;
use crate::crypto::Keys;
use crate::error::{Error, Result};

/// Bytes one entry takes on disk.
pub const ENTRY_LEN: usize = 17;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Record kind (see [`super::record::Record::kind`]).
    pub kind: u8,
    /// Where the record's content starts in the original.
    pub logical_offset: u64,
    /// Data: record offset in the file. Reference: target ordinal. Runs: 0.
    pub location: u64,
}

/// All entries of a file, in content order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    pub entries: Vec<IndexEntry>,
}

impl Index {
    /// On-disk size of an index with `count` entries.
    pub fn encoded_len(count: usize) -> u64 {
        8 + (count * ENTRY_LEN) as u64 + 32
    }

    pub fn encode(&self, keys: Option<&Keys>) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.entries.len()) as usize);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            out.push(entry.kind);
            out.extend_from_slice(&entry.logical_offset.to_le_bytes());
            out.extend_from_slice(&entry.location.to_le_bytes());
        }
        let seal = seal(keys, &out);
        out.extend_from_slice(&seal);
        out
    }

    /// Decodes and checks the seal. The caller has bounded `bytes` by the reader's limits.
    pub fn decode(bytes: &[u8], keys: Option<&Keys>) -> Result<Index> {
        if bytes.len() < 40 {
            return Err(Error::corrupt("index truncated"));
        }
        let (body, stored_seal) = bytes.split_at(bytes.len() - 32);
        if seal(keys, body) != stored_seal {
            return Err(Error::corrupt("index seal mismatch"));
        }
        let mut f = Fields::new(body);
        let count = f.u64();
        if Some(body.len() as u64)
            != count
                .checked_mul(ENTRY_LEN as u64)
                .and_then(|n| n.checked_add(8))
        {
            return Err(Error::corrupt(
                "index length disagrees with its entry count",
            ));
        }
        let entries = (0..count)
            .map(|_| IndexEntry {
                kind: f.u8(),
                logical_offset: f.u64(),
                location: f.u64(),
            })
            .collect();
        Ok(Index { entries })
    }

    /// The entry whose content covers `offset`, by binary search.
    pub fn entry_at(&self, offset: u64) -> Option<usize> {
        let after = self.entries.partition_point(|e| e.logical_offset <= offset);
        after.checked_sub(1)
    }
}

fn seal(keys: Option<&Keys>, bytes: &[u8]) -> [u8; 32] {
    match keys {
        Some(keys) => keys.mac(bytes),
        None => *blake3::hash(bytes).as_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let index = Index {
            entries: vec![
                IndexEntry {
                    kind: 2,
                    logical_offset: 0,
                    location: 48,
                },
                IndexEntry {
                    kind: 0,
                    logical_offset: 100,
                    location: 0,
                },
                IndexEntry {
                    kind: 1,
                    logical_offset: 300,
                    location: 0,
                },
            ],
        };
        let bytes = index.encode(None);
        assert_eq!(bytes.len() as u64, Index::encoded_len(3));
        assert_eq!(Index::decode(&bytes, None).unwrap(), index);
        assert_eq!(index.entry_at(0), Some(0));
        assert_eq!(index.entry_at(99), Some(0));
        assert_eq!(index.entry_at(100), Some(1));
        assert_eq!(index.entry_at(10_000), Some(2));
        let mut bad = bytes.clone();
        bad[10] ^= 4;
        assert!(Index::decode(&bad, None).is_err());
    }
}
