//! Every decoder of untrusted bytes, as a function that takes arbitrary bytes and must neither
//! panic nor allocate without bound. libFuzzer runs them (`fuzz/fuzz_targets/*`, one line each);
//! `tests/replay.rs` runs them over the checked-in corpus on stable Rust, so that an input that
//! once found a bug fails the test suite if the bug comes back.
//!
//! Checksums stand before most structures, and random bytes almost never pass them. So each
//! target reads its first byte: odd, the rest is decoded as it is (the checks themselves are
//! fuzzed); even, the target first repairs every checksum the layout has ([`repair`]), so that
//! the fuzzer reaches the parsing behind them.
//!
//! | target | decoder |
//! |---|---|
//! | [`af_header`], [`af_records`], [`af_index`], [`af_trailer`] | the `.af` layout, piece by piece |
//! | [`af_entry_table`] | a directory archive's entry table and amendments |
//! | [`af_decompress`], [`af_stats`] | a whole `.af` file: restore, and stats with ranged reads |
//! | [`manifest`] | a block manifest |
//! | [`pack_record`], [`pack_index`] | an S3 pack's records and index |
//! | [`s3_identity`] | an S3 store's identity object |
//! | [`s3_volume_head`], [`s3_volume_delta`] | a volume's head object and a layer's delta on S3 |
//! | [`s3_log_record`] | a record of the bucket's log |
//! | [`s3_log_snapshot`] | a segment of a snapshot of the log, or its `DONE` |
//! | [`import`] | an export document fed to import |
//! | [`nbd::nbd_request`], [`nbd::nbd_options`], [`nbd::nbd_session`] | NBD request headers and their checks, option payloads, a whole connection of client bytes |

pub mod nbd;
pub mod repair;

use std::io::{self, Read, Write};

use aetherflow_engine::format::entry_table::{decode_amendments, decode_table, table_len};
use aetherflow_engine::format::header::Header;
use aetherflow_engine::format::index::Index;
use aetherflow_engine::format::record::Record;
use aetherflow_engine::format::trailer::{Trailer, FIXED_END};
use aetherflow_engine::{
    decompress, AfFile, AfSource, DecompressOptions, Limits, NoProgress, Sink,
};

/// Limits small enough that no input can make a target slow for its size.
fn limits() -> Limits {
    Limits {
        max_index_bytes: 1 << 20,
        max_table_bytes: 1 << 20,
        max_kdf_memory_kib: 8 * 1024,
    }
}

/// Splits off the mode byte: `(repair?, rest)`.
fn mode(data: &[u8]) -> Option<(bool, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first % 2 == 0, rest))
}

/// The input, with its checksums repaired when the mode byte asks for it.
fn input(data: &[u8], fix: impl FnOnce(&mut Vec<u8>)) -> Option<Vec<u8>> {
    let (repair, rest) = mode(data)?;
    let mut bytes = rest.to_vec();
    if repair {
        fix(&mut bytes);
    }
    Some(bytes)
}

pub fn af_header(data: &[u8]) {
    let Some(bytes) = input(data, |b| {
        repair::header(b);
    }) else {
        return;
    };
    if let Ok(header) = Header::read(&mut &bytes[..], &limits()) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(header.encode(), bytes[..header.encoded_len()]);
    }
}

pub fn af_records(data: &[u8]) {
    let Some(bytes) = input(data, |b| repair::records(b)) else {
        return;
    };
    let mut reader = &bytes[..];
    for tag_len in [0, 16] {
        reader = &bytes[..];
        while let Ok((record, _)) = Record::read(&mut reader, 1 << 20, tag_len) {
            if record == Record::End {
                break;
            }
            if let Record::Data { stored_len, .. } = record {
                let n = (stored_len as usize).min(reader.len());
                reader = &reader[n..];
            }
        }
    }
    let _ = reader;
}

pub fn af_index(data: &[u8]) {
    let Some(bytes) = input(data, repair::index) else {
        return;
    };
    if let Ok(index) = Index::decode(&bytes, None) {
        assert_eq!(index.encode(None), bytes);
        let _ = index.entry_at(u64::MAX / 2);
    }
}

pub fn af_trailer(data: &[u8]) {
    let Some(bytes) = input(data, |b| repair::trailer(b)) else {
        return;
    };
    if let Some(end) = bytes.get(bytes.len().saturating_sub(FIXED_END)..) {
        if let Ok(end) = <&[u8; FIXED_END]>::try_from(end) {
            let _ = Trailer::len_from_end(end);
        }
    }
    for encrypted in [false, true] {
        if let Ok(trailer) = Trailer::decode(&bytes, encrypted) {
            let _ = trailer.content_digest(None);
        }
    }
}

pub fn af_entry_table(data: &[u8]) {
    let Some(bytes) = input(data, |b| repair::entry_table(b)) else {
        return;
    };
    let Ok(len) = table_len(&bytes, 1 << 20) else {
        return;
    };
    let len = (len as usize).min(bytes.len());
    if let Ok(table) = decode_table(&bytes[..len], None) {
        let mut rest = bytes[len..].to_vec();
        if data[0] % 2 == 0 {
            repair::amendments(&mut rest, &table.mac);
        }
        let _ = decode_amendments(&rest, &table, None);
    }
}

/// A writer that refuses more than a MiB: a hostile file may claim an exabyte of zeros.
struct Bounded(u64);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_sub(buf.len() as u64);
        if self.0 == 0 {
            return Err(io::Error::other("output limit"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn decompress_options() -> DecompressOptions<'static> {
    // Built field by field: the default asks the system for its parallelism, which costs more
    // than a small input's decompression.
    DecompressOptions {
        threads: 1,
        seed: None,
        limits: limits(),
    }
}

/// Output beyond which a decompression of fuzzed bytes stops: a few chunks reach every path,
/// and a large zero run would otherwise be hashed at length for each input.
const DECOMPRESS_OUTPUT: u64 = 256 << 10;

/// A whole `.af` file decompressed, from a stream and from a file (where the trailer and index
/// are read first).
pub fn af_decompress(data: &[u8]) {
    let Some(bytes) = input(data, |b| repair::af_file(b)) else {
        return;
    };
    let mut out = Bounded(DECOMPRESS_OUTPUT);
    let _ = decompress(
        AfSource::Stream(Box::new(io::Cursor::new(bytes.clone()))),
        Sink::Stream(&mut out),
        &decompress_options(),
        &NoProgress,
    );
    let Ok(file) = file_of(&bytes) else { return };
    let mut out = Bounded(DECOMPRESS_OUTPUT);
    let _ = decompress(
        AfSource::File(file),
        Sink::Stream(&mut out),
        &decompress_options(),
        &NoProgress,
    );
}

/// `stats` of a whole `.af` file, and ranged reads through its index.
pub fn af_stats(data: &[u8]) {
    let Some(bytes) = input(data, |b| repair::af_file(b)) else {
        return;
    };
    let Ok(file) = file_of(&bytes) else { return };
    let Ok(af) = AfFile::open(file, None, &limits()) else {
        return;
    };
    let _ = af.info();
    let logical = af.totals().logical_bytes;
    for (offset, len) in [
        (0, 4096),
        (logical / 2, 100_000),
        (logical.saturating_sub(1), 1),
    ] {
        let _ = af.read_range(offset, len.min(1 << 20) as usize);
    }
}

thread_local! {
    /// One temporary file per thread, rewritten for each input: creating one per input cost
    /// more than decoding it.
    static SCRATCH: std::fs::File = tempfile::tempfile().expect("a temporary file");
}

/// The bytes as a file (a handle on the thread's scratch file, its content replaced).
fn file_of(bytes: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let mut file = SCRATCH.with(std::fs::File::try_clone)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)?;
    Ok(file)
}

pub fn manifest(data: &[u8]) {
    use aetherflow_store::Manifest;
    let Some(bytes) = input(data, |b| repair::manifest(b)) else {
        return;
    };
    if let Ok(m) = Manifest::decode(&bytes, &"fuzz") {
        assert_eq!(
            m.encode(),
            bytes,
            "a decoded manifest encodes back to its bytes"
        );
        assert_eq!(m.encoded_len(), bytes.len() as u64);
    }
}

pub fn pack_record(data: &[u8]) {
    use aetherflow_store::record::{parse_record_header, RECORD_HEADER_LEN};
    let Some(bytes) = input(data, |b| repair::pack_record(b)) else {
        return;
    };
    let Some(header) = bytes.get(..RECORD_HEADER_LEN) else {
        return;
    };
    let header: &[u8; RECORD_HEADER_LEN] = header.try_into().expect("length");
    if let Ok(info) = parse_record_header(header) {
        let whole = aetherflow_s3::pack::record_at(&bytes.clone().into(), 0, &info);
        let _ = aetherflow_s3::pack::check_record("fuzz", 0, whole, &info);
    }
}

pub fn pack_index(data: &[u8]) {
    let Some(bytes) = input(data, |b| repair::pack_index(b)) else {
        return;
    };
    let size = bytes.len() as u64;
    if let Ok(entries) = aetherflow_s3::pack::parse_index("fuzz", size, &bytes) {
        for (offset, info) in entries {
            let record = aetherflow_s3::pack::record_at(&bytes.clone().into(), offset, &info);
            let _ = aetherflow_s3::pack::check_record("fuzz", offset, record, &info);
        }
    }
    // A tail shorter than the pack, as a first ranged GET gives it.
    let _ = aetherflow_s3::pack::index_span("fuzz", size.saturating_mul(2), &bytes);
}

pub fn s3_identity(data: &[u8]) {
    let Some(bytes) = input(data, repair::s3_identity) else {
        return;
    };
    let _ = aetherflow_s3::meta::decode_identity(&bytes);
}

/// A volume head from the bucket: what decodes encodes back to the same head.
pub fn s3_volume_head(data: &[u8]) {
    use aetherflow_s3::volume_objects::Head;
    let Some(bytes) = input(data, |b| repair::volume_head(b)) else {
        return;
    };
    if let Ok(head) = Head::decode("v", &bytes) {
        assert_eq!(Head::decode("v", &head.encode()).expect("re-encoded"), head);
    }
}

/// A delta of a volume layer from the bucket: what decodes encodes back to the same bytes.
pub fn s3_volume_delta(data: &[u8]) {
    use aetherflow_s3::volume_objects::Delta;
    let Some(bytes) = input(data, |b| repair::volume_delta(b)) else {
        return;
    };
    if let Ok(delta) = Delta::decode("delta", &bytes) {
        assert_eq!(delta.encode(), bytes);
    }
}

/// A record of the bucket's log, read under the key its own fields name (the key check is
/// tested apart): what decodes encodes back to the same bytes.
pub fn s3_log_record(data: &[u8]) {
    use aetherflow_s3::log_record::{record_key, LogRecord};
    let Some(bytes) = input(data, |b| repair::s3_log_record(b)) else {
        return;
    };
    // The writer, number and epoch as the record states them, where they would be.
    let key = (|| {
        let n = usize::from(*bytes.get(8)?);
        let writer = std::str::from_utf8(bytes.get(9..9 + n)?).ok()?;
        let seq = u64::from_le_bytes(bytes.get(9 + n..17 + n)?.try_into().ok()?);
        let epoch = u64::from_le_bytes(bytes.get(17 + n..25 + n)?.try_into().ok()?);
        Some(record_key(epoch, writer, seq))
    })()
    .unwrap_or_else(|| "log/0000000000000000/w-0000000000000000".into());
    if let Ok(record) = LogRecord::decode(&key, &bytes) {
        assert_eq!(record.encode(), bytes);
    }
}

/// A segment of a snapshot of the log, or a snapshot's DONE, read under the key its own
/// fields name: what decodes encodes back to the same bytes.
pub fn s3_log_snapshot(data: &[u8]) {
    use aetherflow_s3::log_snapshot::{done_key, segment_key, Done, Segment};
    let Some(bytes) = input(data, |b| repair::s3_log_snapshot(b)) else {
        return;
    };
    let epoch = bytes
        .get(8..16)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if bytes.starts_with(b"AFS3SNP1") {
        if let Ok(done) = Done::decode(&done_key(epoch), &bytes) {
            assert_eq!(done.encode(), bytes);
        }
        return;
    }
    let number = bytes
        .get(16..20)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    if let Ok(segment) = Segment::decode(&segment_key(epoch, "w", number), &bytes) {
        assert_eq!(segment.encode(), bytes);
    }
}

/// An export document imported into an empty in-memory manager. One manager per thread serves
/// every input (opening one costs far more than most imports), emptied after each.
pub fn import(data: &[u8]) {
    use aetherflow_vm::{Backend, VirtualMemory, VmConfig};
    thread_local! {
        static VM: Option<VirtualMemory> = {
            let mut config = VmConfig::new(Backend::Memory);
            config.kdf = aetherflow_engine::KdfParams::MINIMUM;
            config.capacity = 64 << 20;
            VirtualMemory::open(config).ok()
        };
    }
    VM.with(|vm| {
        let Some(vm) = vm else {
            return;
        };
        let _ = vm.import(io::Cursor::new(data).take(1 << 20), None);
        let mut imported = Vec::new();
        vm.store()
            .blocks(&mut |b| {
                imported.push(b.id);
                true
            })
            .expect("an in-memory store lists its blocks");
        for id in imported {
            vm.free(id).expect("a block just listed can be freed");
        }
    });
}

/// A target: arbitrary bytes in, nothing out, no panic.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and the seeds example.
pub const TARGETS: &[(&str, Target)] = &[
    ("af_header", af_header),
    ("af_records", af_records),
    ("af_index", af_index),
    ("af_trailer", af_trailer),
    ("af_entry_table", af_entry_table),
    ("af_decompress", af_decompress),
    ("af_stats", af_stats),
    ("manifest", manifest),
    ("pack_record", pack_record),
    ("pack_index", pack_index),
    ("s3_identity", s3_identity),
    ("s3_volume_head", s3_volume_head),
    ("s3_volume_delta", s3_volume_delta),
    ("s3_log_record", s3_log_record),
    ("s3_log_snapshot", s3_log_snapshot),
    ("import", import),
    ("nbd_request", nbd::nbd_request),
    ("nbd_options", nbd::nbd_options),
    ("nbd_session", nbd::nbd_session),
];
