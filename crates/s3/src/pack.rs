//! Pack objects: many chunks in one object of a few MiB, with their index at the end.
//!
//! ```text
//! pack:    magic "AFS3PACK" [8] | record* | entry* | trailer
//! record:  the store's chunk record (header of 61 bytes, then the payload)
//! entry:   record offset u64 | record header [61]
//! trailer: entry count u32 | BLAKE3 of the entries, first 16 bytes | magic "AFS3INDX" [8]
//! ```
//!
//! A server that has never seen a pack learns its chunks with one ranged GET of the pack's tail;
//! reading one chunk is one ranged GET of its record. Records describe themselves, so a pack whose
//! index is damaged can still be read record by record.

use aetherflow_store::record::{parse_record_header, record_header, RECORD_HEADER_LEN};
use aetherflow_store::{ChunkInfo, Error, Result};
use bytes::Bytes;

const MAGIC: [u8; 8] = *b"AFS3PACK";
const INDEX_MAGIC: [u8; 8] = *b"AFS3INDX";
/// Bytes before the first record.
pub const HEADER_LEN: u64 = 8;
/// Bytes of one index entry.
pub const ENTRY_LEN: usize = 8 + RECORD_HEADER_LEN;
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 4 + 16 + 8;
/// How much of a pack's end is fetched first: the whole index of any pack of up to ~230 chunks.
pub const TAIL_GUESS: u64 = 16 * 1024;

/// A pack being filled.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<(u64, ChunkInfo)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder::new()
    }
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        PackBuilder {
            buf: MAGIC.to_vec(),
            entries: Vec::new(),
        }
    }

    /// Appends a record; returns its index among the pack's entries.
    pub fn append(&mut self, info: &ChunkInfo, payload: &[u8]) -> usize {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(&record_header(info));
        self.buf.extend_from_slice(payload);
        self.entries.push((offset, *info));
        self.entries.len() - 1
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `index`: where its record starts and what it says.
    pub fn entry(&self, index: usize) -> (u64, ChunkInfo) {
        self.entries[index]
    }

    /// Replaces what entry `index` says about its chunk (the record header too): the commit's
    /// description of a staged chunk is the one the store keeps.
    pub fn restate(&mut self, index: usize, info: &ChunkInfo) {
        let (offset, old) = &mut self.entries[index];
        let at = *offset as usize;
        self.buf[at..at + RECORD_HEADER_LEN].copy_from_slice(&record_header(info));
        debug_assert_eq!(old.stored_len, info.stored_len);
        *old = *info;
    }

    /// The finished object and its entries.
    pub fn finish(mut self) -> (Bytes, Vec<(u64, ChunkInfo)>) {
        let start = self.buf.len();
        for (offset, info) in &self.entries {
            self.buf.extend_from_slice(&offset.to_le_bytes());
            self.buf.extend_from_slice(&record_header(info));
        }
        let check = blake3::hash(&self.buf[start..]);
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&check.as_bytes()[..16]);
        self.buf.extend_from_slice(&INDEX_MAGIC);
        (Bytes::from(self.buf), self.entries)
    }
}

/// How many bytes at the end of a pack of `size` bytes hold its index and trailer, from the
/// trailer (the last [`TRAILER_LEN`] bytes).
pub fn index_span(name: &str, size: u64, trailer: &[u8]) -> Result<u64> {
    let t = &trailer[trailer.len().saturating_sub(TRAILER_LEN)..];
    if t.len() < TRAILER_LEN || t[20..] != INDEX_MAGIC {
        return Err(Error::Corrupt(format!(
            "pack {name}: no index at its end (truncated or not a pack)"
        )));
    }
    let count = u64::from(u32::from_le_bytes(t[..4].try_into().expect("4 bytes")));
    let span = count * ENTRY_LEN as u64 + TRAILER_LEN as u64;
    if span + HEADER_LEN > size {
        return Err(Error::Corrupt(format!(
            "pack {name}: index of {count} entries does not fit in {size} bytes"
        )));
    }
    Ok(span)
}

/// Parses the last `tail.len()` bytes of a pack of `size` bytes (at least its index span).
pub fn parse_index(name: &str, size: u64, tail: &[u8]) -> Result<Vec<(u64, ChunkInfo)>> {
    let span = index_span(name, size, tail)? as usize;
    if tail.len() < span {
        return Err(Error::Corrupt(format!("pack {name}: index cut short")));
    }
    let index = &tail[tail.len() - span..];
    let (entries, trailer) = index.split_at(span - TRAILER_LEN);
    if blake3::hash(entries).as_bytes()[..16] != trailer[4..20] {
        return Err(Error::Corrupt(format!(
            "pack {name}: index checksum mismatch"
        )));
    }
    let index_start = size - span as u64;
    entries
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let offset = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            let info = parse_record_header(e[8..].try_into().expect("header length"))
                .map_err(|err| Error::Corrupt(format!("pack {name}: index entry: {err}")))?;
            // The offset is untrusted: an entry claiming one near 2^64 must not wrap around.
            let end = offset.checked_add(record_len(&info));
            if offset < HEADER_LEN || end.is_none_or(|end| end > index_start) {
                return Err(Error::Corrupt(format!(
                    "pack {name}: index entry at {offset} points outside the records"
                )));
            }
            Ok((offset, info))
        })
        .collect()
}

/// Length of the record of a chunk described by `info`.
#[inline]
pub fn record_len(info: &ChunkInfo) -> u64 {
    RECORD_HEADER_LEN as u64 + u64::from(info.stored_len)
}

/// The bytes of the record at `offset` of a whole pack object (fewer, or none, if the object
/// is shorter than that: [`check_record`] then says so).
pub fn record_at(pack: &Bytes, offset: u64, info: &ChunkInfo) -> Bytes {
    let len = pack.len() as u64;
    let start = offset.min(len);
    let end = offset.saturating_add(record_len(info)).min(len);
    pack.slice(start as usize..end as usize)
}

/// Checks one record read back (`bytes` from its offset, [`record_len`] long) against the chunk
/// it should hold, and returns its payload.
pub fn check_record(name: &str, offset: u64, bytes: Bytes, expect: &ChunkInfo) -> Result<Bytes> {
    let here = || format!("pack {name} at {offset}");
    if (bytes.len() as u64) < record_len(expect) {
        return Err(Error::Corrupt(format!(
            "{}: record of chunk {:?} cut short ({} of {} bytes)",
            here(),
            expect.id,
            bytes.len(),
            record_len(expect)
        )));
    }
    let header: &[u8; RECORD_HEADER_LEN] = bytes[..RECORD_HEADER_LEN].try_into().expect("length");
    let info =
        parse_record_header(header).map_err(|e| Error::Corrupt(format!("{}: {e}", here())))?;
    if info != *expect {
        return Err(Error::Corrupt(format!(
            "{}: record holds chunk {:?}, not {:?}",
            here(),
            info.id,
            expect.id
        )));
    }
    let payload = bytes.slice(RECORD_HEADER_LEN..RECORD_HEADER_LEN + expect.stored_len as usize);
    if aetherflow_store::types::payload_check(&payload) != expect.check {
        return Err(Error::Corrupt(format!(
            "{}: chunk {:?} fails its checksum",
            here(),
            expect.id
        )));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{ChunkId, Codec};

    fn info(n: u8, payload: &[u8]) -> ChunkInfo {
        ChunkInfo {
            id: ChunkId::plain(&[n]),
            codec: Codec::Raw,
            nonce_stored: false,
            raw_len: payload.len() as u32,
            stored_len: payload.len() as u32,
            check: aetherflow_store::types::payload_check(payload),
        }
    }

    #[test]
    fn a_pack_lists_and_returns_its_chunks() {
        let mut b = PackBuilder::new();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + i as usize]).collect();
        for (i, p) in payloads.iter().enumerate() {
            b.append(&info(i as u8, p), p);
        }
        let (bytes, entries) = b.finish();
        let size = bytes.len() as u64;
        let parsed = parse_index("p", size, &bytes[bytes.len() - 1000.min(bytes.len())..]).unwrap();
        assert_eq!(parsed, entries);
        for ((offset, i), p) in parsed.iter().zip(&payloads) {
            let rec = bytes.slice(*offset as usize..(*offset + record_len(i)) as usize);
            assert_eq!(&check_record("p", *offset, rec, i).unwrap()[..], &p[..]);
        }
    }

    #[test]
    fn damage_is_named() {
        let p = vec![7u8; 300];
        let mut b = PackBuilder::new();
        b.append(&info(1, &p), &p);
        let (bytes, entries) = b.finish();
        let truncated = &bytes[..bytes.len() - 5];
        let err = parse_index("p", truncated.len() as u64, truncated).unwrap_err();
        assert!(err.to_string().contains("no index"), "{err}");
        let mut flipped = bytes.to_vec();
        let (offset, i) = entries[0];
        flipped[offset as usize + RECORD_HEADER_LEN + 10] ^= 1;
        let rec = Bytes::from(flipped).slice(offset as usize..(offset + record_len(&i)) as usize);
        let err = check_record("p", offset, rec, &i).unwrap_err();
        assert!(
            err.is_corrupt() && err.to_string().contains("checksum"),
            "{err}"
        );
    }
}
