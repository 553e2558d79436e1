//! The memory manager's integration tests: SPEC §4 behaviour on both built-in backends, faults,
//! and crashes.

mod crash;
mod faults;
#[cfg(feature = "s3")]
mod s3_reads;
mod volumes;

use std::path::Path;

use aetherflow_engine::KdfParams;
use aetherflow_vm::{Backend, BlockId, Error, Seed, VirtualMemory, VmConfig};
use sha2::{Digest, Sha256};

/// A manager with cheap seed derivation, so that tests can use many seeds.
pub fn config(backend: Backend) -> VmConfig {
    let mut c = VmConfig::new(backend);
    c.kdf = KdfParams::MINIMUM;
    c
}

pub fn local(dir: &Path) -> VirtualMemory {
    VirtualMemory::open(config(Backend::Local(dir.to_path_buf()))).unwrap()
}

/// Both backends, each fresh; the directory lives as long as the closure runs.
fn each_backend(test: impl Fn(&VirtualMemory)) {
    test(&VirtualMemory::open(config(Backend::Memory)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    test(&local(dir.path()));
}

/// Deterministic text-like content: compressible, with repeats far apart.
pub fn text(len: usize, salt: u64) -> Vec<u8> {
    let words = [
        "alpha ", "bravo ", "charlie ", "delta ", "echo ", "foxtrot ", "golf ", "hotel ",
    ];
    let mut state = salt
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(state >> 61) as usize].as_bytes());
        if state % 17 == 0 {
            out.extend_from_slice(format!("{}\n", state % 100_000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Incompressible bytes.
pub fn noise(len: usize, salt: u64) -> Vec<u8> {
    let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

pub fn seed(s: &str) -> Seed {
    Seed::new(s.as_bytes().to_vec()).unwrap()
}

#[test]
fn blocks_of_every_kind_round_trip() {
    each_backend(|vm| {
        let mut mixed = text(300_000, 1);
        mixed.extend(vec![0u8; 2_000_000]);
        mixed.extend(noise(700_000, 2));
        let cases = [
            Vec::new(),
            vec![42],
            text(1 << 20, 3),
            noise(1 << 20, 4),
            vec![0; 5 << 20],
            mixed,
        ];
        for data in &cases {
            let id = vm.allocate(data, None).unwrap();
            assert_eq!(
                &vm.read(id, None).unwrap()[..],
                &data[..],
                "{} bytes",
                data.len()
            );
            let mut streamed = Vec::new();
            let summary = vm.read_to(id, None, None, &mut streamed).unwrap();
            assert!(summary.whole_checked);
            assert_eq!(streamed, *data);
        }
        let stats = vm.stats().unwrap();
        assert_eq!(stats.total_blocks, cases.len() as u64);
        let expected: Vec<String> = cases.iter().map(|d| hex(&Sha256::digest(d))).collect();
        for d in &stats.block_details {
            assert!(
                expected.contains(d.checksum.as_ref().unwrap()),
                "checksum is the SHA-256 of the data"
            );
        }
    });
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn ranges_read_exactly_the_bytes_asked_for() {
    let vm = VirtualMemory::open(config(Backend::Memory)).unwrap();
    let mut data = text(900_000, 5);
    data.extend(vec![0u8; 400_000]);
    data.extend(noise(500_000, 6));
    let id = vm.allocate(&data, None).unwrap();
    for (start, end) in [
        (0, 1),
        (0, data.len()),
        (123_456, 1_000_001),
        (899_999, 1_300_001),
        (data.len(), data.len()),
    ] {
        let mut out = Vec::new();
        let s = vm
            .read_to(id, None, Some(start as u64..end as u64), &mut out)
            .unwrap();
        assert_eq!(out, data[start..end], "{start}..{end}");
        assert_eq!(s.bytes, (end - start) as u64);
    }
    let err = vm
        .read_to(id, None, Some(0..data.len() as u64 + 1), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn seeds_guard_their_blocks_even_from_the_cache() {
    each_backend(|vm| {
        let data = text(200_000, 7);
        let id = vm.allocate(&data, Some(&seed("right"))).unwrap();
        assert!(matches!(vm.read(id, None), Err(Error::SeedRequired(b)) if b == id));
        assert!(matches!(vm.read(id, Some(&seed("wrong"))), Err(Error::WrongSeed(b)) if b == id));
        assert_eq!(&vm.read(id, Some(&seed("right"))).unwrap()[..], &data[..]);
        let hits = vm.summary().cache.hits;
        // Now it is cached: the cache must still ask for the seed.
        assert!(matches!(
            vm.read(id, Some(&seed("wrong"))),
            Err(Error::WrongSeed(_))
        ));
        assert!(matches!(vm.read(id, None), Err(Error::SeedRequired(_))));
        assert_eq!(&vm.read(id, Some(&seed("right"))).unwrap()[..], &data[..]);
        assert!(vm.summary().cache.hits > hits);
        let detail = &vm.stats().unwrap().block_details[0];
        assert!(
            detail.seeded && detail.checksum.is_none(),
            "a seeded block's checksum is not shown"
        );
    });
}

#[test]
fn seeds_are_separate_dedup_domains() {
    each_backend(|vm| {
        let data = text(2 << 20, 8);
        vm.allocate(&data, Some(&seed("one"))).unwrap();
        let after_one = vm.summary().bytes.physical;
        vm.allocate(&data, Some(&seed("one"))).unwrap();
        let after_same = vm.summary().bytes.physical;
        vm.allocate(&data, Some(&seed("two"))).unwrap();
        let after_two = vm.summary().bytes.physical;
        assert!(
            after_same - after_one < after_one / 100,
            "the same seed deduplicates"
        );
        assert!(
            after_two - after_same > after_one / 2,
            "another seed shares nothing"
        );
    });
}

#[test]
fn the_same_data_twice_costs_almost_nothing_and_zeros_cost_nothing() {
    each_backend(|vm| {
        let data = text(16 << 20, 9);
        let empty = vm.summary().bytes.physical;
        vm.allocate(&data, None).unwrap();
        let first = vm.summary().bytes.physical - empty;
        vm.allocate(&data, None).unwrap();
        let second = vm.summary().bytes.physical - empty - first;
        assert!(
            second * 100 <= first,
            "second copy cost {second} of {first}"
        );
        let before = vm.summary().bytes.physical;
        vm.allocate(&vec![0u8; 64 << 20], None).unwrap();
        let zeros = vm.summary().bytes.physical - before;
        assert!(zeros <= 4096, "64 MiB of zeros cost {zeros} bytes");
        let s = vm.summary();
        assert_eq!(s.bytes.zero, 64 << 20);
        assert_eq!(s.bytes.logical, (32 << 20) + (64 << 20));
        assert!(
            s.ratios.dedup > 1.9 && s.ratios.compression > 1.5,
            "{:?}",
            s.ratios
        );
    });
}

#[test]
fn capacity_is_enforced_and_nothing_is_stored_past_it() {
    let mut c = config(Backend::Memory);
    c.capacity = 3 << 20;
    let vm = VirtualMemory::open(c).unwrap();
    vm.allocate(&text(2 << 20, 10), None).unwrap();
    let before = vm.summary().bytes;
    let err = vm.allocate(&text(2 << 20, 11), None).unwrap_err();
    assert!(
        matches!(err, Error::CapacityExceeded { requested, available, .. } if requested == 2 << 20 && available == 1 << 20),
        "{err}"
    );
    // A stream without a size is stopped as it crosses the line.
    let err = vm
        .allocate_from(std::io::Cursor::new(text(2 << 20, 12)), None, None)
        .unwrap_err();
    assert!(matches!(err, Error::CapacityExceeded { .. }), "{err}");
    let after = vm.summary().bytes;
    assert_eq!(
        (after.logical, after.unique, after.physical),
        (before.logical, before.unique, before.physical)
    );
    assert_eq!(vm.summary().total_blocks, 1);
    vm.allocate(&text(1 << 20, 13), None).unwrap();
}

#[test]
fn freed_blocks_are_gone_and_give_their_space_back() {
    each_backend(|vm| {
        let empty = vm.summary().bytes.physical;
        let ids: Vec<BlockId> = (0..8)
            .map(|i| vm.allocate(&text(1 << 20, 100 + i), None).unwrap())
            .collect();
        let peak = vm.summary().bytes.physical;
        for id in &ids {
            vm.read(*id, None).unwrap();
            vm.free(*id).unwrap();
            assert!(
                matches!(vm.read(*id, None), Err(Error::NotFound(b)) if b == *id),
                "read after free, cached before"
            );
            assert!(
                matches!(vm.free(*id), Err(Error::NotFound(_))),
                "double free"
            );
        }
        assert!(matches!(
            vm.free(BlockId::random()),
            Err(Error::NotFound(_))
        ));
        let s = vm.summary();
        assert_eq!((s.total_blocks, s.bytes.logical, s.bytes.unique), (0, 0, 0));
        assert!(
            s.bytes.physical <= empty + peak / 100,
            "{} of peak {peak}",
            s.bytes.physical
        );
    });
}

#[test]
fn reads_are_counted_and_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let vm = local(dir.path());
        let id = vm.allocate(&text(100_000, 14), None).unwrap();
        for _ in 0..5 {
            vm.read(id, None).unwrap();
        }
        let s = vm.stats().unwrap();
        assert_eq!(s.block_details[0].access_count, 5);
        assert_eq!((s.cache.hits, s.cache.misses), (4, 1));
        id
    };
    let vm = local(dir.path());
    assert_eq!(vm.stats().unwrap().block_details[0].access_count, 5);
    assert_eq!(vm.read(id, None).unwrap().len(), 100_000);
}

#[test]
fn many_threads_allocate_read_and_free_at_once() {
    each_backend(|vm| {
        let shared = text(600_000, 15);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let shared = &shared;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for round in 0..12u64 {
                        let mut data = shared.clone();
                        data.extend(text(50_000, t * 100 + round));
                        let id = vm.allocate(&data, None).unwrap();
                        assert_eq!(vm.read(id, None).unwrap(), data);
                        mine.push((id, data));
                        if round % 3 == 2 {
                            let (id, _) = mine.remove(0);
                            vm.free(id).unwrap();
                        }
                    }
                    for (id, data) in mine {
                        assert_eq!(vm.read(id, None).unwrap(), data);
                    }
                });
            }
        });
        let report = vm.check(true, None).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.blocks_verified, 4 * 8);
    });
}

#[test]
fn stats_have_the_contract_shape() {
    let vm = VirtualMemory::open(config(Backend::Memory)).unwrap();
    let id = vm.allocate(&text(1 << 20, 16), None).unwrap();
    vm.read(id, None).unwrap();
    let json = serde_json::to_value(vm.stats().unwrap()).unwrap();
    for key in [
        "virtualMemoryCapacity",
        "usedCompressedSpace",
        "availableSpace",
        "utilizationPercent",
        "totalBlocks",
        "compressionRatio",
        "totalVirtualData",
        "cacheUsage",
        "blockDetails",
        "bytes",
        "ratios",
        "cache",
        "backend",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["virtualMemoryCapacity"], "100.0TB");
    assert_eq!(json["cacheUsage"], "1.00MB / 50MB");
    assert_eq!(json["backend"], "memory");
    assert_eq!(json["bytes"]["capacity"], 109_951_162_777_600u64);
    assert_eq!(json["bytes"]["logical"], 1 << 20);
    for key in [
        "id",
        "originalSize",
        "compressedSize",
        "ratio",
        "accessCount",
        "checksum",
        "originalBytes",
        "compressedBytes",
    ] {
        assert!(
            json["blockDetails"][0].get(key).is_some(),
            "block detail lacks {key}"
        );
    }
    assert_eq!(json["blockDetails"][0]["originalSize"], "1.00 MB");
}

#[test]
fn an_export_restores_every_block_on_another_manager() {
    let from = VirtualMemory::open(config(Backend::Memory)).unwrap();
    let plain = text(700_000, 20);
    let secret = text(300_000, 21);
    let p = from.allocate(&plain, None).unwrap();
    let s = from.allocate(&secret, Some(&seed("key"))).unwrap();
    let z = from.allocate(&vec![0u8; 3 << 20], None).unwrap();
    from.read(p, None).unwrap();

    let mut doc = Vec::new();
    let summary = from.export(&mut doc, true, Some(&seed("key"))).unwrap();
    assert_eq!((summary.blocks, summary.with_data), (3, 3));
    let json: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(json["success"], true);
    assert_eq!(json["blocks"].as_array().unwrap().len(), 3);
    assert_eq!(json["stats"]["totalBlocks"], 3);

    let to = VirtualMemory::open(config(Backend::Memory)).unwrap();
    let done = to.import(&doc[..], Some(&seed("key"))).unwrap();
    assert_eq!((done.imported, done.skipped.len()), (3, 0));
    assert_eq!(to.read(p, None).unwrap(), plain);
    assert_eq!(to.read(z, None).unwrap(), vec![0u8; 3 << 20]);
    assert!(
        matches!(to.read(s, None), Err(Error::SeedRequired(_))),
        "still guarded after the move"
    );
    assert_eq!(to.read(s, Some(&seed("key"))).unwrap(), secret);
    // Importing again skips what is there rather than duplicating it.
    assert_eq!(
        to.import(&doc[..], Some(&seed("key")))
            .unwrap()
            .skipped
            .len(),
        3
    );

    // Without the seed, the seeded block travels without its data and is skipped on import.
    let mut doc = Vec::new();
    from.export(&mut doc, true, None).unwrap();
    let third = VirtualMemory::open(config(Backend::Memory)).unwrap();
    let done = third.import(&doc[..], None).unwrap();
    assert_eq!(done.imported, 2);
    assert_eq!(
        done.skipped,
        vec![(s.to_string(), "no data in the document".to_string())]
    );

    // `"seeded": null` is not seeded, as absent.
    let id = aetherflow_vm::BlockId::random();
    let null_doc = serde_json::json!({"blocks": [{
        "id": id.to_string(), "data": "aGVsbG8=", "seeded": null,
    }]});
    let fourth = VirtualMemory::open(config(Backend::Memory)).unwrap();
    let done = fourth
        .import(null_doc.to_string().as_bytes(), None)
        .unwrap();
    assert_eq!(done.imported, 1, "{:?}", done.skipped);
    assert_eq!(fourth.read(id, None).unwrap(), &b"hello"[..]);

    // Damaged documents are refused with a reason.
    let mut bad = Vec::new();
    from.export(&mut bad, true, None).unwrap();
    let at = bad.windows(8).position(|w| w == b"\"data\":\"").unwrap() + 10;
    bad[at] = b'!';
    let err = VirtualMemory::open(config(Backend::Memory))
        .unwrap()
        .import(&bad[..], None)
        .unwrap_err();
    assert!(err.to_string().contains("base64"), "{err}");
    let err = VirtualMemory::open(config(Backend::Memory))
        .unwrap()
        .import(&doc[..doc.len() / 2], None)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Content built from pieces: text, noise, zeros, and repeats of an earlier piece.
    fn content() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((0u8..4, 1usize..300_000, any::<u64>()), 0..6).prop_map(
            |pieces| {
                let mut out: Vec<u8> = Vec::new();
                for (kind, len, salt) in pieces {
                    match kind {
                        0 => out.extend(text(len, salt)),
                        1 => out.extend(noise(len, salt)),
                        2 => out.extend(vec![0u8; len]),
                        _ => {
                            let copy = out[..len.min(out.len())].to_vec();
                            out.extend(copy);
                        }
                    }
                }
                out
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_content_round_trips_seeded_or_not(data in content(), seeded: bool) {
            let vm = VirtualMemory::open(config(Backend::Memory)).unwrap();
            let s = seed("property");
            let seed = seeded.then_some(&s);
            let id = vm.allocate(&data, seed).unwrap();
            prop_assert_eq!(&vm.read(id, seed).unwrap()[..], &data[..]);
            let mut streamed = Vec::new();
            vm.read_to(id, seed, None, &mut streamed).unwrap();
            prop_assert_eq!(streamed, data);
        }
    }
}

#[test]
fn a_streamed_whole_read_leaves_the_block_cached() {
    each_backend(|vm| {
        // 8 MiB with the default 50 MiB cache: too big for the whole-read path of the server,
        // small enough to keep.
        let data = text(8 << 20, 21);
        let id = vm.allocate(&data, None).unwrap();
        let misses = vm.summary().cache.misses;
        let mut first = Vec::new();
        vm.read_to(id, None, None, &mut first).unwrap();
        assert_eq!(first, data);
        let hits = vm.summary().cache.hits;
        let mut second = Vec::new();
        vm.read_to(id, None, Some(100..5_000_000), &mut second)
            .unwrap();
        assert_eq!(second, &data[100..5_000_000]);
        let s = vm.summary();
        assert_eq!(s.cache.hits, hits + 1, "the second read is a hit");
        assert_eq!(s.cache.misses, misses + 1, "only the first read missed");
        // A block too large for the cache (over a quarter of it) streams without being kept.
        let big = noise(20 << 20, 22);
        let id = vm.allocate(&big, None).unwrap();
        vm.read_to(id, None, None, &mut std::io::sink()).unwrap();
        let hits = vm.summary().cache.hits;
        vm.read_to(id, None, None, &mut std::io::sink()).unwrap();
        assert_eq!(vm.summary().cache.hits, hits);
    });
}

#[test]
fn a_reused_block_id_never_reuses_a_checksum_nonce() {
    each_backend(|vm| {
        // Import lets a client choose ids: the same id, freed and allocated again with other
        // content under the same seed, must seal its checksum under another nonce.
        let s = seed("nonce");
        let id = BlockId::random();
        vm.allocate_as(id, &text(5000, 31)[..], Some(5000), Some(&s))
            .unwrap();
        let first = vm.store().manifest(id).unwrap().checksum;
        vm.free(id).unwrap();
        vm.allocate_as(id, &text(5000, 32)[..], Some(5000), Some(&s))
            .unwrap();
        let second = vm.store().manifest(id).unwrap().checksum;
        let nonce = |c: &aetherflow_store::Checksum| match c {
            aetherflow_store::Checksum::Sealed { nonce, .. } => *nonce,
            other => panic!("a seeded block's checksum is sealed, not {other:?}"),
        };
        assert_ne!(nonce(&first), nonce(&second));
        assert_eq!(&vm.read(id, Some(&s)).unwrap()[..], &text(5000, 32)[..]);
    });
}

#[test]
fn sealed_chunks_carry_a_nonce_of_their_own() {
    each_backend(|vm| {
        let s = seed("chunks");
        let data = text(600_000, 41);
        let id = vm.allocate(&data, Some(&s)).unwrap();
        let manifest = vm.store().manifest(id).unwrap();
        for chunk in manifest.chunk_refs() {
            let stored = vm.store().chunk(chunk).unwrap();
            assert!(stored.info.nonce_stored);
            // The nonce is not the identity's prefix (what format 1 used).
            assert_ne!(&stored.payload[..24], &chunk.0[..24]);
        }
        let plain = vm.allocate(&data, None).unwrap();
        let manifest = vm.store().manifest(plain).unwrap();
        for chunk in manifest.chunk_refs() {
            assert!(!vm.store().chunk(chunk).unwrap().info.nonce_stored);
        }
        assert_eq!(&vm.read(id, Some(&s)).unwrap()[..], &data[..]);
    });
}
