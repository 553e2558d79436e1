//! The entry table of a directory archive, and the amendments that close its content.
//!
//! A directory archive is one `.af` stream (header flag bit 1) whose content is:
//!
//! ```text
//! entry table | data of every regular file, in table order | amendments
//! ```
//!
//! The table comes first, so that a reader knows every path before the first file byte arrives
//! (a streamed restore validates everything before it writes anything, and a damaged archive
//! names the entry the damage hit), and `stats` or `--path` read it with a ranged read of the
//! first chunks. Its layout:
//!
//! ```text
//! magic "AFDIRTBL" [8] | body_len u64 | count u64 | entry × count (body_len bytes) | mac [32]
//! entry: kind u8 | mode varint | mtime_secs zigzag varint | mtime_nanos varint
//!        | path_len varint | path | kind fields
//! kind 0 directory: nothing more       kind 2 symlink: target_len varint | target
//! kind 1 file: size varint             kind 3 hard link: index of an earlier file entry varint
//! ```
//!
//! File data is not addressed: each regular file's bytes follow the previous one's, so an
//! offset is the sum of the sizes before it and cannot disagree with anything. The amendments,
//! the last bytes of the content, list the entries whose data is not what the walk promised
//! (unreadable, or changed while read):
//!
//! ```text
//! count varint | (entry index varint | reason u8) × count | mac [32]
//! ```
//!
//! Both MACs are BLAKE3 keyed with the metadata key when a seed is given (plain BLAKE3
//! otherwise), over a context string and every byte before the MAC; the amendments' MAC also
//! covers the table's, so neither can be swapped for another archive's. With a seed the whole
//! content is encrypted as well: file names are as secret as file data.

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::trailer::{get_varint, put_varint};
use super::Fields;
use crate::crypto::Keys;
use crate::error::{Error, Result};

/// First bytes of an archive's content.
pub const TABLE_MAGIC: [u8; 8] = *b"AFDIRTBL";
/// Bytes before the entries: magic, body length, count.
pub const TABLE_PREFIX_LEN: usize = 24;
/// Bytes after the entries: the MAC.
pub const MAC_LEN: usize = 32;

/// What the table's MAC starts with, so that no other structure's MAC can pass for it.
pub const TABLE_CONTEXT: &[u8] = b"aetherflow v1 directory entry table\0";
/// What the amendments' MAC starts with.
pub const AMENDMENTS_CONTEXT: &[u8] = b"aetherflow v1 directory amendments\0";

/// A modification time: seconds since the epoch (negative before it) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

/// What an entry is, with what that kind needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EntryKind {
    Directory,
    /// A regular file whose `size` bytes are the next stretch of the content.
    File {
        size: u64,
    },
    /// A symbolic link, stored as its target and never followed.
    Symlink {
        #[serde(serialize_with = "serialize_path")]
        target: PathBuf,
    },
    /// A second name for the file entry at index `target` (an earlier entry): one inode.
    HardLink {
        target: u64,
    },
}

/// One archived entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Relative path, components joined by `/`; empty for the archived directory itself.
    #[serde(serialize_with = "serialize_path")]
    pub path: PathBuf,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits, setuid, setgid and sticky included (`0o7777` at most).
    pub mode: u32,
    pub mtime: Mtime,
}

fn serialize_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

impl Entry {
    /// Content bytes this entry takes (only regular files take any).
    pub fn data_len(&self) -> u64 {
        match self.kind {
            EntryKind::File { size } => size,
            _ => 0,
        }
    }
}

/// Why an entry's data is not what the table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Amendment {
    /// Could not be read: its stretch of content is zeros and it is not restored.
    Unreadable = 1,
    /// Changed size while it was read: its stretch holds what was read, cut or padded.
    Changed = 2,
}

/// The decoded table: entries in archive order, with each file's data offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryTable {
    pub entries: Vec<Entry>,
    /// For each entry, where its data starts in the content (relative to the table's end).
    pub offsets: Vec<u64>,
    /// The table's MAC, which the amendments' MAC covers.
    pub mac: [u8; 32],
}

fn mac(keys: Option<&Keys>, context: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = match keys {
        Some(keys) => keys.mac_hasher(),
        None => blake3::Hasher::new(),
    };
    hasher.update(context);
    for part in parts {
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// Serialises `entries` (already in archive order) into the table's bytes.
pub fn encode_table(entries: &[Entry], keys: Option<&Keys>) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * 48);
    for entry in entries {
        let (kind, extra) = match &entry.kind {
            EntryKind::Directory => (0u8, None),
            EntryKind::File { size } => (1, Some(*size)),
            EntryKind::Symlink { .. } => (2, None),
            EntryKind::HardLink { target } => (3, Some(*target)),
        };
        body.push(kind);
        put_varint(&mut body, u64::from(entry.mode));
        put_varint(&mut body, zigzag(entry.mtime.secs));
        put_varint(&mut body, u64::from(entry.mtime.nanos));
        put_bytes(&mut body, entry.path.as_os_str().as_bytes());
        match (&entry.kind, extra) {
            (EntryKind::Symlink { target }, _) => {
                put_bytes(&mut body, target.as_os_str().as_bytes())
            }
            (_, Some(value)) => put_varint(&mut body, value),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(TABLE_PREFIX_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(&TABLE_MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let mac = mac(keys, TABLE_CONTEXT, &[&out]);
    out.extend_from_slice(&mac);
    out
}

/// The table's full length from its first [`TABLE_PREFIX_LEN`] bytes, bounded by `max_bytes`
/// before anything is allocated for it.
pub fn table_len(prefix: &[u8], max_bytes: u64) -> Result<u64> {
    if prefix.len() < TABLE_PREFIX_LEN || prefix[..8] != TABLE_MAGIC {
        return Err(Error::corrupt(
            "directory archive without its entry table magic",
        ));
    }
    let body_len = u64::from_le_bytes(prefix[8..16].try_into().expect("8 bytes"));
    let total = body_len
        .checked_add((TABLE_PREFIX_LEN + MAC_LEN) as u64)
        .ok_or_else(|| Error::corrupt("entry table length out of range"))?;
    if total > max_bytes {
        return Err(Error::LimitExceeded(format!(
            "entry table of {total} bytes is over the reader's limit of {max_bytes}"
        )));
    }
    Ok(total)
}

/// Decodes a whole table (as sized by [`table_len`]), checks its MAC and validates every entry
/// (see [`validate`]).
pub fn decode_table(bytes: &[u8], keys: Option<&Keys>) -> Result<EntryTable> {
    if bytes.len() < TABLE_PREFIX_LEN + MAC_LEN {
        return Err(Error::corrupt("entry table truncated"));
    }
    let (signed, stored_mac) = bytes.split_at(bytes.len() - MAC_LEN);
    let mac = mac(keys, TABLE_CONTEXT, &[signed]);
    if mac != stored_mac {
        return Err(Error::corrupt("entry table MAC mismatch"));
    }
    let mut prefix = Fields::new(&signed[8..TABLE_PREFIX_LEN]);
    let body_len = prefix.u64();
    let count = prefix.u64();
    let body = &signed[TABLE_PREFIX_LEN..];
    if body.len() as u64 != body_len || count > body_len / 5 + 1 {
        return Err(Error::corrupt(
            "entry table length disagrees with its count",
        ));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut at = 0;
    for _ in 0..count {
        entries.push(decode_entry(body, &mut at)?);
    }
    if at != body.len() {
        return Err(Error::corrupt("bytes after the last entry"));
    }
    validate(&entries)?;
    let mut offsets = Vec::with_capacity(entries.len());
    let mut offset = 0u64;
    for entry in &entries {
        offsets.push(offset);
        offset = offset
            .checked_add(entry.data_len())
            .ok_or_else(|| Error::corrupt("file sizes overflow"))?;
    }
    Ok(EntryTable {
        entries,
        offsets,
        mac,
    })
}

fn decode_entry(body: &[u8], at: &mut usize) -> Result<Entry> {
    let kind = *body
        .get(*at)
        .ok_or_else(|| Error::corrupt("entry truncated"))?;
    *at += 1;
    let mode = u32::try_from(get_varint(body, at)?)
        .ok()
        .filter(|m| m & !0o7777 == 0)
        .ok_or_else(|| Error::corrupt("entry mode out of range"))?;
    let secs = unzigzag(get_varint(body, at)?);
    let nanos = u32::try_from(get_varint(body, at)?)
        .ok()
        .filter(|&n| n < 1_000_000_000)
        .ok_or_else(|| Error::corrupt("entry time out of range"))?;
    let path = PathBuf::from(std::ffi::OsString::from_vec(get_bytes(body, at)?.to_vec()));
    let kind = match kind {
        0 => EntryKind::Directory,
        1 => EntryKind::File {
            size: get_varint(body, at)?,
        },
        2 => EntryKind::Symlink {
            target: PathBuf::from(std::ffi::OsString::from_vec(get_bytes(body, at)?.to_vec())),
        },
        3 => EntryKind::HardLink {
            target: get_varint(body, at)?,
        },
        other => return Err(Error::corrupt(format!("unknown entry kind {other}"))),
    };
    Ok(Entry {
        path,
        kind,
        mode,
        mtime: Mtime { secs, nanos },
    })
}

/// Refuses any table that could make a restore write outside its destination or guess:
/// the first entry is the archived directory itself (empty path, a directory) and no other path
/// is empty; paths are relative, `/`-separated, without empty, `.` or `..` components or NUL
/// bytes; no path appears twice; each entry's parent is an earlier *directory* entry (so nothing
/// lies beneath a symlink or a file); a hard link names an earlier regular file; a symlink's
/// target is non-empty and NUL-free (it may point anywhere: it is created, never followed).
pub fn validate(entries: &[Entry]) -> Result<()> {
    let bad = |i: usize, e: &Entry, why: &str| {
        Error::corrupt(format!(
            "entry {i} ({}) {why}",
            e.path.as_os_str().to_string_lossy()
        ))
    };
    match entries.first() {
        Some(Entry {
            path,
            kind: EntryKind::Directory,
            ..
        }) if path.as_os_str().is_empty() => {}
        _ => {
            return Err(Error::corrupt(
                "entry table does not start with the archived directory",
            ))
        }
    }
    let mut seen: HashMap<&[u8], usize> = HashMap::with_capacity(entries.len());
    seen.insert(b"", 0);
    for (i, entry) in entries.iter().enumerate().skip(1) {
        let path = entry.path.as_os_str().as_bytes();
        if path.is_empty() || path.contains(&0) {
            return Err(bad(i, entry, "has an empty path or a NUL byte"));
        }
        if path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(bad(
                i,
                entry,
                "is absolute or has an empty, '.' or '..' component",
            ));
        }
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(slash) => &path[..slash],
            None => b"",
        };
        match seen.get(parent) {
            Some(&p) if matches!(entries[p].kind, EntryKind::Directory) => {}
            _ => return Err(bad(i, entry, "is not beneath an earlier directory entry")),
        }
        if seen.insert(path, i).is_some() {
            return Err(bad(i, entry, "appears twice"));
        }
        match &entry.kind {
            EntryKind::HardLink { target } => {
                let ok = usize::try_from(*target)
                    .ok()
                    .filter(|&t| t < i)
                    .is_some_and(|t| matches!(entries[t].kind, EntryKind::File { .. }));
                if !ok {
                    return Err(bad(
                        i,
                        entry,
                        "links to something other than an earlier file",
                    ));
                }
            }
            EntryKind::Symlink { target } => {
                let target = target.as_os_str().as_bytes();
                if target.is_empty() || target.contains(&0) {
                    return Err(bad(i, entry, "has an empty symlink target or a NUL byte"));
                }
            }
            EntryKind::Directory | EntryKind::File { .. } => {}
        }
    }
    Ok(())
}

/// Serialises the amendments; `table_mac` ties them to their table.
pub fn encode_amendments(
    amendments: &[(u64, Amendment)],
    table_mac: &[u8; 32],
    keys: Option<&Keys>,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, amendments.len() as u64);
    for &(index, why) in amendments {
        put_varint(&mut out, index);
        out.push(why as u8);
    }
    let mac = mac(keys, AMENDMENTS_CONTEXT, &[table_mac, &out]);
    out.extend_from_slice(&mac);
    out
}

/// Decodes and checks the amendments against their table.
pub fn decode_amendments(
    bytes: &[u8],
    table: &EntryTable,
    keys: Option<&Keys>,
) -> Result<Vec<(u64, Amendment)>> {
    let signed = bytes
        .len()
        .checked_sub(MAC_LEN)
        .map(|n| &bytes[..n])
        .ok_or_else(|| Error::corrupt("amendments truncated"))?;
    if mac(keys, AMENDMENTS_CONTEXT, &[&table.mac, signed]) != bytes[signed.len()..] {
        return Err(Error::corrupt("amendments MAC mismatch"));
    }
    let mut at = 0;
    let count = get_varint(signed, &mut at)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let index = get_varint(signed, &mut at)?;
        let why = match signed.get(at) {
            Some(1) => Amendment::Unreadable,
            Some(2) => Amendment::Changed,
            _ => return Err(Error::corrupt("unknown amendment")),
        };
        at += 1;
        let is_file = usize::try_from(index)
            .ok()
            .and_then(|i| table.entries.get(i))
            .is_some_and(|e| matches!(e.kind, EntryKind::File { .. }));
        if !is_file {
            return Err(Error::corrupt("amendment for an entry that is not a file"));
        }
        out.push((index, why));
    }
    if at != signed.len() {
        return Err(Error::corrupt("bytes after the last amendment"));
    }
    Ok(out)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn get_bytes<'a>(body: &'a [u8], at: &mut usize) -> Result<&'a [u8]> {
    let len = get_varint(body, at)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|&end| end <= body.len())
        .ok_or_else(|| Error::corrupt("entry name runs past the table"))?;
    let bytes = &body[*at..end];
    *at = end;
    Ok(bytes)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests;
