//! Writes valid samples of every structure the targets decode, one folder per target, as the
//! campaign's starting corpus: `cargo run -p aetherflow-fuzz-targets --example seeds -- DIR`.
//! Each sample is written twice: with mode byte 0 (checksums repaired) and 1 (as is).

use std::fs;
use std::io::Cursor;
use std::path::Path;

use aetherflow_engine::archive::{archive_directory, ArchiveOptions};
use aetherflow_engine::format::trailer::{Trailer, FIXED_END};
use aetherflow_engine::{
    compress, decompress, AfSource, CompressOptions, DecompressOptions, NoProgress, Sink, Source,
};
use aetherflow_store::{Checksum, ChunkId, ChunkInfo, Codec, Extent, Manifest, SeedBinding};

fn af(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compress(
        Source::Stream(Box::new(Cursor::new(data.to_vec()))),
        &mut out,
        &CompressOptions::default(),
        &NoProgress,
    )
    .unwrap();
    out
}

fn text(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"the quick brown fox "[i % 20] ^ (i / 997) as u8)
        .collect()
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds DIR");
    let dir = Path::new(&dir);
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let folder = dir.join(target);
        fs::create_dir_all(&folder).unwrap();
        for mode in [0u8, 1] {
            let mut sample = vec![mode];
            sample.extend_from_slice(bytes);
            fs::write(folder.join(format!("seed-{name}-{mode}")), sample).unwrap();
        }
    };

    // Small contents: a target's cost grows with what an input decodes to, and the campaign
    // needs millions of runs.
    let mut mixed = text(3_000);
    mixed.extend(vec![0u8; 5_000]);
    mixed.extend(text(2_000));
    for (name, data) in [
        ("text", text(4_000)),
        ("mixed", mixed),
        ("tiny", b"hi".to_vec()),
    ] {
        let file = af(&data);
        put("af_decompress", name, &file);
        put("af_stats", name, &file);
        put("af_header", name, &file[..48]);
        let tail_len =
            Trailer::len_from_end(file[file.len() - FIXED_END..].try_into().unwrap()).unwrap();
        let trailer = &file[file.len() - tail_len..];
        put("af_trailer", name, trailer);
        let t = Trailer::decode(trailer, false).unwrap();
        let (from, len) = (t.index_offset as usize, t.index_len as usize);
        put("af_index", name, &file[from..from + len]);
        put("af_records", name, &file[48..from]);
    }

    // A directory archive: its content starts with the entry table, ends with amendments.
    let tree = tempfile::tempdir().unwrap();
    fs::create_dir(tree.path().join("sub")).unwrap();
    fs::write(tree.path().join("sub/a.txt"), text(2000)).unwrap();
    fs::write(tree.path().join("b.bin"), [7u8; 300]).unwrap();
    std::os::unix::fs::symlink("sub/a.txt", tree.path().join("link")).unwrap();
    let mut archive = Vec::new();
    archive_directory(
        tree.path(),
        &mut archive,
        &ArchiveOptions::default(),
        &NoProgress,
    )
    .unwrap();
    put("af_decompress", "archive", &archive);
    let mut content = Vec::new();
    decompress(
        AfSource::Stream(Box::new(Cursor::new(archive))),
        Sink::Stream(&mut content),
        &DecompressOptions::default(),
        &NoProgress,
    )
    .unwrap();
    put("af_entry_table", "tree", &content);

    let chunk = |n: u8| Extent::Chunk {
        id: ChunkId([n; 32]),
        raw_len: 1000 + u32::from(n),
        stored_len: 500,
    };
    let plain = Manifest {
        size: 2002 + 4096,
        created: 1_700_000_000,
        checksum: Checksum::Plain([9; 32]),
        seed: None,
        extents: vec![chunk(0), Extent::Zero { len: 4096 }, chunk(2)],
    };
    put("manifest", "plain", &plain.encode());
    let seeded = Manifest {
        checksum: Checksum::Sealed {
            nonce: [4; 24],
            sealed: [5; 48],
        },
        seed: Some(SeedBinding {
            tag: [3; 32],
            kdf: [8192, 1, 1],
        }),
        ..plain.clone()
    };
    put("manifest", "seeded", &seeded.encode());

    let mut pack = aetherflow_s3::pack::PackBuilder::new();
    for n in 0..3u8 {
        let payload = text(700 + usize::from(n) * 300);
        let info = ChunkInfo {
            id: ChunkId::plain(&payload),
            codec: Codec::Raw,
            nonce_stored: n == 1,
            raw_len: payload.len() as u32,
            stored_len: payload.len() as u32,
            check: aetherflow_store::types::payload_check(&payload),
        };
        pack.append(&info, &payload);
    }
    let (pack, entries) = pack.finish();
    put("pack_index", "three", &pack);
    let (offset, info) = entries[1];
    let end = offset as usize + aetherflow_s3::pack::record_len(&info) as usize;
    put("pack_record", "one", &pack[offset as usize..end]);
    // A log record with one event of each kind.
    {
        use aetherflow_s3::log_record::{Event, LogRecord, Origin};
        use aetherflow_store::BlockId;
        let record = LogRecord {
            writer: "c0e250c59f2549ff".into(),
            seq: 7,
            epoch: 2,
            events: vec![
                Event::BlockAdded {
                    id: BlockId::random(),
                    manifest: std::sync::Arc::new(plain.clone()),
                    imported: false,
                },
                Event::BlockAdded {
                    id: BlockId::random(),
                    manifest: std::sync::Arc::new(plain.clone()),
                    imported: true,
                },
                Event::BlockFreed {
                    id: BlockId::random(),
                    added_in: Origin {
                        writer: "c0e250c59f2549ff".into(),
                        seq: 3,
                    },
                },
                Event::PackAdded {
                    name: "c0e250c59f2549ff-000003".into(),
                    size: pack.len() as u64,
                    entries: entries.clone(),
                },
                Event::PackDeleted {
                    name: "c0e250c59f2549ff-000001".into(),
                },
                Event::DeltaAdded {
                    layer: 7,
                    seq: 4,
                    size: 120,
                },
                Event::HeadChanged { name: "v".into() },
                Event::LayerDeleted { layer: 7 },
            ],
        };
        put("s3_log_record", "every-event", &record.encode());

        // The same events as a snapshot of the log: a segment and its DONE.
        use aetherflow_s3::log_snapshot::{segments, Done, Entry};
        let entries: Vec<Entry> = record
            .events
            .iter()
            .enumerate()
            .map(|(i, event)| Entry {
                epoch: 2,
                origin: Origin {
                    writer: "c0e250c59f2549ff".into(),
                    seq: i as u64,
                },
                written_ms: 1_800_000_000_000,
                event: event.clone(),
            })
            .collect();
        let segs = segments(2, entries);
        put("s3_log_snapshot", "segment", &segs[0]);
        put(
            "s3_log_snapshot",
            "done",
            &Done::of(2, "c0e250c59f2549ff", &segs).encode(),
        );
    }
    put(
        "s3_identity",
        "v2",
        &aetherflow_s3::meta::encode_identity(aetherflow_s3::meta::META_VERSION, &[7; 16]),
    );

    // A volume's head (with a lease and a sealed layer) and a delta of its top layer.
    {
        use aetherflow_s3::volume_objects::{ChainLink, Delta, Head, Lease};
        use aetherflow_store::{MapEntry, VolumeRecord};
        let head = Head {
            record: VolumeRecord {
                name: "v".into(),
                size: 1 << 30,
                chunk_size: 65536,
                read_only: false,
                seed: None,
                origin: Some("base".into()),
                created: 1_800_000_000,
                written: 0,
                zeroed: 0,
            },
            chain: vec![
                ChainLink {
                    layer: 7,
                    sealed: None,
                },
                ChainLink {
                    layer: 3,
                    sealed: Some(12),
                },
            ],
            lease: Some(Lease {
                owner: "0123456789abcdef".into(),
                expires_ms: 1_800_000_000_000,
            }),
        };
        put("s3_volume_head", "leased", &head.encode());
        let delta = Delta {
            layer: 7,
            seq: 4,
            size: 1 << 30,
            chunk_size: 65536,
            cleared: vec![(100, 200)],
            rows: vec![
                (1, MapEntry::Zero),
                (2, MapEntry::Hole),
                (
                    3,
                    MapEntry::Chunk {
                        id: ChunkId([9; 32]),
                        stored_len: 4000,
                    },
                ),
            ],
        };
        put("s3_volume_delta", "rows", &delta.encode());
    }

    // An export document with data, from a manager holding two blocks.
    use aetherflow_vm::{Backend, VirtualMemory, VmConfig};
    let vm = VirtualMemory::open(VmConfig::new(Backend::Memory)).unwrap();
    vm.allocate(&text(3000), None).unwrap();
    vm.allocate(b"second block", None).unwrap();
    let mut doc = Vec::new();
    vm.export(&mut doc, true, None).unwrap();
    put("import", "two-blocks", &doc);

    // NBD: headers of each command, option payloads, and whole sessions of a real client's
    // opening (fixed newstyle, structured replies, base:allocation, GO) and a few requests.
    for (name, extended, kind, flags, offset, len) in [
        ("read", false, 0u16, 0u16, 4096u64, 512u64),
        ("write", false, 1, 1, 0, 16),
        ("status", true, 7, 8, 0, 1 << 40),
        ("zeroes", true, 6, 2, 1 << 20, 1 << 30),
    ] {
        let mut h = Vec::new();
        let magic: u32 = if extended { 0x21e4_1c71 } else { 0x2560_9513 };
        h.extend_from_slice(&magic.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&1u64.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        if extended {
            h.extend_from_slice(&len.to_be_bytes());
        } else {
            h.extend_from_slice(&(len as u32).to_be_bytes());
        }
        let mode: u8 = if extended { 1 | 4 | 8 } else { 4 | 8 };
        let mut sample = vec![mode];
        sample.extend_from_slice(&h);
        sample.extend_from_slice(&(1u64 << 41).to_be_bytes());
        let folder = dir.join("nbd_request");
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join(format!("seed-{name}")), &sample).unwrap();
    }
    let option = |name: &str, queries: &[&str]| {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        p
    };
    let options = dir.join("nbd_options");
    fs::create_dir_all(&options).unwrap();
    fs::write(
        options.join("seed-meta"),
        option("ram", &["base:allocation"]),
    )
    .unwrap();
    let mut go = 3u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"ram");
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&3u16.to_be_bytes());
    fs::write(options.join("seed-go"), &go).unwrap();
    let opt = |code: u32, payload: &[u8]| {
        let mut o = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
        o.extend_from_slice(&code.to_be_bytes());
        o.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        o.extend_from_slice(payload);
        o
    };
    let request = |kind: u16, offset: u64, len: u32| {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&9u64.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    };
    let mut session = 3u32.to_be_bytes().to_vec(); // client flags
    session.extend(opt(8, &[])); // structured replies
    session.extend(opt(10, &option("ram", &["base:allocation"])));
    session.extend(opt(7, &go));
    session.extend(request(1, 100, 4));
    session.extend_from_slice(b"abcd");
    session.extend(request(0, 100, 4));
    session.extend(request(7, 0, 1 << 20));
    session.extend(request(3, 0, 0));
    session.extend(request(2, 0, 0));
    let sessions = dir.join("nbd_session");
    fs::create_dir_all(&sessions).unwrap();
    fs::write(sessions.join("seed-structured"), &session).unwrap();
    let mut simple = 3u32.to_be_bytes().to_vec();
    simple.extend(opt(3, &[])); // list
    simple.extend(opt(1, b"ram")); // export name
    simple.extend(request(0, 0, 16));
    fs::write(sessions.join("seed-simple"), &simple).unwrap();
}
