//! Rewrites the checksums of a structure so that it passes them, whatever else is in it: how
//! the targets reach the parsing behind each check. Each function knows one layout (the one
//! `docs/design.md` draws) and changes nothing but check fields, lengths it must clamp to fit,
//! and magic numbers.

use aetherflow_engine::format::entry_table::{
    AMENDMENTS_CONTEXT, MAC_LEN, TABLE_CONTEXT, TABLE_MAGIC, TABLE_PREFIX_LEN,
};
use aetherflow_engine::format::trailer::{Trailer, FIXED_END};
use aetherflow_engine::format::{END_MAGIC, MAGIC};

fn hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Puts `check` (the first `len` bytes of BLAKE3 of `bytes[..at]`) at `at`.
fn put_check(bytes: &mut [u8], at: usize, len: usize) {
    if at + len <= bytes.len() {
        let h = hash(&bytes[..at]);
        bytes[at..at + len].copy_from_slice(&h[..len]);
    }
}

/// The `.af` header: magic, and the checksum at the end of its declared length (48 or 108).
/// Returns the header's length.
pub fn header(bytes: &mut [u8]) -> usize {
    if bytes.len() < 48 {
        return 0;
    }
    bytes[..8].copy_from_slice(&MAGIC);
    let len = if u32_at(bytes, 28) == Some(108) && bytes.len() >= 108 {
        108
    } else {
        48
    };
    bytes[28..32].copy_from_slice(&(len as u32).to_le_bytes());
    put_check(bytes, len - 16, 16);
    len
}

/// A stream of `.af` records: each header's check, and a plain zstd payload's check.
pub fn records(bytes: &mut [u8]) {
    let mut at = 0;
    while let Some(&kind) = bytes.get(at) {
        let len = match kind {
            0 | 4 => 13,
            1 => 17,
            2 | 3 => 53,
            255 => 5,
            _ => return,
        };
        if at + len > bytes.len() {
            return;
        }
        let mut next = at + len;
        if kind == 2 || kind == 3 {
            let stored = u32_at(bytes, at + 5).unwrap_or(0) as usize;
            let end = (next + stored).min(bytes.len());
            if kind == 2 {
                let payload = hash(&bytes[next..end]);
                bytes[at + 41..at + 49].copy_from_slice(&payload[..8]);
            }
            next = end;
        }
        let h = hash(&bytes[at..at + len - 4]);
        bytes[at + len - 4..at + len].copy_from_slice(&h[..4]);
        if kind == 255 {
            return;
        }
        at = next;
    }
}

/// An `.af` index: its entry count made to fit, and its (unkeyed) seal.
pub fn index(bytes: &mut Vec<u8>) {
    if bytes.len() < 40 {
        return;
    }
    let count = ((bytes.len() - 40) / 17) as u64;
    bytes.truncate(40 + count as usize * 17);
    bytes[..8].copy_from_slice(&count.to_le_bytes());
    let at = bytes.len() - 32;
    let seal = hash(&bytes[..at]);
    bytes[at..].copy_from_slice(&seal);
}

/// An `.af` trailer: the end magic, its length, its checksum.
pub fn trailer(bytes: &mut [u8]) {
    let len = bytes.len();
    if !(FIXED_END + 32..=u16::MAX as usize).contains(&len) {
        return;
    }
    bytes[len - 8..].copy_from_slice(&END_MAGIC);
    bytes[len - FIXED_END..len - FIXED_END + 2].copy_from_slice(&(len as u16).to_le_bytes());
    put_check(bytes, len - 24, 16);
}

/// A whole `.af` file: header, records, and, if the trailer then decodes, the index it names.
pub fn af_file(bytes: &mut [u8]) {
    let start = header(bytes);
    if start == 0 {
        return;
    }
    // Guess the trailer's length from where the last record ends: try the fixed part of a
    // trailer of any length that fits, the first one that decodes wins.
    records(&mut bytes[start..]);
    for len in FIXED_END + 32..(FIXED_END + 200).min(bytes.len() - start) {
        let at = bytes.len() - len;
        let mut tail = bytes[at..].to_vec();
        trailer(&mut tail);
        if let Ok(t) = Trailer::decode(&tail, false) {
            bytes[at..].copy_from_slice(&tail);
            let (from, n) = (t.index_offset as usize, t.index_len as usize);
            if let Some(end) = from.checked_add(n).filter(|&e| e <= at && from >= start) {
                let mut idx = bytes[from..end].to_vec();
                index(&mut idx);
                if idx.len() == n {
                    bytes[from..end].copy_from_slice(&idx);
                }
            }
            return;
        }
    }
}

/// A directory archive's entry table: magic, a body length that fits, the (unkeyed) MAC.
pub fn entry_table(bytes: &mut [u8]) {
    if bytes.len() < TABLE_PREFIX_LEN + MAC_LEN {
        return;
    }
    bytes[..8].copy_from_slice(&TABLE_MAGIC);
    let room = (bytes.len() - TABLE_PREFIX_LEN - MAC_LEN) as u64;
    let body = u64_at(bytes, 8).unwrap_or(0).min(room);
    bytes[8..16].copy_from_slice(&body.to_le_bytes());
    let end = TABLE_PREFIX_LEN + body as usize;
    let mut h = blake3::Hasher::new();
    h.update(TABLE_CONTEXT);
    h.update(&bytes[..end]);
    bytes[end..end + MAC_LEN].copy_from_slice(h.finalize().as_bytes());
}

/// Amendments after a table whose MAC is `table_mac`.
pub fn amendments(bytes: &mut [u8], table_mac: &[u8; 32]) {
    if bytes.len() < MAC_LEN {
        return;
    }
    let at = bytes.len() - MAC_LEN;
    let mut h = blake3::Hasher::new();
    h.update(AMENDMENTS_CONTEXT);
    h.update(table_mac);
    h.update(&bytes[..at]);
    bytes[at..].copy_from_slice(h.finalize().as_bytes());
}

/// A block manifest: its 8-byte check at the end.
pub fn manifest(bytes: &mut [u8]) {
    if bytes.len() >= 8 {
        let at = bytes.len() - 8;
        put_check(bytes, at, 8);
    }
}

/// One pack record: the payload check (its length as the header says, clamped to what is
/// there), then the header check.
pub fn pack_record(bytes: &mut [u8]) {
    const HEADER: usize = 61;
    if bytes.len() < HEADER {
        return;
    }
    let stored = (u32_at(bytes, 37).unwrap_or(0) as usize).min(bytes.len() - HEADER);
    bytes[37..41].copy_from_slice(&(stored as u32).to_le_bytes());
    let payload = hash(&bytes[HEADER..HEADER + stored]);
    bytes[41..57].copy_from_slice(&payload[..16]);
    put_check(bytes, 57, 4);
}

/// An S3 pack's index at the end of the object: every entry's record header check, the
/// entries' check, the count and the magic.
pub fn pack_index(bytes: &mut [u8]) {
    const ENTRY: usize = 8 + 61;
    const TRAILER: usize = 4 + 16 + 8;
    if bytes.len() < 8 + TRAILER {
        return;
    }
    let room = (bytes.len() - 8 - TRAILER) / ENTRY;
    let at = bytes.len() - TRAILER;
    let count = (u32_at(bytes, at).unwrap_or(0) as usize).min(room);
    let start = at - count * ENTRY;
    for e in 0..count {
        let h = start + e * ENTRY + 8;
        let check = hash(&bytes[h..h + 57]);
        bytes[h + 57..h + 61].copy_from_slice(&check[..4]);
    }
    let check = hash(&bytes[start..at]);
    bytes[at..at + 4].copy_from_slice(&(count as u32).to_le_bytes());
    bytes[at + 4..at + 20].copy_from_slice(&check[..16]);
    bytes[at + 20..].copy_from_slice(b"AFS3INDX");
}

/// An S3 store's identity object: magic and check.
pub fn s3_identity(bytes: &mut Vec<u8>) {
    if bytes.len() >= 29 {
        bytes.truncate(29);
        bytes[..8].copy_from_slice(b"AFS3META");
        put_check(bytes, 25, 4);
    }
}

/// A volume object (head or delta): its magic, and the 16-byte check at its end.
fn volume_object(bytes: &mut [u8], magic: &[u8; 8]) {
    if bytes.len() >= 24 {
        bytes[..8].copy_from_slice(magic);
        let at = bytes.len() - 16;
        put_check(bytes, at, 16);
    }
}

/// A volume head: the check of the record inside it (its last 8 bytes, over the rest of its
/// declared length, clamped to what is there), then the head's own.
pub fn volume_head(bytes: &mut [u8]) {
    if let Some(len) = u32_at(bytes, 8) {
        let end = (12 + len as usize).min(bytes.len().saturating_sub(16));
        if end >= 12 + 8 {
            let record = &mut bytes[12..end];
            let at = record.len() - 8;
            put_check(record, at, 8);
        }
    }
    volume_object(bytes, b"AFVOLHD1");
}

/// A volume delta: its magic and its check.
pub fn volume_delta(bytes: &mut [u8]) {
    volume_object(bytes, b"AFVOLDL1");
}

/// A segment of a snapshot of the log, or its DONE (by the magic it starts with): its check.
pub fn s3_log_snapshot(bytes: &mut [u8]) {
    if bytes.starts_with(b"AFS3SNP1") {
        volume_object(bytes, b"AFS3SNP1");
    } else {
        volume_object(bytes, b"AFS3SEG1");
    }
}

/// A record of the bucket's log: its magic and its check.
pub fn s3_log_record(bytes: &mut [u8]) {
    volume_object(bytes, b"AFS3LOG1");
}
