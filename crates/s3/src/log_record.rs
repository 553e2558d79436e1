//! The bucket's log: what each server committed, in records under epoch prefixes, so that other
//! servers learn a change by reading a few small objects instead of listing the whole bucket.
//! The protocol (how epochs advance, when one is settled, which records a reader ignores) is in
//! `docs/design.md`, "The log"; this module is its byte layout and its keys.
//!
//! ```text
//! log/epochs/E               marker: epoch E has begun (empty; created if absent)
//! log/E/WRITER-SEQ           record: events of one server, SEQ counting up per process
//!
//! record:  magic "AFS3LOG1" | writer u8 len, bytes | seq u64 | epoch u64 | events u32 |
//!          event* | BLAKE3 of all before [16]
//! event:   1 block added    | block id [16] | manifest u32 len, bytes (its own encoding)
//!          7 block imported | the same as 1 (its id was chosen, and `blocks/ID` holds it)
//!          2 block freed    | block id [16] | writer | seq u64 (the record that added it)
//!          3 pack added     | name | size u64 | entries u32 | (offset u64, record header [61])*
//!          4 pack deleted   | name
//!          5 delta added    | layer u128 | seq u64 | size u64
//!          6 head changed   | name
//!          8 layer deleted  | layer u128
//! name:    u8 len, bytes (one key segment: printable ASCII, no '/')
//! ```
//!
//! E and SEQ are written with 16 decimal digits, so that keys list in numeric order. A record
//! names its own writer, sequence number and epoch, and [`LogRecord::decode`] refuses one whose
//! key says otherwise: a record copied under another key (a replay) is refused, not applied
//! twice.

use std::sync::Arc;

use aetherflow_store::record::{parse_record_header, record_header};
use aetherflow_store::{BlockId, ChunkInfo, Manifest, Result};

use crate::pack;
use crate::volume_objects::LayerId;
use crate::wire::{check, checked, Cursor};

const MAGIC: [u8; 8] = *b"AFS3LOG1";

/// Where the log lives, relative to the store's prefix.
pub const LOG: &str = "log/";
/// Where the epoch markers live.
pub const EPOCHS: &str = "log/epochs/";
/// The longest writer id a record may name.
pub const MAX_WRITER: usize = 64;
/// Events one record holds at most (a writer with more writes several records).
pub const MAX_EVENTS: usize = 10_000;

/// The record an event came in: its writer and number, which no other record has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub writer: Arc<str>,
    pub seq: u64,
}

/// One change a server made to the bucket. Each names what it changes by an identity that is
/// never reused (a block by its id and the record that added it, since an import may reuse
/// the id of a block freed before; pack names made of their writer and a sequence number,
/// layer and delta numbers), so applying a set of events gives the same catalog in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A block was committed, with its manifest: the block exists from this record on.
    /// `imported`: its id was chosen by the caller and is held by `blocks/ID`, which its free
    /// deletes.
    BlockAdded {
        id: BlockId,
        manifest: Arc<Manifest>,
        imported: bool,
    },
    /// A block was freed: cancels the `BlockAdded` of record `added_in`, whichever is read
    /// first.
    BlockFreed { id: BlockId, added_in: Origin },
    /// A pack was uploaded, with its index, so that nobody needs its tail.
    PackAdded {
        name: String,
        size: u64,
        entries: Vec<(u64, ChunkInfo)>,
    },
    /// A pack was deleted: cancels its `PackAdded`.
    PackDeleted { name: String },
    /// A commit to a layer of volume maps (`layers/LAYER/SEQ`, `size` bytes) was written.
    DeltaAdded { layer: LayerId, seq: u64, size: u64 },
    /// A volume's head was written, replaced or deleted: the reader reads `volumes/NAME` as
    /// it is now.
    HeadChanged { name: String },
    /// A layer of volume maps no volume names was collected: its deltas are deleted (cancels
    /// its `DeltaAdded` events).
    LayerDeleted { layer: LayerId },
}

/// One record of the log: the events one server appends at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub writer: String,
    pub seq: u64,
    pub epoch: u64,
    pub events: Vec<Event>,
}

/// The marker of epoch `epoch`.
pub fn epoch_marker(epoch: u64) -> String {
    format!("{EPOCHS}{epoch:016}")
}

/// The epoch of a marker key.
pub fn parse_epoch_marker(key: &str) -> Option<u64> {
    digits(key.strip_prefix(EPOCHS)?)
}

/// Where the records of `epoch` live.
pub fn epoch_dir(epoch: u64) -> String {
    format!("{LOG}{epoch:016}/")
}

/// The key of a record.
pub fn record_key(epoch: u64, writer: &str, seq: u64) -> String {
    format!("{}{writer}-{seq:016}", epoch_dir(epoch))
}

/// The epoch, writer and sequence number of a record key.
pub fn parse_record_key(key: &str) -> Option<(u64, &str, u64)> {
    let (epoch, name) = key.strip_prefix(LOG)?.split_once('/')?;
    let (writer, seq) = name.rsplit_once('-')?;
    valid_writer(writer).then_some(())?;
    Some((digits(epoch)?, writer, digits(seq)?))
}

fn digits(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Writer ids are the processes' random ids: lowercase letters and digits.
fn valid_writer(w: &str) -> bool {
    (1..=MAX_WRITER).contains(&w.len())
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A name that can stand as one segment of a key.
fn valid_name(n: &str) -> bool {
    (1..=255).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

const BLOCK_ADDED: u8 = 1;
const BLOCK_FREED: u8 = 2;
const PACK_ADDED: u8 = 3;
const PACK_DELETED: u8 = 4;
const DELTA_ADDED: u8 = 5;
const HEAD_CHANGED: u8 = 6;
const BLOCK_IMPORTED: u8 = 7;
const LAYER_DELETED: u8 = 8;

fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(valid_name(name), "{name:?} is not a key segment");
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn take_name(c: &mut Cursor<'_>) -> Result<String> {
    let n = usize::from(c.u8()?);
    let bytes = c.take(n)?;
    match std::str::from_utf8(bytes) {
        Ok(name) if valid_name(name) => Ok(name.to_string()),
        _ => Err(c.corrupt("a name that is not one key segment")),
    }
}

impl LogRecord {
    pub fn key(&self) -> String {
        record_key(self.epoch, &self.writer, self.seq)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put_writer(&mut out, &self.writer);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&(self.events.len() as u32).to_le_bytes());
        for event in &self.events {
            put_event(&mut out, event);
        }
        let sum = check(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes the record stored under `key`: its check, every event, and that it names the
    /// epoch, writer and sequence number its key does.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<LogRecord> {
        let what = format!("log record {key}");
        let body = checked(&what, "a log record", bytes, &MAGIC)?;
        let mut c = Cursor::new(body, &what);
        let writer = take_writer(&mut c)?.to_string();
        let seq = c.u64()?;
        let epoch = c.u64()?;
        if parse_record_key(key) != Some((epoch, writer.as_str(), seq)) {
            return Err(c.corrupt(format_args!(
                "it names epoch {epoch}, writer {writer} and number {seq}, not its key's \
                 (a record copied under another key)"
            )));
        }
        // The smallest event is a tag and a name of one byte.
        let count = c.count(true, 3)?;
        if count > MAX_EVENTS {
            return Err(c.corrupt(format_args!(
                "{count} events, more than the {MAX_EVENTS} a record holds"
            )));
        }
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(decode_event(&mut c, &what)?);
        }
        c.done()?;
        Ok(LogRecord {
            writer,
            seq,
            epoch,
            events,
        })
    }
}

/// Appends `event` in its encoding (the table in the module documentation); snapshots of the
/// log hold events in the same encoding.
pub(crate) fn put_event(out: &mut Vec<u8>, event: &Event) {
    match event {
        Event::BlockAdded {
            id,
            manifest,
            imported,
        } => {
            out.push(if *imported {
                BLOCK_IMPORTED
            } else {
                BLOCK_ADDED
            });
            out.extend_from_slice(id.0.as_bytes());
            let m = manifest.encode();
            out.extend_from_slice(&(m.len() as u32).to_le_bytes());
            out.extend_from_slice(&m);
        }
        Event::BlockFreed { id, added_in } => {
            out.push(BLOCK_FREED);
            out.extend_from_slice(id.0.as_bytes());
            put_writer(out, &added_in.writer);
            out.extend_from_slice(&added_in.seq.to_le_bytes());
        }
        Event::PackAdded {
            name,
            size,
            entries,
        } => {
            out.push(PACK_ADDED);
            put_name(out, name);
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (offset, info) in entries {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&record_header(info));
            }
        }
        Event::PackDeleted { name } => {
            out.push(PACK_DELETED);
            put_name(out, name);
        }
        Event::DeltaAdded { layer, seq, size } => {
            out.push(DELTA_ADDED);
            out.extend_from_slice(&layer.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        Event::HeadChanged { name } => {
            out.push(HEAD_CHANGED);
            put_name(out, name);
        }
        Event::LayerDeleted { layer } => {
            out.push(LAYER_DELETED);
            out.extend_from_slice(&layer.to_le_bytes());
        }
    }
}

pub(crate) fn put_writer(out: &mut Vec<u8>, writer: &str) {
    assert!(valid_writer(writer), "writer id {writer:?}");
    out.push(writer.len() as u8);
    out.extend_from_slice(writer.as_bytes());
}

pub(crate) fn take_writer<'a>(c: &mut Cursor<'a>) -> Result<&'a str> {
    let len = usize::from(c.u8()?);
    let bytes = c.take(len)?;
    std::str::from_utf8(bytes)
        .ok()
        .filter(|w| valid_writer(w))
        .ok_or_else(|| c.corrupt("a writer id that is not one"))
}

fn block_id(c: &mut Cursor<'_>) -> Result<BlockId> {
    let bytes: [u8; 16] = c.take(16)?.try_into().expect("16");
    Ok(BlockId(uuid::Uuid::from_bytes(bytes)))
}

/// Takes one event off the front of `c` (`what`: the object it is in, for errors).
pub(crate) fn decode_event(c: &mut Cursor<'_>, what: &str) -> Result<Event> {
    Ok(match c.u8()? {
        tag @ (BLOCK_ADDED | BLOCK_IMPORTED) => {
            let id = block_id(c)?;
            let len = c.count(true, 1)?;
            let manifest = Manifest::decode(c.take(len)?, &format_args!("block {id} in {what}"))?;
            Event::BlockAdded {
                id,
                manifest: Arc::new(manifest),
                imported: tag == BLOCK_IMPORTED,
            }
        }
        BLOCK_FREED => {
            let id = block_id(c)?;
            let writer = Arc::from(take_writer(c)?);
            Event::BlockFreed {
                id,
                added_in: Origin {
                    writer,
                    seq: c.u64()?,
                },
            }
        }
        PACK_ADDED => {
            let name = take_name(c)?;
            let size = c.u64()?;
            let count = c.count(true, pack::ENTRY_LEN)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let offset = c.u64()?;
                let header = c
                    .take(pack::ENTRY_LEN - 8)?
                    .try_into()
                    .expect("header length");
                let info = parse_record_header(header)
                    .map_err(|e| c.corrupt(format_args!("pack {name}: entry: {e}")))?;
                // Untrusted: an offset near 2^64 must not wrap around.
                let end = offset.checked_add(pack::record_len(&info));
                if offset < pack::HEADER_LEN || end.is_none_or(|end| end > size) {
                    return Err(c.corrupt(format_args!(
                        "pack {name}: an entry at {offset} lies outside its {size} bytes"
                    )));
                }
                entries.push((offset, info));
            }
            Event::PackAdded {
                name,
                size,
                entries,
            }
        }
        PACK_DELETED => Event::PackDeleted {
            name: take_name(c)?,
        },
        DELTA_ADDED => Event::DeltaAdded {
            layer: c.u128()?,
            seq: c.u64()?,
            size: c.u64()?,
        },
        HEAD_CHANGED => Event::HeadChanged {
            name: take_name(c)?,
        },
        LAYER_DELETED => Event::LayerDeleted { layer: c.u128()? },
        tag => return Err(c.corrupt(format_args!("an event of unknown kind {tag}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{Checksum, ChunkId, Codec, Extent};

    fn info(n: u8, stored_len: u32) -> ChunkInfo {
        ChunkInfo {
            id: ChunkId([n; 32]),
            codec: Codec::Zstd,
            nonce_stored: false,
            raw_len: stored_len * 2,
            stored_len,
            check: [n; 16],
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            size: 4096 + 100,
            created: 1_800_000_000,
            checksum: Checksum::Plain([7; 32]),
            seed: None,
            extents: vec![
                Extent::Chunk {
                    id: ChunkId([1; 32]),
                    raw_len: 4096,
                    stored_len: 1000,
                },
                Extent::Zero { len: 100 },
            ],
        }
    }

    fn record() -> LogRecord {
        let first = pack::HEADER_LEN;
        LogRecord {
            writer: "c0e250c59f2549ff".into(),
            seq: 12,
            epoch: 3,
            events: vec![
                Event::BlockAdded {
                    id: BlockId::random(),
                    manifest: Arc::new(manifest()),
                    imported: false,
                },
                Event::BlockAdded {
                    id: BlockId::random(),
                    manifest: Arc::new(manifest()),
                    imported: true,
                },
                Event::BlockFreed {
                    id: BlockId::random(),
                    added_in: Origin {
                        writer: Arc::from("a1b2"),
                        seq: 7,
                    },
                },
                Event::PackAdded {
                    name: "c0e250c59f2549ff-000007".into(),
                    size: 1 << 20,
                    entries: vec![
                        (first, info(1, 1000)),
                        (first + pack::record_len(&info(1, 1000)), info(2, 500)),
                    ],
                },
                Event::PackDeleted {
                    name: "c0e250c59f2549ff-000001".into(),
                },
                Event::DeltaAdded {
                    layer: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
                    seq: 9,
                    size: 84,
                },
                Event::HeadChanged {
                    name: "vm-disk.1".into(),
                },
                Event::LayerDeleted { layer: 77 },
            ],
        }
    }

    #[test]
    fn a_record_round_trips_under_its_own_key() {
        let r = record();
        assert_eq!(
            r.key(),
            "log/0000000000000003/c0e250c59f2549ff-0000000000000012"
        );
        assert_eq!(
            parse_record_key(&r.key()),
            Some((3, "c0e250c59f2549ff", 12))
        );
        assert_eq!(LogRecord::decode(&r.key(), &r.encode()).unwrap(), r);
        assert_eq!(epoch_marker(3), "log/epochs/0000000000000003");
        assert_eq!(parse_epoch_marker(&epoch_marker(3)), Some(3));
        assert_eq!(parse_epoch_marker("log/epochs/3"), None);
    }

    #[test]
    fn a_torn_or_altered_record_is_refused() {
        let r = record();
        let bytes = r.encode();
        for cut in [0, 8, bytes.len() / 2, bytes.len() - 1] {
            let err = LogRecord::decode(&r.key(), &bytes[..cut]).unwrap_err();
            assert!(err.is_corrupt(), "cut at {cut}: {err}");
        }
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        let err = LogRecord::decode(&r.key(), &flipped).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_record_under_another_key_is_refused() {
        let r = record();
        let bytes = r.encode();
        for key in [
            record_key(4, &r.writer, r.seq),
            record_key(r.epoch, "0ther", r.seq),
            record_key(r.epoch, "other", r.seq),
            record_key(r.epoch, &r.writer, r.seq + 1),
            "log/whatever".into(),
        ] {
            let err = LogRecord::decode(&key, &bytes).unwrap_err();
            assert!(err.is_corrupt(), "{key}: {err}");
        }
        let err = LogRecord::decode(&record_key(4, &r.writer, r.seq), &bytes).unwrap_err();
        assert!(err.to_string().contains("another key"), "{err}");
    }

    /// Re-encodes `r` with its check repaired after `tweak` changed its body, so that what is
    /// tested is the structure, not the checksum.
    fn hostile(r: &LogRecord, tweak: impl FnOnce(&mut Vec<u8>)) -> Result<LogRecord> {
        let mut bytes = r.encode();
        bytes.truncate(bytes.len() - 16);
        tweak(&mut bytes);
        let sum = check(&bytes);
        bytes.extend_from_slice(&sum);
        LogRecord::decode(&r.key(), &bytes)
    }

    #[test]
    fn hostile_counts_names_and_offsets_are_refused() {
        let r = LogRecord {
            events: vec![],
            ..record()
        };
        let count_at = 8 + 1 + r.writer.len() + 16;
        // A count of events far beyond the bytes there: refused before anything is allocated.
        let err = hostile(&r, |b| {
            b[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes())
        })
        .unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
        // More events than any record holds, with bytes enough to stand behind the count.
        let err = hostile(&r, |b| {
            let n = MAX_EVENTS as u32 + 1;
            b[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
            b.extend(std::iter::repeat_n(0u8, 3 * n as usize));
        })
        .unwrap_err();
        assert!(err.to_string().contains("more than the"), "{err}");
        // An event of a kind no build knows.
        let err = hostile(&r, |b| {
            b[count_at..count_at + 4].copy_from_slice(&1u32.to_le_bytes());
            b.push(99);
            b.extend_from_slice(&[0; 16]);
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown kind 99"), "{err}");

        // A name that would climb out of its prefix.
        let climbing = LogRecord {
            events: vec![Event::HeadChanged { name: "v".into() }],
            ..record()
        };
        let err = hostile(&climbing, |b| {
            let at = b.len() - 1;
            b[at] = b'/';
        })
        .unwrap_err();
        assert!(err.to_string().contains("key segment"), "{err}");

        // A pack entry whose record lies past the pack's end.
        let small = LogRecord {
            events: vec![Event::PackAdded {
                name: "p".into(),
                size: 4096,
                entries: vec![(pack::HEADER_LEN, info(1, 100))],
            }],
            ..record()
        };
        let size_at = count_at + 4 + 1 + 2;
        let err = hostile(&small, |b| {
            b[size_at..size_at + 8].copy_from_slice(&50u64.to_le_bytes())
        })
        .unwrap_err();
        assert!(err.to_string().contains("outside its 50 bytes"), "{err}");
        let err = hostile(&small, |b| {
            let at = size_at + 8 + 4;
            b[at..at + 8].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        })
        .unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
