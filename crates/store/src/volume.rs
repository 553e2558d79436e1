//! Volumes as a store keeps them: a record per name, and a map from chunk index to what that
//! chunk of the volume holds.
//!
//! A volume is a fixed-size byte array cut into aligned chunks of `chunk_size` bytes (the last
//! one shorter when the size is not a multiple). Its map names, for every chunk that was ever
//! written, a stored chunk (deduplicated with every block and volume of the seed domain, counted
//! in the chunk's reference count), a zero chunk (no data), or nothing. Chunks never written cost
//! nothing, so a 100 TiB volume with nothing written costs its record.
//!
//! Snapshots share maps: a backend keeps maps in layers, a snapshot freezes the layer it was
//! taken of, and reads look through the layers top down. Taking one costs O(1) whatever the
//! size; the map of a volume costs what was written since.

use crate::error::{Error, Result};
use crate::manifest::SeedBinding;
use crate::types::ChunkId;

/// What one chunk of a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapEntry {
    /// Never written, or trimmed: reads as zeros, reported as a hole.
    Hole,
    /// Written as zeros: reads as zeros, reported as zero (not a hole), costs no data.
    Zero,
    /// Data: a stored chunk (its plaintext is the volume chunk's bytes).
    Chunk { id: ChunkId, stored_len: u32 },
}

impl MapEntry {
    /// Bytes of the fixed encoding.
    pub const LEN: usize = 1 + 32 + 4;

    pub fn encode(&self) -> [u8; MapEntry::LEN] {
        let mut v = [0u8; MapEntry::LEN];
        match self {
            MapEntry::Hole => v[0] = 0,
            MapEntry::Zero => v[0] = 1,
            MapEntry::Chunk { id, stored_len } => {
                v[0] = 2;
                v[1..33].copy_from_slice(&id.0);
                v[33..].copy_from_slice(&stored_len.to_le_bytes());
            }
        }
        v
    }

    pub fn decode(v: &[u8; MapEntry::LEN]) -> Result<MapEntry> {
        // One encoding per entry: a hole or a zero entry carries no chunk, so its other bytes
        // are zeros (anything else was not written by `encode`).
        if v[0] < 2 && v[1..].iter().any(|&b| b != 0) {
            return Err(Error::Corrupt(format!(
                "volume map entry of kind {} with bytes after its kind",
                v[0]
            )));
        }
        match v[0] {
            0 => Ok(MapEntry::Hole),
            1 => Ok(MapEntry::Zero),
            2 => Ok(MapEntry::Chunk {
                id: ChunkId(v[1..33].try_into().expect("32 bytes")),
                stored_len: u32::from_le_bytes(v[33..].try_into().expect("4 bytes")),
            }),
            k => Err(Error::Corrupt(format!("volume map entry of kind {k}"))),
        }
    }

    /// The stored chunk this entry refers to, if any.
    pub fn chunk(&self) -> Option<ChunkId> {
        match self {
            MapEntry::Chunk { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// A volume's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    /// Bytes the volume holds (what clients see).
    pub size: u64,
    /// Bytes of each chunk (the last one may be shorter).
    pub chunk_size: u32,
    /// A snapshot: frozen, never written.
    pub read_only: bool,
    /// What ties a seeded volume to its seed; `None` when unseeded.
    pub seed: Option<SeedBinding>,
    /// The volume this one was made from: the source of a snapshot, the snapshot of a clone.
    pub origin: Option<String>,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Bytes of the volume's chunks that hold data, as it reads now.
    pub written: u64,
    /// Bytes of its chunks written as zeros (they cost no data).
    pub zeroed: u64,
}

/// Longest volume name.
pub const MAX_NAME: usize = 128;

/// Checks a volume name: 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.` or
/// `-`. Names are NBD export names and object keys, so nothing else is allowed.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not \
             starting with '.' or '-'"
        ))
    }
}

/// How a volume is cut into chunks: the one place their count and lengths are worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes the volume holds.
    pub size: u64,
    /// Bytes of each chunk (the last one may be shorter).
    pub chunk_size: u32,
}

impl Geometry {
    /// Chunks the volume is cut into.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// Bytes of chunk `index` (the last one may be shorter).
    pub fn chunk_len(&self, index: u64) -> u32 {
        let start = index * u64::from(self.chunk_size);
        (self.size - start).min(u64::from(self.chunk_size)) as u32
    }
}

/// Why a write to the snapshot `name` is refused: snapshots are frozen. (Every backend and the
/// manager refuse with these words.)
pub fn snapshot_refusal(name: &str) -> String {
    format!("volume {name} is a snapshot: it cannot be written")
}

const FLAG_READ_ONLY: u8 = 1;
const FLAG_SEEDED: u8 = 2;
const RECORD_VERSION: u8 = 1;

impl VolumeRecord {
    /// How the volume is cut into chunks.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size,
            chunk_size: self.chunk_size,
        }
    }

    /// Chunks the volume is cut into.
    pub fn chunks(&self) -> u64 {
        self.geometry().chunks()
    }

    /// Bytes of chunk `index` (the last one may be shorter).
    pub fn chunk_len(&self, index: u64) -> u32 {
        self.geometry().chunk_len(index)
    }

    /// Refuses a write if the volume is a snapshot.
    pub fn check_writable(&self) -> crate::Result<()> {
        if self.read_only {
            return Err(crate::Error::Refused(snapshot_refusal(&self.name)));
        }
        Ok(())
    }

    /// The encoding (without the name, which is the key), with an 8-byte check.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(RECORD_VERSION);
        let mut flags = 0;
        if self.read_only {
            flags |= FLAG_READ_ONLY;
        }
        if self.seed.is_some() {
            flags |= FLAG_SEEDED;
        }
        out.push(flags);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&self.written.to_le_bytes());
        out.extend_from_slice(&self.zeroed.to_le_bytes());
        if let Some(seed) = &self.seed {
            out.extend_from_slice(&seed.tag);
            for v in seed.kdf {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let origin = self.origin.as_deref().unwrap_or("");
        out.extend_from_slice(&(origin.len() as u16).to_le_bytes());
        out.extend_from_slice(origin.as_bytes());
        let check = blake3::hash(&out);
        out.extend_from_slice(&check.as_bytes()[..8]);
        out
    }

    /// Decodes the record of volume `name`.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<VolumeRecord> {
        let corrupt = |why: &str| Error::Corrupt(format!("record of volume {name}: {why}"));
        if bytes.len() < 8 {
            return Err(corrupt("too short"));
        }
        let (body, check) = bytes.split_at(bytes.len() - 8);
        if blake3::hash(body).as_bytes()[..8] != *check {
            return Err(corrupt("checksum mismatch"));
        }
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let part = body.get(at..at + n).ok_or_else(|| corrupt("truncated"))?;
            at += n;
            Ok(part)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if take(1)?[0] != RECORD_VERSION {
            return Err(corrupt("unknown version"));
        }
        let flags = take(1)?[0];
        if flags & !(FLAG_READ_ONLY | FLAG_SEEDED) != 0 {
            return Err(corrupt("unknown flags"));
        }
        let size = u64_of(take(8)?);
        let chunk_size = u32_of(take(4)?);
        let created = u64_of(take(8)?);
        let written = u64_of(take(8)?);
        let zeroed = u64_of(take(8)?);
        let seed = if flags & FLAG_SEEDED != 0 {
            let tag: [u8; 32] = take(32)?.try_into().expect("32 bytes");
            let kdf = [u32_of(take(4)?), u32_of(take(4)?), u32_of(take(4)?)];
            Some(SeedBinding { tag, kdf })
        } else {
            None
        };
        let origin_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let origin = std::str::from_utf8(take(origin_len)?)
            .map_err(|_| corrupt("origin is not text"))?
            .to_string();
        if at != body.len() {
            return Err(corrupt("trailing bytes"));
        }
        if chunk_size == 0 || !chunk_size.is_power_of_two() {
            return Err(corrupt("chunk size is not a power of two"));
        }
        Ok(VolumeRecord {
            name: name.to_string(),
            size,
            chunk_size,
            read_only: flags & FLAG_READ_ONLY != 0,
            seed,
            origin: (!origin.is_empty()).then_some(origin),
            created,
            written,
            zeroed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seeded: bool) -> VolumeRecord {
        VolumeRecord {
            name: "vm-1".into(),
            size: 100 << 40,
            chunk_size: 64 << 10,
            read_only: seeded,
            seed: seeded.then_some(SeedBinding {
                tag: [9; 32],
                kdf: [8192, 1, 1],
            }),
            origin: seeded.then(|| "base".to_string()),
            created: 1_800_000_000,
            written: 12345 << 16,
            zeroed: 7 << 16,
        }
    }

    #[test]
    fn holes_and_zeros_have_one_encoding() {
        for entry in [MapEntry::Hole, MapEntry::Zero] {
            let bytes = entry.encode();
            assert_eq!(MapEntry::decode(&bytes).unwrap(), entry);
            for at in 1..MapEntry::LEN {
                let mut bad = bytes;
                bad[at] = 0x40;
                assert!(
                    MapEntry::decode(&bad).is_err(),
                    "{entry:?} with byte {at} set"
                );
            }
        }
    }

    #[test]
    fn records_and_entries_round_trip_and_damage_is_caught() {
        for seeded in [false, true] {
            let r = record(seeded);
            let bytes = r.encode();
            assert_eq!(VolumeRecord::decode("vm-1", &bytes).unwrap(), r);
            for at in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] ^= 4;
                assert!(VolumeRecord::decode("vm-1", &bad).is_err(), "flip at {at}");
            }
        }
        for e in [
            MapEntry::Hole,
            MapEntry::Zero,
            MapEntry::Chunk {
                id: ChunkId([5; 32]),
                stored_len: 777,
            },
        ] {
            assert_eq!(MapEntry::decode(&e.encode()).unwrap(), e);
        }
        let r = record(false);
        assert_eq!(r.chunks(), (100 << 40) / (64 << 10));
        let odd = VolumeRecord { size: 100_000, ..r };
        assert_eq!((odd.chunks(), odd.chunk_len(1)), (2, 100_000 - 65_536));
    }

    #[test]
    fn names_are_safe_as_export_names_and_keys() {
        for good in ["a", "vm-1", "disk_2.img", &"x".repeat(MAX_NAME)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_NAME + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
