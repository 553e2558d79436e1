//! Snapshots of the log: what every record of epochs `0..=E` still says, once E is settled, in
//! sorted segments, so that a server starting cold reads the snapshot and the records after it
//! instead of the whole log. This module is their byte layout and their keys; `snapshots`
//! writes them, the view loads them, and `docs/design.md` ("Snapshots of the log") says why
//! they are safe.
//!
//! ```text
//! index/E/WRITER-NNNNNN   segment N of the snapshot of epochs 0..=E that WRITER wrote
//! index/E/DONE            the snapshot is complete: whose segments, their sizes and checks
//!                         (created if absent, after every segment: only a set it names counts)
//!
//! segment: magic "AFS3SEG1" | epoch u64 | number u32 | entries u32 | entry* | BLAKE3 [16]
//! entry:   epoch u64 | writer u8 len, bytes | seq u64 | written_ms i64 | event
//! DONE:    magic "AFS3SNP1" | epoch u64 | writer | segments u32 | (size u64, check [16])* |
//!          BLAKE3 [16]
//! ```
//!
//! An entry is an event of the log as a record holds it (`log_record`'s encoding), with the
//! record it came in (epoch, writer, number) and when the bucket stamped that record: loading
//! a snapshot applies its entries exactly as reading those records would.

use std::sync::Arc;

use aetherflow_store::Result;

use crate::log_record::{decode_event, put_event, put_writer, take_writer, Event, Origin};
use crate::wire::{check, checked, Cursor, CHECK_LEN};

const SEGMENT_MAGIC: [u8; 8] = *b"AFS3SEG1";
const DONE_MAGIC: [u8; 8] = *b"AFS3SNP1";

/// Where snapshots live, relative to the store's prefix.
pub const INDEX: &str = "index/";
/// A segment is closed once it holds this many bytes (one event may take it past).
pub const SEGMENT_BYTES: usize = 8 << 20;
/// Segments one snapshot has at most.
pub const MAX_SEGMENTS: usize = 1 << 20;

/// One surviving event of the log, with the record it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub epoch: u64,
    pub origin: Origin,
    /// When the bucket stamped the record (ms since the Unix epoch).
    pub written_ms: i64,
    pub event: Event,
}

/// One segment of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub epoch: u64,
    pub number: u32,
    pub entries: Vec<Entry>,
}

/// What makes a snapshot complete: the segments of one writer, each with its size and check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub epoch: u64,
    pub writer: String,
    pub segments: Vec<(u64, [u8; CHECK_LEN])>,
}

/// The folder of the snapshot of epochs `0..=epoch`.
pub fn snapshot_dir(epoch: u64) -> String {
    format!("{INDEX}{epoch:016}/")
}

pub fn done_key(epoch: u64) -> String {
    format!("{}DONE", snapshot_dir(epoch))
}

pub fn segment_key(epoch: u64, writer: &str, number: u32) -> String {
    format!("{}{writer}-{number:06}", snapshot_dir(epoch))
}

/// The epoch of any key under [`INDEX`].
pub fn parse_snapshot_epoch(key: &str) -> Option<u64> {
    let (epoch, _) = key.strip_prefix(INDEX)?.split_once('/')?;
    (epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_digit()))
        .then(|| epoch.parse().ok())
        .flatten()
}

/// The epoch of a `DONE` key.
pub fn parse_done_key(key: &str) -> Option<u64> {
    let epoch = parse_snapshot_epoch(key)?;
    (key == done_key(epoch)).then_some(epoch)
}

fn put_entry(out: &mut Vec<u8>, entry: &Entry) {
    out.extend_from_slice(&entry.epoch.to_le_bytes());
    put_writer(out, &entry.origin.writer);
    out.extend_from_slice(&entry.origin.seq.to_le_bytes());
    out.extend_from_slice(&entry.written_ms.to_le_bytes());
    put_event(out, &entry.event);
}

fn take_entry(c: &mut Cursor<'_>, what: &str) -> Result<Entry> {
    let epoch = c.u64()?;
    let writer = Arc::from(take_writer(c)?);
    let seq = c.u64()?;
    let written_ms = c.u64()? as i64;
    Ok(Entry {
        epoch,
        origin: Origin { writer, seq },
        written_ms,
        event: decode_event(c, what)?,
    })
}

/// The bytes of an entry with the smallest event (a tag and a name of one byte).
const MIN_ENTRY: usize = 8 + 2 + 8 + 8 + 3;

/// A segment's bytes: its header, the encoded `entries` (`count` of them) and its check.
fn seal_segment(epoch: u64, number: u32, count: usize, entries: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_MAGIC.len() + 16 + entries.len() + CHECK_LEN);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(entries);
    let sum = check(&out);
    out.extend_from_slice(&sum);
    out
}

impl Segment {
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = Vec::new();
        for entry in &self.entries {
            put_entry(&mut entries, entry);
        }
        seal_segment(self.epoch, self.number, self.entries.len(), &entries)
    }

    /// Decodes the segment stored under `key`, which must be the segment of the epoch and
    /// number the segment names (a segment copied under another key is refused).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Segment> {
        let what = format!("snapshot segment {key}");
        let body = checked(&what, "a snapshot segment", bytes, &SEGMENT_MAGIC)?;
        let mut c = Cursor::new(body, &what);
        let epoch = c.u64()?;
        let number = c.u32()?;
        let number_in_key = key
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok());
        if parse_snapshot_epoch(key) != Some(epoch) || number_in_key != Some(number) {
            return Err(c.corrupt(format_args!(
                "it names epoch {epoch} and number {number}, not its key's"
            )));
        }
        let count = c.count(true, MIN_ENTRY)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(take_entry(&mut c, &what)?);
        }
        c.done()?;
        Ok(Segment {
            epoch,
            number,
            entries,
        })
    }
}

/// Cuts `entries` (in the order a snapshot keeps) into encoded segments of about
/// [`SEGMENT_BYTES`]; with their checks, for [`Done`].
pub fn segments(epoch: u64, entries: Vec<Entry>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut body, mut count) = (Vec::new(), 0);
    for entry in &entries {
        put_entry(&mut body, entry);
        count += 1;
        if body.len() >= SEGMENT_BYTES {
            out.push(seal_segment(epoch, out.len() as u32, count, &body));
            (body, count) = (Vec::new(), 0);
        }
    }
    if count > 0 || out.is_empty() {
        out.push(seal_segment(epoch, out.len() as u32, count, &body));
    }
    out
}

impl Done {
    /// The `DONE` of `writer`'s encoded `segments` of the snapshot of epochs `0..=epoch`.
    pub fn of(epoch: u64, writer: &str, segments: &[Vec<u8>]) -> Done {
        Done {
            epoch,
            writer: writer.to_string(),
            segments: segments
                .iter()
                .map(|s| (s.len() as u64, check(s)))
                .collect(),
        }
    }

    /// The keys of the segments, in order.
    pub fn segment_keys(&self) -> Vec<String> {
        (0..self.segments.len() as u32)
            .map(|n| segment_key(self.epoch, &self.writer, n))
            .collect()
    }

    /// Bytes of all the segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(size, _)| size).sum()
    }

    /// Checks that `bytes` are segment `number` as this `DONE` names it (a segment written by
    /// another attempt under the same key is refused).
    pub fn verify_segment(&self, number: usize, key: &str, bytes: &[u8]) -> Result<()> {
        match self.segments.get(number) {
            Some((size, sum)) if *size == bytes.len() as u64 && *sum == check(bytes) => Ok(()),
            _ => Err(aetherflow_store::Error::Corrupt(format!(
                "snapshot segment {key}: not the segment its DONE names"
            ))),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = DONE_MAGIC.to_vec();
        out.extend_from_slice(&self.epoch.to_le_bytes());
        put_writer(&mut out, &self.writer);
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for (size, sum) in &self.segments {
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(sum);
        }
        let sum = check(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes the `DONE` stored under `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Done> {
        let what = format!("snapshot {key}");
        let body = checked(&what, "a snapshot's DONE", bytes, &DONE_MAGIC)?;
        let mut c = Cursor::new(body, &what);
        let epoch = c.u64()?;
        if parse_done_key(key) != Some(epoch) {
            return Err(c.corrupt(format_args!("it names epoch {epoch}, not its key's")));
        }
        let writer = take_writer(&mut c)?.to_string();
        let count = c.count(true, 8 + CHECK_LEN)?;
        if count == 0 || count > MAX_SEGMENTS {
            return Err(c.corrupt(format_args!("{count} segments")));
        }
        let mut segments = Vec::with_capacity(count);
        for _ in 0..count {
            let size = c.u64()?;
            let sum = c.take(CHECK_LEN)?.try_into().expect("16 bytes");
            segments.push((size, sum));
        }
        c.done()?;
        Ok(Done {
            epoch,
            writer,
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::BlockId;

    fn entry(seq: u64, event: Event) -> Entry {
        Entry {
            epoch: 4,
            origin: Origin {
                writer: Arc::from("c0e250c59f2549ff"),
                seq,
            },
            written_ms: 1_800_000_000_123,
            event,
        }
    }

    fn entries() -> Vec<Entry> {
        vec![
            entry(
                1,
                Event::PackAdded {
                    name: "c0e250c59f2549ff-000007".into(),
                    size: 1 << 20,
                    entries: vec![],
                },
            ),
            entry(
                2,
                Event::BlockFreed {
                    id: BlockId::random(),
                    added_in: Origin {
                        writer: Arc::from("a1"),
                        seq: 3,
                    },
                },
            ),
            entry(3, Event::HeadChanged { name: "vm".into() }),
            entry(
                4,
                Event::DeltaAdded {
                    layer: 9,
                    seq: 2,
                    size: 100,
                },
            ),
        ]
    }

    #[test]
    fn a_snapshot_round_trips_and_only_its_own_segments_count() {
        let all = entries();
        let segs = segments(7, all.clone());
        assert_eq!(segs.len(), 1);
        let done = Done::of(7, "c0e250c59f2549ff", &segs);
        let key = &done.segment_keys()[0];
        assert_eq!(key, "index/0000000000000007/c0e250c59f2549ff-000000");
        let back = Segment::decode(key, &segs[0]).unwrap();
        assert_eq!(back.entries, all);
        done.verify_segment(0, key, &segs[0]).unwrap();
        assert_eq!(Done::decode(&done_key(7), &done.encode()).unwrap(), done);
        assert_eq!(parse_done_key(&done_key(7)), Some(7));
        assert_eq!(parse_done_key(key), None);
        assert_eq!(parse_snapshot_epoch(key), Some(7));

        // Another attempt's segment under the same key, or one copied under another key.
        let other = segments(7, all[..2].to_vec());
        let err = done.verify_segment(0, key, &other[0]).unwrap_err();
        assert!(
            err.to_string().contains("not the segment its DONE"),
            "{err}"
        );
        let err = Segment::decode(&segment_key(8, "c0e250c59f2549ff", 0), &segs[0]).unwrap_err();
        assert!(err.to_string().contains("not its key's"), "{err}");
        let err = Done::decode(&done_key(8), &done.encode()).unwrap_err();
        assert!(err.to_string().contains("not its key's"), "{err}");
    }

    #[test]
    fn large_snapshots_are_cut_into_segments() {
        let big = Event::PackAdded {
            name: "p".into(),
            size: u64::MAX,
            entries: vec![],
        };
        let n = SEGMENT_BYTES / 40 + 10;
        let all: Vec<Entry> = (0..n as u64).map(|s| entry(s, big.clone())).collect();
        let segs = segments(1, all.clone());
        assert!(segs.len() >= 2, "{} segments", segs.len());
        let done = Done::of(1, "w", &segs);
        let mut back = Vec::new();
        for (i, key) in done.segment_keys().iter().enumerate() {
            done.verify_segment(i, key, &segs[i]).unwrap();
            back.extend(Segment::decode(key, &segs[i]).unwrap().entries);
        }
        assert_eq!(back, all);
        // An empty snapshot still has its one segment.
        assert_eq!(segments(1, vec![]).len(), 1);
    }

    #[test]
    fn torn_or_hostile_snapshots_are_refused() {
        let segs = segments(7, entries());
        let key = segment_key(7, "w", 0);
        for cut in [0, 8, segs[0].len() / 2, segs[0].len() - 1] {
            assert!(Segment::decode(&key, &segs[0][..cut])
                .unwrap_err()
                .is_corrupt());
        }
        // A count of entries beyond the bytes there, with a repaired check.
        let mut body = segs[0][..segs[0].len() - CHECK_LEN].to_vec();
        body[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let sum = check(&body);
        body.extend_from_slice(&sum);
        let err = Segment::decode(&key, &body).unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
        // A DONE naming no segment.
        let mut done = Done::of(7, "w", &segs);
        done.segments.clear();
        let err = Done::decode(&done_key(7), &done.encode()).unwrap_err();
        assert!(err.to_string().contains("0 segments"), "{err}");
    }
}
