//! Volumes on a bucket several servers share: one writes, any reads its snapshots, a second
//! writer is refused, a writer that lost its hold is fenced off, and an unreachable bucket fails
//! commits without losing what was committed.

use std::collections::BTreeMap;
use std::time::Duration;

use aetherflow_s3::volume_objects::{delta_key, Delta, Head};
use aetherflow_s3::{s3_bucket, S3Options, S3Store};
use aetherflow_store::{BlockStore, Error, MapEntry, NewChunk, VolumeRecord};
use object_store::ObjectStoreExt;

use crate::faulty::{Fault, Faulty};
use crate::harness::{chunk, fresh_location, open, quick_timeouts, shared_options};

const CHUNK: u32 = 4096;

pub fn record(name: &str) -> VolumeRecord {
    VolumeRecord {
        name: name.into(),
        size: 1 << 20,
        chunk_size: CHUNK,
        read_only: false,
        seed: None,
        origin: None,
        created: 1_800_000_000,
        written: 0,
        zeroed: 0,
    }
}

pub fn entry(c: &NewChunk) -> MapEntry {
    MapEntry::Chunk {
        id: c.id,
        stored_len: c.payload.len() as u32,
    }
}

pub fn write(store: &dyn BlockStore, name: &str, at: &[(u64, &NewChunk)]) -> Result<(), Error> {
    let _pin = store.pin();
    let ids: Vec<_> = at.iter().map(|(_, c)| c.id).collect();
    let found = store.find_chunks(&ids)?;
    let mut new: Vec<NewChunk> = Vec::new();
    for ((_, c), f) in at.iter().zip(found) {
        if f.is_none() && !new.iter().any(|n| n.id == c.id) {
            new.push((*c).clone());
        }
    }
    let staged = store.stage_chunks(&new)?;
    let changes: Vec<(u64, MapEntry)> = at.iter().map(|(i, c)| (*i, entry(c))).collect();
    store.commit_volume(name, &changes, staged, true)
}

pub fn map_of(store: &dyn BlockStore, name: &str) -> BTreeMap<u64, MapEntry> {
    let mut out = BTreeMap::new();
    store
        .volume_map(name, 0..u64::MAX, &mut |i, e| {
            out.insert(i, e);
            true
        })
        .unwrap();
    out
}

fn held(e: &Error) -> bool {
    matches!(e, Error::Held(why) if why.contains("another server"))
}

#[test]
fn one_server_writes_another_serves_its_snapshot_and_a_second_writer_is_refused() {
    let location = fresh_location();
    let a = open(&location, shared_options(Duration::from_secs(60)));
    let b = open(&location, shared_options(Duration::from_secs(60)));
    a.create_volume(&record("disk")).unwrap();
    a.acquire_volume("disk").unwrap();
    let (x, y) = (chunk(1, CHUNK as usize), chunk(2, CHUNK as usize));
    write(&a, "disk", &[(0, &x), (3, &y)]).unwrap();
    a.snapshot_volume("disk", "disk.1", false).unwrap();
    write(&a, "disk", &[(0, &y)]).unwrap();
    // The other server learns of both at once (it has never listed the bucket since).
    let snap = b.volume("disk.1").unwrap();
    assert!(snap.read_only);
    assert_eq!(snap.written, 2 * u64::from(CHUNK));
    assert_eq!(
        map_of(&b, "disk.1"),
        BTreeMap::from([(0, entry(&x)), (3, entry(&y))])
    );
    assert_eq!(b.chunk(&x.id).unwrap().payload, x.payload);
    // It may not write the volume the first one holds, nor delete it, nor snapshot it.
    let e = b.acquire_volume("disk").unwrap_err();
    assert!(held(&e), "{e}");
    assert!(held(&b.delete_volume("disk").unwrap_err()));
    assert!(held(
        &b.snapshot_volume("disk", "disk.2", false).unwrap_err()
    ));
    // Once the first one closes it, the second one may.
    a.release_volume("disk");
    b.acquire_volume("disk").unwrap();
    b.refresh().unwrap();
    assert_eq!(map_of(&b, "disk")[&0], entry(&y));
    write(&b, "disk", &[(5, &x)]).unwrap();
    assert!(held(&a.acquire_volume("disk").unwrap_err()));
    b.release_volume("disk");
    a.refresh().unwrap();
    assert_eq!(
        map_of(&a, "disk"),
        BTreeMap::from([(0, entry(&y)), (3, entry(&y)), (5, entry(&x))])
    );
    // A third server, started now, sees the same.
    let c = open(&location, shared_options(Duration::from_secs(60)));
    assert_eq!(map_of(&c, "disk"), map_of(&a, "disk"));
    assert_eq!(map_of(&c, "disk.1"), map_of(&b, "disk.1"));
    let mut damage = Vec::new();
    c.verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
}

#[test]
fn a_writer_whose_hold_ran_out_is_taken_over_and_fenced_off() {
    let location = fresh_location();
    let lease = Duration::from_secs(3);
    let faulty = Faulty::new(s3_bucket(&location, quick_timeouts()).unwrap());
    let options = S3Options {
        volume_lease: lease,
        ..shared_options(Duration::from_secs(60))
    };
    let a = S3Store::open_on(faulty.clone(), &location, options).unwrap();
    let b = open(&location, options);
    a.create_volume(&record("v")).unwrap();
    a.acquire_volume("v").unwrap();
    let (x, y, z) = (
        chunk(11, CHUNK as usize),
        chunk(12, CHUNK as usize),
        chunk(13, CHUNK as usize),
    );
    write(&a, "v", &[(0, &x)]).unwrap();
    // The first server loses the bucket: it cannot renew, and its hold runs out.
    faulty.inject("", Fault::Fail);
    assert!(
        held(&b.acquire_volume("v").unwrap_err()),
        "taken while held"
    );
    std::thread::sleep(lease + Duration::from_millis(500));
    b.acquire_volume("v").unwrap();
    write(&b, "v", &[(1, &y)]).unwrap();
    // A delta the first server sent before it lost touch, landing late: past the seal the
    // second server put on the first one's layer, so nobody reads it.
    let raw = s3_bucket(&location, quick_timeouts()).unwrap();
    let key = |k: &str| object_store::path::Path::from(format!("{}/{k}", location.prefix));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let head = runtime.block_on(async {
        raw.get(&key("volumes/v"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let head = Head::decode("v", &head).unwrap();
    assert_eq!(
        head.chain.len(),
        2,
        "the second server writes above the first one's layer"
    );
    let old = head.chain[1];
    assert_eq!(old.sealed, Some(1), "sealed after the one commit it holds");
    let late = Delta {
        layer: old.layer,
        seq: 1,
        size: 1 << 20,
        chunk_size: CHUNK,
        cleared: Vec::new(),
        rows: vec![(0, MapEntry::Zero), (7, entry(&z))],
    };
    runtime.block_on(async {
        raw.put(&key(&delta_key(old.layer, 1)), late.encode().into())
            .await
            .unwrap()
    });
    // Back in touch, the first server is refused: it knows it no longer writes the volume.
    faulty.heal();
    let e = write(&a, "v", &[(2, &z)]).unwrap_err();
    assert!(
        matches!(&e, Error::Held(_) | Error::Unavailable(_)),
        "the old writer committed: {e}"
    );
    let e = write(&a, "v", &[(2, &z)]).unwrap_err();
    assert!(held(&e), "{e}");
    // Everyone reads what the first one committed before, and what the second one wrote.
    let c = open(&location, options);
    assert_eq!(
        map_of(&c, "v"),
        BTreeMap::from([(0, entry(&x)), (1, entry(&y))])
    );
}

#[test]
fn an_unreachable_bucket_fails_commits_and_loses_nothing_committed() {
    let location = fresh_location();
    let faulty = Faulty::new(s3_bucket(&location, quick_timeouts()).unwrap());
    let options = shared_options(Duration::from_secs(60));
    let a = S3Store::open_on(faulty.clone(), &location, options).unwrap();
    a.create_volume(&record("v")).unwrap();
    a.acquire_volume("v").unwrap();
    let (x, y) = (chunk(21, CHUNK as usize), chunk(22, CHUNK as usize));
    write(&a, "v", &[(0, &x)]).unwrap();
    faulty.inject("", Fault::Fail);
    let e = write(&a, "v", &[(1, &y)]).unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    faulty.heal();
    write(&a, "v", &[(1, &y)]).unwrap();
    let b = open(&location, options);
    assert_eq!(
        map_of(&b, "v"),
        BTreeMap::from([(0, entry(&x)), (1, entry(&y))])
    );
}

#[test]
fn deleted_volumes_leave_nothing_once_the_grace_period_passed() {
    let location = fresh_location();
    let grace = Duration::from_secs(2);
    let a = open(&location, shared_options(grace));
    a.create_volume(&record("v")).unwrap();
    a.acquire_volume("v").unwrap();
    let x = chunk(31, CHUNK as usize);
    write(&a, "v", &[(0, &x), (1, &x)]).unwrap();
    a.snapshot_volume("v", "s", false).unwrap();
    a.release_volume("v");
    a.delete_volume("v").unwrap();
    // The snapshot still reads through the first layer: nothing is condemned (v's own top
    // layer held nothing, and is simply forgotten).
    std::thread::sleep(grace + Duration::from_millis(1100));
    let report = a.sweep().unwrap();
    assert_eq!(
        (report.layers_condemned, report.layers_deleted),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(map_of(&a, "s")[&1], entry(&x));
    a.delete_volume("s").unwrap();
    std::thread::sleep(grace + Duration::from_millis(1100));
    let report = a.sweep().unwrap();
    assert!(report.layers_condemned >= 1, "{report:?}");
    std::thread::sleep(grace + Duration::from_millis(1100));
    let report = a.sweep().unwrap();
    assert!(report.layers_deleted >= 1, "{report:?}");
    assert!(matches!(a.chunk(&x.id), Err(Error::NotFound(_))));
    assert_eq!(a.totals().volumes, 0);
    let b = open(&location, shared_options(grace));
    assert!(b.volumes().unwrap().is_empty());
    assert_eq!(b.totals().chunks, 0);
    // The log said the layers went: a server opened later has none left to collect.
    let report = b.sweep().unwrap();
    assert_eq!(
        (report.layers_condemned, report.layers_deleted),
        (0, 0),
        "{report:?}"
    );
}
