//! The conformance suite: the [`crate::BlockStore`] contract as tests, run against every backend.
//!
//! A backend's test file instantiates it with [`conformance_tests!`], naming a function that runs
//! a test against a fresh, empty store and cleans up after it:
//!
//! ```text
//! fn with_store(test: &dyn Fn(&dyn BlockStore)) {
//!     test(&LocalStore::in_memory().unwrap())
//! }
//! aetherflow_store::conformance_tests!(with_store);
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::{BlockId, BlockStore, Checksum, ChunkId, Codec, Error, Extent, Manifest, NewChunk};

/// Generates one `#[test]` per contract clause, each run through `$with_store`.
#[macro_export]
macro_rules! conformance_tests {
    ($with_store:path) => {
        $crate::conformance_tests!(blocks: $with_store);
        $crate::conformance_tests!(@volumes $with_store;
            volumes_are_created_once_and_named_safely, volume_maps_commit_overwrite_and_release,
            volumes_and_blocks_share_chunks, snapshots_freeze_and_clones_diverge,
            clearing_a_range_costs_what_it_held, usage_counts_what_only_the_volume_holds);
    };
    // The block clauses alone, for a backend that refuses volumes.
    (blocks: $with_store:path) => {
        $crate::conformance_tests!(@each $with_store;
            commit_then_read_back, block_ids_are_create_if_absent, commit_needs_every_chunk,
            chunks_are_stored_once, free_releases_and_reclaims, shared_chunks_survive_a_free,
            pinned_chunks_stay_committable, staged_but_uncommitted_is_invisible,
            read_counts_add_up, listing_is_ordered_and_stoppable, damage_is_detected_not_returned,
            concurrent_commits_and_frees_stay_consistent);
    };
    (@each $with_store:path; $($name:ident),*) => {$(
        #[test]
        fn $name() {
            $with_store(&|store| $crate::conformance::$name(store));
        }
    )*};
    (@volumes $with_store:path; $($name:ident),*) => {$(
        #[test]
        fn $name() {
            $with_store(&|store| $crate::conformance::volumes::$name(store));
        }
    )*};
}

pub mod volumes;

/// A chunk of `len` bytes whose identity and content follow from `seed`.
pub fn chunk(seed: u8, len: usize) -> NewChunk {
    let payload: Vec<u8> = (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    NewChunk::new(
        ChunkId::plain(&[seed; 8]),
        Codec::Raw,
        // Even seeds look like chunks sealed since format 2: every backend keeps the flag.
        seed % 2 == 0,
        len as u32,
        Bytes::from(payload),
    )
}

/// A manifest over `chunks`, with a zero run in front.
pub fn manifest_of(chunks: &[&NewChunk], zeros: u64) -> Manifest {
    let mut extents = vec![Extent::Zero { len: zeros }];
    extents.extend(chunks.iter().map(|c| Extent::Chunk {
        id: c.id,
        raw_len: c.raw_len,
        stored_len: c.payload.len() as u32,
    }));
    Manifest {
        size: zeros + chunks.iter().map(|c| u64::from(c.raw_len)).sum::<u64>(),
        created: 1_700_000_000,
        checksum: Checksum::Plain([0xAB; 32]),
        seed: None,
        extents,
    }
}

fn put(store: &dyn BlockStore, chunks: &[&NewChunk], zeros: u64) -> BlockId {
    let _pin = store.pin();
    let present = store
        .find_chunks(&chunks.iter().map(|c| c.id).collect::<Vec<_>>())
        .unwrap();
    let mut seen = HashSet::new();
    let new: Vec<NewChunk> = chunks
        .iter()
        .zip(present)
        .filter(|(c, p)| p.is_none() && seen.insert(c.id))
        .map(|(c, _)| (*c).clone())
        .collect();
    let staged = store.stage_chunks(&new).unwrap();
    let id = BlockId::random();
    store
        .commit_block(id, &manifest_of(chunks, zeros), staged)
        .unwrap();
    id
}

fn assert_clean(store: &dyn BlockStore) {
    let mut damage = Vec::new();
    store.verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(damage.is_empty(), "verify found {damage:?}");
}

pub fn commit_then_read_back(store: &dyn BlockStore) {
    let (a, b) = (chunk(1, 1000), chunk(2, 3000));
    let id = put(store, &[&a, &b], 500);
    let m = store.manifest(id).unwrap();
    assert_eq!(m, manifest_of(&[&a, &b], 500));
    for c in [&a, &b] {
        let got = store.chunk(&c.id).unwrap();
        assert_eq!(got.payload, c.payload);
        assert_eq!(got.info, c.info());
    }
    let t = store.totals();
    assert_eq!(
        (t.blocks, t.logical, t.zero, t.unique, t.stored, t.chunks),
        (1, 4500, 500, 4000, 4000, 2)
    );
    assert!(
        t.physical >= 4000,
        "physical {} must count the payloads",
        t.physical
    );
    assert_clean(store);
}

pub fn block_ids_are_create_if_absent(store: &dyn BlockStore) {
    let a = chunk(3, 100);
    let id = put(store, &[&a], 0);
    let before = store.totals();
    let other = chunk(4, 200);
    let staged = store.stage_chunks(std::slice::from_ref(&other)).unwrap();
    let err = store
        .commit_block(id, &manifest_of(&[&other], 0), staged)
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    assert_eq!(
        store.manifest(id).unwrap(),
        manifest_of(&[&a], 0),
        "the first block is untouched"
    );
    let after = store.totals();
    assert_eq!(
        (after.blocks, after.chunks, after.logical),
        (before.blocks, before.chunks, before.logical)
    );
    assert!(matches!(store.chunk(&other.id), Err(Error::NotFound(_))));
}

pub fn commit_needs_every_chunk(store: &dyn BlockStore) {
    let (a, missing) = (chunk(5, 100), chunk(6, 100));
    let staged = store.stage_chunks(std::slice::from_ref(&a)).unwrap();
    let id = BlockId::random();
    let err = store
        .commit_block(id, &manifest_of(&[&a, &missing], 0), staged)
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(matches!(store.manifest(id), Err(Error::NotFound(_))));
    assert_eq!(store.totals().blocks, 0);
    assert!(
        matches!(store.chunk(&a.id), Err(Error::NotFound(_))),
        "nothing of a failed commit is visible"
    );
}

pub fn chunks_are_stored_once(store: &dyn BlockStore) {
    let (a, b) = (chunk(7, 5000), chunk(8, 100));
    put(store, &[&a, &a, &b], 0);
    put(store, &[&a], 0);
    let t = store.totals();
    assert_eq!(
        (t.blocks, t.chunks, t.unique, t.logical),
        (2, 2, 5100, 15100)
    );
    assert_clean(store);
}

pub fn free_releases_and_reclaims(store: &dyn BlockStore) {
    let empty = store.totals().physical;
    let ids: Vec<BlockId> = (0..20u8)
        .map(|i| put(store, &[&chunk(i + 100, 20_000)], 10))
        .collect();
    let peak = store.totals().physical;
    assert!(peak >= empty + 400_000);
    for id in &ids {
        let m = store.free_block(*id).unwrap();
        assert_eq!(m.size, 20_010);
        assert!(matches!(store.manifest(*id), Err(Error::NotFound(_))));
        assert!(
            matches!(store.free_block(*id), Err(Error::NotFound(_))),
            "double free"
        );
    }
    assert!(matches!(
        store.free_block(BlockId::random()),
        Err(Error::NotFound(_))
    ));
    let t = store.totals();
    assert_eq!(
        (t.blocks, t.chunks, t.unique, t.stored, t.logical),
        (0, 0, 0, 0, 0)
    );
    assert!(
        t.physical <= empty + peak / 100,
        "physical {} of peak {peak} after freeing all",
        t.physical
    );
    assert!(matches!(
        store.chunk(&chunk(100, 1).id),
        Err(Error::NotFound(_))
    ));
    assert_clean(store);
}

pub fn shared_chunks_survive_a_free(store: &dyn BlockStore) {
    let (shared, own) = (chunk(9, 4000), chunk(10, 4000));
    let first = put(store, &[&shared, &own], 0);
    let second = put(store, &[&shared], 0);
    store.free_block(first).unwrap();
    assert_eq!(store.chunk(&shared.id).unwrap().payload, shared.payload);
    assert!(matches!(store.chunk(&own.id), Err(Error::NotFound(_))));
    assert_eq!(store.manifest(second).unwrap(), manifest_of(&[&shared], 0));
    assert_eq!(store.totals().chunks, 1);
    assert_clean(store);
}

pub fn pinned_chunks_stay_committable(store: &dyn BlockStore) {
    let c = chunk(11, 3000);
    let old = put(store, &[&c], 0);
    let pin = store.pin();
    assert_eq!(store.find_chunks(&[c.id]).unwrap(), vec![Some(c.info())]);
    store.free_block(old).unwrap(); // the last user goes while the allocation runs
    let id = BlockId::random();
    store
        .commit_block(id, &manifest_of(&[&c], 0), Vec::new())
        .unwrap();
    drop(pin);
    store.free_block(put(store, &[&chunk(12, 10)], 0)).unwrap(); // a later reclaim pass
    assert_eq!(store.chunk(&c.id).unwrap().payload, c.payload);
    assert_clean(store);
}

pub fn staged_but_uncommitted_is_invisible(store: &dyn BlockStore) {
    let c = chunk(13, 2000);
    drop(store.stage_chunks(std::slice::from_ref(&c)).unwrap());
    assert_eq!(store.find_chunks(&[c.id]).unwrap(), vec![None]);
    assert!(matches!(store.chunk(&c.id), Err(Error::NotFound(_))));
    assert_eq!(store.totals().chunks, 0);
    // A later commit of the same content works.
    let id = put(store, &[&c], 0);
    assert_eq!(store.manifest(id).unwrap().size, 2000);
    assert_clean(store);
}

pub fn read_counts_add_up(store: &dyn BlockStore) {
    let id = put(store, &[&chunk(14, 10)], 0);
    assert_eq!(store.accesses(id).unwrap(), 0);
    store
        .add_accesses(&[(id, 3), (BlockId::random(), 5)])
        .unwrap();
    store.add_accesses(&[(id, 2)]).unwrap();
    assert_eq!(store.accesses(id).unwrap(), 5);
    assert!(matches!(
        store.accesses(BlockId::random()),
        Err(Error::NotFound(_))
    ));
    let mut listed = Vec::new();
    store
        .blocks(&mut |b| {
            listed.push((b.id, b.accesses));
            true
        })
        .unwrap();
    assert_eq!(listed, vec![(id, 5)]);
}

pub fn listing_is_ordered_and_stoppable(store: &dyn BlockStore) {
    let mut ids: Vec<BlockId> = (0..5u8)
        .map(|i| put(store, &[&chunk(20 + i, 10)], 0))
        .collect();
    ids.sort();
    let mut listed = Vec::new();
    store
        .blocks(&mut |b| {
            listed.push(b.id);
            true
        })
        .unwrap();
    assert_eq!(listed, ids);
    let mut first_two = Vec::new();
    store
        .blocks(&mut |b| {
            first_two.push(b.id);
            first_two.len() < 2
        })
        .unwrap();
    assert_eq!(first_two, ids[..2]);
}

pub fn damage_is_detected_not_returned(store: &dyn BlockStore) {
    // A chunk whose payload does not match the check it was staged with must never be served.
    let mut c = chunk(30, 1000);
    let staged = store.stage_chunks(std::slice::from_ref(&c)).unwrap();
    let mut bad = c.payload.to_vec();
    bad[0] ^= 1;
    c.payload = Bytes::from(bad);
    let mut staged = staged;
    staged[0].info.check[0] ^= 1; // the stored bytes no longer match the recorded check
    let block = BlockId::random();
    store
        .commit_block(block, &manifest_of(&[&c], 0), staged)
        .unwrap();
    let err = store.chunk(&c.id).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let mut damage = Vec::new();
    store.verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(
        damage
            .iter()
            .any(|d| matches!(d, crate::Damage::Chunk { id, .. } if *id == c.id)),
        "{damage:?}"
    );
}

pub fn concurrent_commits_and_frees_stay_consistent(store: &dyn BlockStore) {
    // Scoped threads share the borrowed store: allocations of overlapping content race frees.
    let shared: Vec<NewChunk> = (0..8u8).map(|i| chunk(40 + i, 3000)).collect();
    let shared = Arc::new(shared);
    std::thread::scope(|s| {
        for t in 0..4usize {
            let shared = Arc::clone(&shared);
            s.spawn(move || {
                let mut mine = Vec::new();
                for round in 0..25usize {
                    let a = &shared[(t + round) % 8];
                    let b = &shared[(t * 3 + round) % 8];
                    mine.push(put(store, &[a, b], 7));
                    if round % 2 == 1 {
                        store.free_block(mine.remove(0)).unwrap();
                    }
                }
                for id in mine {
                    let m = store.manifest(id).unwrap();
                    for c in m.chunk_refs() {
                        store.chunk(c).unwrap();
                    }
                }
            });
        }
    });
    assert_clean(store);
    let mut blocks = 0;
    store
        .blocks(&mut |_| {
            blocks += 1;
            true
        })
        .unwrap();
    assert_eq!(store.totals().blocks, blocks);
}
