//! The local store's index: redb tables and the fixed layouts of their values.
//!
//! | table | key | value |
//! |---|---|---|
//! | `chunks` | chunk id `[32]` | [`ChunkEntry`] (45 bytes) |
//! | `locations` | pack << 64 \| offset | chunk id: which chunk lives where, for compaction |
//! | `blocks` | block id (u128) | encoded [`crate::Manifest`] |
//! | `accesses` | block id (u128) | read count |
//! | `packs` | pack number | (committed end, live bytes) |
//! | `zombies` | chunk id `[32]` | epoch of death (see [`crate::epoch`]) |
//! | `meta` | name | `salt` [16], `totals` ([`Counters`]), `format` u32 |

use redb::{ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::types::{encoding_byte, encoding_from_byte, ChunkId, ChunkInfo};

pub const CHUNKS: TableDefinition<[u8; 32], [u8; ChunkEntry::LEN]> = TableDefinition::new("chunks");
pub const LOCATIONS: TableDefinition<u128, [u8; 32]> = TableDefinition::new("locations");
pub const BLOCKS: TableDefinition<u128, &[u8]> = TableDefinition::new("blocks");
pub const ACCESSES: TableDefinition<u128, u64> = TableDefinition::new("accesses");
pub const PACKS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("packs");
pub const ZOMBIES: TableDefinition<[u8; 32], u64> = TableDefinition::new("zombies");
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Layout version of the data directory. 2: sealed chunks carry their own nonce (encoding byte
/// bit 7) and seeded manifests a random checksum nonce. 3: volumes (their tables, and
/// references from their maps in the chunks' counts). Directories of earlier versions are
/// upgraded in place on open (nothing in them changes: they still read), so a build that knows
/// only an earlier version refuses them afterwards instead of misreading them.
pub const FORMAT: u32 = 3;

/// Versions of earlier builds that this one opens and upgrades.
pub const UPGRADABLE_FORMATS: &[u32] = &[1, 2];

/// Where a chunk lives and how many block references it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    pub pack: u32,
    /// Offset of the record (its header) in the pack.
    pub offset: u64,
    pub info: ChunkInfo,
    pub refs: u64,
}

impl ChunkEntry {
    pub const LEN: usize = 4 + 8 + 1 + 4 + 4 + 16 + 8;
    const _ACCOUNTED: () = assert!(
        Self::LEN == 45,
        "INDEX_BYTES_PER_CHUNK counts 45-byte entries"
    );

    /// Bytes the record takes in its pack.
    pub fn record_len(&self) -> u64 {
        super::pack::RECORD_HEADER_LEN as u64 + u64::from(self.info.stored_len)
    }

    pub fn encode(&self) -> [u8; ChunkEntry::LEN] {
        let mut v = [0u8; ChunkEntry::LEN];
        v[..4].copy_from_slice(&self.pack.to_le_bytes());
        v[4..12].copy_from_slice(&self.offset.to_le_bytes());
        v[12] = encoding_byte(&self.info);
        v[13..17].copy_from_slice(&self.info.raw_len.to_le_bytes());
        v[17..21].copy_from_slice(&self.info.stored_len.to_le_bytes());
        v[21..37].copy_from_slice(&self.info.check);
        v[37..45].copy_from_slice(&self.refs.to_le_bytes());
        v
    }

    pub fn decode(id: [u8; 32], v: &[u8; ChunkEntry::LEN]) -> Result<ChunkEntry> {
        let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        let (codec, nonce_stored) = encoding_from_byte(v[12])?;
        Ok(ChunkEntry {
            pack: u32_at(0),
            offset: u64_at(4),
            info: ChunkInfo {
                id: ChunkId(id),
                codec,
                nonce_stored,
                raw_len: u32_at(13),
                stored_len: u32_at(17),
                check: v[21..37].try_into().expect("16 bytes"),
            },
            refs: u64_at(37),
        })
    }

    /// The key of this chunk's row in `locations`.
    pub fn location_key(&self) -> u128 {
        location_key(self.pack, self.offset)
    }
}

pub fn location_key(pack: u32, offset: u64) -> u128 {
    (u128::from(pack) << 64) | u128::from(offset)
}

/// Reads a chunk's entry from any table handle.
pub fn get_chunk(
    table: &impl ReadableTable<[u8; 32], [u8; ChunkEntry::LEN]>,
    id: &ChunkId,
) -> Result<Option<ChunkEntry>> {
    match table.get(id.0)? {
        Some(v) => Ok(Some(ChunkEntry::decode(id.0, &v.value())?)),
        None => Ok(None),
    }
}

/// The store-wide counters kept in `meta`, updated in the same transaction as what they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub blocks: u64,
    pub logical: u64,
    pub zero: u64,
    pub unique: u64,
    pub stored: u64,
    pub chunks: u64,
    pub manifest_bytes: u64,
    /// Volumes (snapshots included).
    pub volumes: u64,
    /// Bytes of volume chunks written with data or zeros, summed over every volume.
    pub volume_bytes: u64,
    /// The part of `volume_bytes` written as zeros (no data).
    pub volume_zeroed: u64,
    /// Rows of volume maps, in every layer.
    pub map_rows: u64,
}

impl Counters {
    const LEN: usize = 11 * 8;
    /// Length written by format 1 (before volumes).
    const LEN_1: usize = 7 * 8;

    pub fn encode(&self) -> [u8; Counters::LEN] {
        let mut v = [0u8; Counters::LEN];
        let fields = [
            self.blocks,
            self.logical,
            self.zero,
            self.unique,
            self.stored,
            self.chunks,
            self.manifest_bytes,
            self.volumes,
            self.volume_bytes,
            self.map_rows,
            self.volume_zeroed,
        ];
        for (i, f) in fields.iter().enumerate() {
            v[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        v
    }

    pub fn decode(v: &[u8]) -> Result<Counters> {
        if v.len() != Counters::LEN && v.len() != Counters::LEN_1 {
            return Err(Error::Corrupt(
                "index counters have the wrong length".into(),
            ));
        }
        let f = |i: usize| {
            v.get(i * 8..i * 8 + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        Ok(Counters {
            blocks: f(0),
            logical: f(1),
            zero: f(2),
            unique: f(3),
            stored: f(4),
            chunks: f(5),
            manifest_bytes: f(6),
            volumes: f(7),
            volume_bytes: f(8),
            map_rows: f(9),
            volume_zeroed: f(10),
        })
    }

    /// Adds a chunk that became stored.
    pub fn add_chunk(&mut self, info: &ChunkInfo) {
        self.chunks += 1;
        self.unique += u64::from(info.raw_len);
        self.stored += u64::from(info.stored_len);
    }

    /// Accounts for a volume whose (written, zeroed) bytes went from `before` to `after`
    /// (`(0, 0)` for one created or deleted).
    pub fn volume_changed(&mut self, before: (u64, u64), after: (u64, u64)) {
        self.volume_bytes =
            (self.volume_bytes + after.0 + after.1).saturating_sub(before.0 + before.1);
        self.volume_zeroed = (self.volume_zeroed + after.1).saturating_sub(before.1);
    }

    /// Removes a chunk that was deleted.
    pub fn remove_chunk(&mut self, info: &ChunkInfo) {
        self.chunks -= 1;
        self.unique -= u64::from(info.raw_len);
        self.stored -= u64::from(info.stored_len);
    }
}

/// Reads the counters inside a transaction.
pub fn read_counters(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Counters> {
    match meta.get("totals")? {
        Some(v) => Counters::decode(v.value()),
        None => Ok(Counters::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Codec;

    #[test]
    fn entries_and_counters_round_trip() {
        let e = ChunkEntry {
            pack: 7,
            offset: 1 << 40,
            info: ChunkInfo {
                id: ChunkId([5; 32]),
                codec: Codec::Zstd,
                nonce_stored: true,
                raw_len: 123_456,
                stored_len: 789,
                check: [9; 16],
            },
            refs: 3,
        };
        assert_eq!(ChunkEntry::decode([5; 32], &e.encode()).unwrap(), e);
        let c = Counters {
            blocks: 1,
            logical: 2,
            zero: 3,
            unique: 4,
            stored: 5,
            chunks: 6,
            manifest_bytes: 7,
            volumes: 8,
            volume_bytes: 9,
            map_rows: 10,
            volume_zeroed: 11,
        };
        assert_eq!(Counters::decode(&c.encode()).unwrap(), c);
        assert!(Counters::decode(&[0; 3]).is_err());
        // Format 1 wrote seven counters: the volume ones read as zero.
        let old = Counters::decode(&c.encode()[..56]).unwrap();
        assert_eq!((old.manifest_bytes, old.volumes, old.map_rows), (7, 0, 0));
    }
}
