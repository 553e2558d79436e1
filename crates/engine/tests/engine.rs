//! Engine round trips, determinism, ranged reads, sparse files and hostile inputs.

use std::io::{Cursor, Seek, SeekFrom, Write};

use aetherflow_engine::format::header::Header;
use aetherflow_engine::format::index::Index;
use aetherflow_engine::format::record::Record;
use aetherflow_engine::format::trailer::{Trailer, FIXED_END};
use aetherflow_engine::{
    compress, decompress, AfFile, AfSource, ChunkParams, CompressOptions, DecompressOptions, Error,
    KdfParams, Limits, NoProgress, Seed, Sink, Source,
};
use proptest::prelude::*;

#[path = "engine/archive.rs"]
mod archive;

const SMALL: ChunkParams = ChunkParams {
    min: 64,
    avg: 256,
    max: 1024,
};

fn options<'a>(seed: Option<&'a Seed>, level: i32, threads: usize) -> CompressOptions<'a> {
    CompressOptions {
        level,
        threads,
        chunking: SMALL,
        seed,
        kdf: KdfParams::MINIMUM,
        salt: Some([5; 16]),
        archive: false,
    }
}

fn pack(data: &[u8], opts: &CompressOptions<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    compress(Source::from_bytes(data), &mut out, opts, &NoProgress).unwrap();
    out
}

fn unpack_stream(
    af: &[u8],
    seed: Option<&Seed>,
    threads: usize,
) -> aetherflow_engine::Result<Vec<u8>> {
    let mut out = Vec::new();
    let opts = DecompressOptions {
        threads,
        seed,
        limits: Limits::default(),
    };
    decompress(
        AfSource::Stream(Box::new(Cursor::new(af.to_vec()))),
        Sink::Stream(&mut out),
        &opts,
        &NoProgress,
    )?;
    Ok(out)
}

fn unpack_file(af: &[u8], seed: Option<&Seed>) -> aetherflow_engine::Result<Vec<u8>> {
    let mut input = tempfile::tempfile().unwrap();
    input.write_all(af).unwrap();
    input.seek(SeekFrom::Start(0)).unwrap();
    let output = tempfile::tempfile().unwrap();
    let opts = DecompressOptions {
        threads: 2,
        seed,
        limits: Limits::default(),
    };
    decompress(
        AfSource::File(input),
        Sink::File(&output),
        &opts,
        &NoProgress,
    )?;
    Ok(std::fs::read(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&output)
    ))
    .unwrap())
}

/// Content with the shapes that matter: noise, text, zeros and repeats of earlier pieces.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3000),
        (1usize..4000).prop_map(|n| vec![0u8; n]),
        (1usize..200).prop_map(|n| b"text compresses well; ".repeat(n)),
    ];
    (
        prop::collection::vec(piece, 0..6),
        prop::collection::vec(0usize..6, 0..4),
    )
        .prop_map(|(pieces, repeats)| {
            let mut out: Vec<u8> = pieces.concat();
            for r in repeats {
                if let Some(p) = pieces.get(r) {
                    out.extend_from_slice(p);
                }
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_input_round_trips(data in content(), level in 1i32..=22, seeded in any::<bool>(), threads in 1usize..=2) {
        let seed = Seed::new("proptest seed").unwrap();
        let seed = seeded.then_some(&seed);
        let af = pack(&data, &options(seed, level, threads));
        prop_assert_eq!(&unpack_stream(&af, seed, threads).unwrap(), &data);
        prop_assert_eq!(&unpack_file(&af, seed).unwrap(), &data);
    }
}

#[test]
fn output_is_deterministic_across_thread_counts() {
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i * 7 % 251) as u8 ^ (i >> 11) as u8)
        .collect();
    let seed = Seed::new("s").unwrap();
    for seed in [None, Some(&seed)] {
        let one = pack(&data, &options(seed, 3, 1));
        let two = pack(&data, &options(seed, 3, 2));
        let many = pack(&data, &options(seed, 3, 7));
        assert_eq!(one, two);
        assert_eq!(one, many);
    }
}

#[test]
fn duplicates_are_stored_once() {
    let block: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let chunking = ChunkParams {
        min: 4096,
        avg: 16384,
        max: 65536,
    };
    let opts = CompressOptions {
        chunking,
        ..options(None, 3, 2)
    };
    let once = pack(&block, &opts);
    let twice = pack(&[block.clone(), block.clone()].concat(), &opts);
    // The copy costs only the chunks around the seam, where boundaries have not yet resynchronised.
    let seam = 2 * chunking.max as usize;
    assert!(
        twice.len() < once.len() + seam,
        "{} vs {}",
        twice.len(),
        once.len()
    );
}

#[test]
fn zeros_cost_almost_nothing() {
    let opts = CompressOptions {
        salt: Some([0; 16]),
        ..CompressOptions::default()
    };
    let af = pack(&vec![0u8; 1 << 20], &opts);
    assert!(af.len() <= 256, "1 MiB of zeros took {} bytes", af.len());
    assert_eq!(unpack_stream(&af, None, 2).unwrap(), vec![0u8; 1 << 20]);
}

#[test]
fn ranged_reads_match_the_original() {
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| {
            if (100_000..150_000).contains(&i) {
                0
            } else {
                (i * 31 % 253) as u8
            }
        })
        .chain((0..40_000u32).map(|i| (i * 31 % 253) as u8))
        .collect();
    let seed = Seed::new("range").unwrap();
    for seed in [None, Some(&seed)] {
        let af = pack(&data, &options(seed, 3, 2));
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&af).unwrap();
        let af = AfFile::open(file, seed, &Limits::default()).unwrap();
        for (offset, len) in [
            (0, 10),
            (99_990, 20),
            (123_456, 70_000),
            (299_000, 100_000),
            (339_990, 50),
            (400_000, 5),
        ] {
            let end = (offset + len).min(data.len());
            let expected = data.get(offset..end).unwrap_or(&[]);
            assert_eq!(
                af.read_range(offset as u64, len).unwrap(),
                expected,
                "range {offset}+{len}"
            );
        }
    }
}

#[test]
fn encrypted_without_seed_shows_totals_only() {
    let seed = Seed::new("private").unwrap();
    let af = pack(
        b"secret content secret content",
        &options(Some(&seed), 3, 1),
    );
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&af).unwrap();
    let opened = AfFile::open(file.try_clone().unwrap(), None, &Limits::default()).unwrap();
    let info = opened.info().unwrap();
    assert!(info.encrypted && info.sha256.is_none());
    assert!(matches!(opened.read_range(0, 4), Err(Error::SeedRequired)));
    let wrong = Seed::new("public").unwrap();
    assert!(matches!(
        AfFile::open(file, Some(&wrong), &Limits::default()),
        Err(Error::WrongSeed)
    ));
    assert!(matches!(
        unpack_stream(&af, Some(&wrong), 1),
        Err(Error::WrongSeed)
    ));
    assert!(matches!(
        unpack_stream(&af, None, 1),
        Err(Error::SeedRequired)
    ));
    // Ciphertext does not contain the plaintext.
    assert!(!af.windows(6).any(|w| w == b"secret"));
}

#[test]
fn sparse_file_holes_are_not_read_and_come_back_as_holes() {
    let mut file = tempfile::tempfile().unwrap();
    file.seek(SeekFrom::Start(1 << 40)).unwrap();
    file.write_all(b"data in the middle of a terabyte").unwrap();
    file.set_len(2 << 40).unwrap();
    let mut af = Vec::new();
    let summary = compress(
        Source::File(file),
        &mut af,
        &CompressOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(summary.totals.logical_bytes, 2 << 40);
    assert!(summary.totals.hole_bytes > (2 << 40) - (1 << 20));
    assert!(af.len() < 4096, "{} bytes", af.len());
    // Two terabytes of holes are too many to hash: they stay out of the digest.
    assert_eq!(af[10] & 4, 0);

    let mut input = tempfile::tempfile().unwrap();
    input.write_all(&af).unwrap();
    let output = tempfile::tempfile().unwrap();
    decompress(
        AfSource::File(input),
        Sink::File(&output),
        &DecompressOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let meta = output.metadata().unwrap();
    assert_eq!(meta.len(), 2 << 40);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) < 1024,
        "restored file is not sparse"
    );
    let mut probe = vec![0u8; 32];
    std::os::unix::fs::FileExt::read_exact_at(&output, &mut probe, 1 << 40).unwrap();
    assert_eq!(&probe, b"data in the middle of a terabyte");
}

#[test]
fn a_sparse_file_with_small_holes_has_the_files_own_sha256() {
    use sha2::Digest;
    // 64 MiB with holes between three stretches of data: small enough to hash the holes.
    let mut file = tempfile::tempfile().unwrap();
    let mut whole = vec![0u8; 64 << 20];
    for at in [0usize, 20 << 20, 60 << 20] {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 ^ 7).collect();
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        file.write_all(&data).unwrap();
        whole[at..at + data.len()].copy_from_slice(&data);
    }
    file.set_len(64 << 20).unwrap();
    let mut af = Vec::new();
    let summary = compress(
        Source::File(file),
        &mut af,
        &CompressOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(summary.totals.hole_bytes > 60 << 20, "the holes were found");
    let expected: [u8; 32] = sha2::Sha256::digest(&whole).into();
    assert_eq!(
        summary.sha256, expected,
        "what sha256sum of the file prints"
    );
    // The restore checks the same digest, holes included, and keeps the holes.
    let mut input = tempfile::tempfile().unwrap();
    input.write_all(&af).unwrap();
    let output = tempfile::tempfile().unwrap();
    let restored = decompress(
        AfSource::File(input),
        Sink::File(&output),
        &DecompressOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(restored.sha256, expected);
    // So does a streamed restore, where the holes come out as zeros.
    assert_eq!(unpack_stream(&af, None, 2).unwrap(), whole);
    assert_ne!(af[10] & 4, 0, "the header says the holes are hashed");
}

#[test]
fn pipe_to_pipe_references_resolve_from_the_window() {
    let block: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    let data = [block.clone(), b"between".to_vec(), block].concat();
    let af = pack(&data, &options(None, 3, 2));
    assert_eq!(unpack_stream(&af, None, 2).unwrap(), data);
}

// ---- hostile files, crafted with the format's own writers ----

fn sample() -> Vec<u8> {
    let data: Vec<u8> = (0..20_000u32)
        .map(|i| (i % 97) as u8 ^ (i >> 9) as u8)
        .collect();
    pack(&data, &options(None, 3, 1))
}

/// Where the trailer starts, and the trailer.
fn trailer_of(af: &[u8]) -> (usize, Trailer) {
    let len = Trailer::len_from_end(af[af.len() - FIXED_END..].try_into().unwrap()).unwrap();
    let at = af.len() - len;
    (at, Trailer::decode(&af[at..], false).unwrap())
}

fn replace_trailer(af: &mut Vec<u8>, edit: impl FnOnce(&mut Trailer)) {
    let (at, mut trailer) = trailer_of(af);
    edit(&mut trailer);
    af.truncate(at);
    af.extend_from_slice(&trailer.encode());
}

#[test]
fn a_trailer_claiming_a_huge_index_is_refused_before_allocating() {
    let mut af = sample();
    let (at, _) = trailer_of(&af);
    replace_trailer(&mut af, |t| {
        t.index_offset = 60;
        t.index_len = at as u64 - 60;
    });
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&af).unwrap();
    let tight = Limits {
        max_index_bytes: 64,
        ..Limits::default()
    };
    assert!(matches!(
        AfFile::open(file, None, &tight),
        Err(Error::LimitExceeded(_))
    ));
}

#[test]
fn a_streamed_index_claiming_billions_of_entries_is_refused() {
    let af = sample();
    // Rebuild the tail: the end record, then an index whose count is absurd, then a trailer.
    let header_len = Header::new(3, false, SMALL, None).encoded_len();
    let (_, trailer) = trailer_of(&af);
    let mut crafted = af[..trailer.index_offset as usize].to_vec();
    crafted.extend_from_slice(&(u64::MAX / 32).to_le_bytes());
    crafted.extend_from_slice(&[0; 64]);
    assert!(crafted.len() > header_len);
    match unpack_stream(&crafted, None, 1) {
        Err(Error::LimitExceeded(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_record_claiming_a_huge_chunk_is_refused() {
    let af = sample();
    let header_len = Header::new(3, false, SMALL, None).encoded_len();
    let mut crafted = af[..header_len].to_vec();
    let id = aetherflow_engine::crypto::ChunkId([0; 32]);
    let record = Record::Data {
        codec: aetherflow_engine::format::record::Codec::Zstd,
        raw_len: 3 << 30,
        stored_len: 100,
        id,
        payload_check: [0; 8],
    };
    crafted.extend_from_slice(&record.encode());
    crafted.extend_from_slice(&[0; 100]);
    assert!(matches!(
        unpack_stream(&crafted, None, 1),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn a_header_asking_for_a_terabyte_of_kdf_memory_is_refused() {
    let seed = Seed::new("k").unwrap();
    let keys =
        aetherflow_engine::crypto::Keys::derive(&seed, &[1; 16], KdfParams::MINIMUM).unwrap();
    let greedy = KdfParams {
        m_cost_kib: u32::MAX,
        t_cost: 1,
        p_cost: 1,
    };
    let header = Header::new(3, false, SMALL, Some((&keys, [1; 16], greedy)));
    let bytes = header.encode();
    assert!(matches!(
        Header::read(&mut &bytes[..], &Limits::default()),
        Err(Error::LimitExceeded(_))
    ));
}

#[test]
fn an_index_that_disagrees_with_the_body_is_corrupt() {
    let mut af = sample();
    let (at, trailer) = trailer_of(&af);
    let start = trailer.index_offset as usize;
    let mut index = Index::decode(&af[start..at], None).unwrap();
    index.entries.swap(0, 1);
    let encoded = index.encode(None);
    af.splice(start..at, encoded);
    assert!(matches!(
        unpack_stream(&af, None, 1),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let af = sample();
    for len in (0..af.len())
        .step_by(97)
        .chain([af.len() - 1, trailer_of(&af).0])
    {
        let cut = &af[..len];
        assert!(
            unpack_stream(cut, None, 2).is_err(),
            "stream truncated at {len}"
        );
        assert!(unpack_file(cut, None).is_err(), "file truncated at {len}");
    }
}

#[test]
fn every_sampled_bit_flip_is_an_error() {
    let seed = Seed::new("flip").unwrap();
    for seed in [None, Some(&seed)] {
        let data: Vec<u8> = (0..6_000u32)
            .map(|i| (i % 97) as u8 ^ (i >> 9) as u8)
            .chain(vec![0; 3000])
            .collect();
        let af = pack(&[data.clone(), data].concat(), &options(seed, 3, 1));
        for byte in (0..af.len()).step_by(11) {
            let mut bad = af.clone();
            bad[byte] ^= 1 << (byte % 8);
            assert!(
                unpack_stream(&bad, seed, 1).is_err(),
                "stream flip at byte {byte}"
            );
            assert!(unpack_file(&bad, seed).is_err(), "file flip at byte {byte}");
        }
    }
}
