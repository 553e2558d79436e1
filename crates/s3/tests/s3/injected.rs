//! Faults injected between the store and the real S3 server: short objects, failing and slow
//! requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherflow_s3::{s3_bucket, S3Location, S3Options, S3Store};
use aetherflow_store::{BlockStore, Error, What};

use crate::faulty::{Fault, Faulty};
use crate::harness::{chunk, fresh_location, put, quick_timeouts, single_writer};

pub fn faulty_store(options: S3Options) -> (S3Store, Arc<Faulty>) {
    faulty_store_at(&fresh_location(), options)
}

/// A server on `location` whose requests go through a [`Faulty`] wrapper.
pub fn faulty_store_at(location: &S3Location, options: S3Options) -> (S3Store, Arc<Faulty>) {
    let faulty = Faulty::new(s3_bucket(location, quick_timeouts()).unwrap());
    let store = S3Store::open_on(faulty.clone(), location, options).unwrap();
    (store, faulty)
}

#[test]
fn a_pack_shorter_than_its_index_never_stops_collection() {
    let (store, faulty) = faulty_store(S3Options {
        compact_below: 0.9,
        ..single_writer()
    });
    // One pack: a large chunk, then a small one that a second block keeps alive.
    let (big, small) = (chunk(1, 200_000), chunk(2, 3_000));
    let first = put(&store, &[&big, &small]);
    let keeper = put(&store, &[&small]);
    // Every GET of a pack now ends after 100 bytes, far before the small chunk's record.
    faulty.inject("packs/", Fault::Cut(100));
    // Freeing the first block leaves the pack mostly dead: the sweep that follows (the store
    // collects at once with no grace period) tries to compact it, finds the record cut off,
    // and leaves the pack alone instead of panicking.
    store.free_block(first).unwrap();
    let report = store.sweep().unwrap();
    assert_eq!(report.compacted, 0, "{report:?}");
    faulty.heal();
    let report = store.sweep().unwrap();
    assert_eq!(report.compacted, 1, "the next pass works: {report:?}");
    assert_eq!(store.chunk(&small.id).unwrap().payload, small.payload);
    assert!(store.manifest(keeper).is_ok());
}

#[test]
fn a_read_only_open_of_a_wrong_prefix_writes_nothing() {
    let location = fresh_location();
    let faulty = Faulty::new(s3_bucket(&location, quick_timeouts()).unwrap());
    let err = S3Store::open_on(faulty.clone(), &location, S3Options::read_only()).unwrap_err();
    assert!(matches!(err, Error::NotFound(What::Store(_))), "{err}");
    // Nothing was created there: a writable open still finds an empty prefix (and makes it).
    let remote = aetherflow_s3::remote::Remote::connect(&location, quick_timeouts()).unwrap();
    assert!(remote.list("").unwrap().is_empty());

    let store = S3Store::open_on(faulty.clone(), &location, single_writer()).unwrap();
    let c = chunk(3, 1000);
    let id = put(&store, &[&c]);
    drop(store);
    let objects = remote.list("").unwrap().len();
    let check = S3Store::open_on(faulty, &location, S3Options::read_only()).unwrap();
    assert!(check.manifest(id).is_ok());
    check.add_accesses(&[(id, 5)]).unwrap();
    assert!(matches!(check.free_block(id), Err(Error::ReadOnly(_))));
    drop(check);
    assert_eq!(
        remote.list("").unwrap().len(),
        objects,
        "no read counts, no marks"
    );
}

#[test]
fn allocations_and_figures_never_wait_for_a_refresh() {
    // A view that is always stale: every caller would like a refresh.
    let (store, faulty) = faulty_store(S3Options {
        refresh_every: Duration::from_millis(200),
        ..single_writer()
    });
    let store = Arc::new(store);
    put(&*store, &[&chunk(4, 1000)]);
    // Listings of blocks now take 3 s: a full refresh started now holds on that long.
    faulty.inject("blocks", Fault::SlowListing(Duration::from_secs(3)));
    let refreshing = {
        let store = store.clone();
        std::thread::spawn(move || store.refresh())
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let totals = store.totals();
    put(&*store, &[&chunk(5, 1000)]);
    let waited = started.elapsed();
    assert!(totals.blocks >= 1);
    assert!(
        waited < Duration::from_millis(2500),
        "an allocation waited {waited:?} for the refresh"
    );
    refreshing.join().unwrap().unwrap();
}

#[test]
fn an_unreachable_bucket_fails_requests_and_service_resumes() {
    let (store, faulty) = faulty_store(single_writer());
    let c = chunk(6, 2000);
    let id = put(&store, &[&c]);
    faulty.inject("", Fault::Fail);
    let staged = store.stage_chunks(&[chunk(7, 2000)]).unwrap();
    let err = store
        .commit_block(
            aetherflow_store::BlockId::random(),
            &aetherflow_store::conformance::manifest_of(&[&chunk(7, 2000)], 0),
            staged,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    faulty.heal();
    assert_eq!(store.manifest(id).unwrap().chunk_refs().count(), 1);
    put(&store, &[&chunk(8, 2000)]);
}

#[test]
fn a_walk_over_many_objects_holds_a_bounded_number_of_them() {
    use aetherflow_s3::remote::{Remote, AHEAD};
    let location = fresh_location();
    let faulty = Faulty::new(s3_bucket(&location, quick_timeouts()).unwrap());
    let remote = Remote::new(faulty.clone(), &location).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("many/{i:04}")).collect();
    for k in &keys {
        remote.put(k, bytes::Bytes::from(k.clone()), false).unwrap();
    }
    let before = faulty.gets();
    let mut handled = 0;
    remote
        .for_each_object(&keys, |i, body| {
            assert_eq!(
                body.unwrap(),
                keys[i].as_bytes(),
                "in the order of the keys"
            );
            if i % 50 == 0 {
                // Time for the fetches to run ahead as far as they may.
                std::thread::sleep(Duration::from_millis(300));
            }
            let begun = faulty.gets() - before;
            assert!(
                begun <= (i + 1 + AHEAD) as u64,
                "{begun} GETs begun with {i} objects handled"
            );
            handled += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(handled, keys.len());

    // An error of the caller ends the walk, and the GETs not begun are never made.
    let before = faulty.gets();
    let err = remote
        .for_each_object(&keys, |i, _| match i {
            10 => Err(Error::Refused("enough".into())),
            _ => Ok(()),
        })
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    let begun = faulty.gets() - before;
    assert!(
        begun <= (11 + AHEAD) as u64,
        "{begun} GETs after the walk ended"
    );
}
