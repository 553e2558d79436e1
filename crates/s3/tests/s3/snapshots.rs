//! Snapshots of the log: a server that starts cold reads the newest snapshot and the records
//! after it, never a listing of packs, and finds what a server that read the whole log finds.

use std::time::{Duration, Instant};

use aetherflow_s3::log_record;
use aetherflow_s3::log_snapshot::{self, parse_snapshot_epoch};
use aetherflow_s3::remote::Remote;
use aetherflow_s3::{S3Location, S3Options, S3Store, SnapshotOutcome};
use aetherflow_store::{BlockStore, Totals};

use crate::harness::{
    block_ids, chunk, clean, fresh_location, open, put, quick_timeouts, shared_options,
};
use crate::injected::faulty_store_at;
use crate::volumes::{map_of, record, write};

const GRACE: Duration = Duration::from_secs(2);

/// Servers that write a snapshot only when told, of any change, with epochs that advance at
/// every refresh a second apart.
fn snapshotting() -> S3Options {
    S3Options {
        epoch_every: Duration::from_secs(1),
        log_every: Duration::from_secs(3600),
        refresh_every: Duration::from_secs(3600),
        snapshot_every: None,
        snapshot_min_bytes: 0,
        snapshot_after: 0.0,
        ..shared_options(GRACE)
    }
}

/// Writes what `store` has queued for the log, then waits until the epochs of every record in
/// the log have settled and writes a snapshot of them: returns its epoch. (Epochs settle G/2
/// and two seconds after the next one begins, by the bucket's clock in whole seconds; another
/// server's refresh may begin one meanwhile, so the wait is for the records, not a fixed time.)
fn snapshot_all(store: &S3Store, location: &S3Location) -> u64 {
    store.flush_log().unwrap();
    let last = newest_record_epoch(location);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        store.refresh_from_log().unwrap();
        match store.write_snapshot().unwrap() {
            SnapshotOutcome::Written(epoch) if epoch >= last => return epoch,
            SnapshotOutcome::TooLittleChange { .. } => panic!("these servers snapshot any change"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "epoch {last} never settled");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The newest epoch that holds a record.
fn newest_record_epoch(location: &S3Location) -> u64 {
    let remote = Remote::connect(location, quick_timeouts()).unwrap();
    remote
        .list(log_record::LOG)
        .unwrap()
        .iter()
        .filter_map(|l| log_record::parse_record_key(&l.key).map(|(e, _, _)| e))
        .max()
        .expect("a record")
}

/// The epochs of the log's markers and records left in the bucket.
fn log_epochs(location: &S3Location) -> Vec<u64> {
    let remote = Remote::connect(location, quick_timeouts()).unwrap();
    let mut epochs: Vec<u64> = remote
        .list(log_record::LOG)
        .unwrap()
        .iter()
        .filter_map(|l| {
            log_record::parse_epoch_marker(&l.key)
                .or_else(|| log_record::parse_record_key(&l.key).map(|(e, _, _)| e))
        })
        .collect();
    epochs.sort();
    epochs.dedup();
    epochs
}

/// The epochs of the complete snapshots in the bucket.
fn snapshot_epochs(location: &S3Location) -> Vec<u64> {
    let remote = Remote::connect(location, quick_timeouts()).unwrap();
    let mut epochs: Vec<u64> = remote
        .list(log_snapshot::INDEX)
        .unwrap()
        .iter()
        .filter_map(|l| log_snapshot::parse_done_key(&l.key))
        .collect();
    epochs.sort();
    epochs
}

fn same_view(a: &S3Store, b: &S3Store) {
    let (ta, tb): (Totals, Totals) = (a.totals(), b.totals());
    assert_eq!(ta, tb, "the figures");
    assert_eq!(block_ids(a), block_ids(b), "the blocks");
    let names = |s: &S3Store| {
        let mut n: Vec<String> = s.volumes().unwrap().into_iter().map(|v| v.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(a), names(b), "the volumes");
    for name in names(a) {
        assert_eq!(map_of(a, &name), map_of(b, &name), "volume {name}");
    }
}

#[test]
fn a_cold_open_reads_the_newest_snapshot_and_the_log_after_it_not_the_packs() {
    let location = fresh_location();
    let a = open(&location, snapshotting());
    let (c1, c2, c3, c4) = (
        chunk(1, 5000),
        chunk(2, 3000),
        chunk(3, 7000),
        chunk(4, 4096),
    );
    let first = put(&a, &[&c1]);
    put(&a, &[&c2, &c1]);
    let freed = put(&a, &[&c3]);
    a.free_block(freed).unwrap();
    a.create_volume(&record("v")).unwrap();
    a.acquire_volume("v").unwrap();
    write(&a, "v", &[(1, &c4)]).unwrap();
    a.release_volume("v");
    a.snapshot_volume("v", "s", false).unwrap();
    a.create_volume(&record("gone")).unwrap();
    a.delete_volume("gone").unwrap();
    let epoch = snapshot_all(&a, &location);

    // A cold server: the snapshot, then the epochs after it; no listing of packs, volumes or
    // layers.
    let (b, faulty) = faulty_store_at(&location, snapshotting());
    let listed = faulty.take_listed();
    assert!(
        listed.iter().any(|p| p.contains("/index")),
        "snapshots are looked for: {listed:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|p| ["/packs", "/volumes", "/layers", "/blocks"]
                .iter()
                .any(|d| p.contains(d))),
        "a cold open lists no packs, volumes or layers: {listed:?}"
    );
    same_view(&a, &b);
    assert_eq!(b.chunk(&c1.id).unwrap().payload, c1.payload);

    // A change after it: with the next snapshot and no raw log left behind it, a cold open
    // still finds what A has.
    a.free_block(first).unwrap();
    put(&a, &[&chunk(5, 6000)]);
    let next = snapshot_all(&a, &location);
    assert!(next > epoch, "{next} after {epoch}");
    let snapshots = snapshot_epochs(&location);
    assert_eq!(
        (snapshots.first(), snapshots.last()),
        (Some(&epoch), Some(&next))
    );
    // The raw log behind the newer snapshot goes once its DONE is two grace periods old, and
    // the older snapshot with it.
    assert_ne!(a.trim_log().unwrap().behind, Some(next), "too soon");
    std::thread::sleep(2 * GRACE + Duration::from_millis(1200));
    let trimmed = a.trim_log().unwrap();
    assert_eq!(trimmed.behind, Some(next), "{trimmed:?}");
    assert!(
        trimmed.markers > 0 && trimmed.records > 0 && trimmed.snapshot_objects > 0,
        "{trimmed:?}"
    );
    assert!(log_epochs(&location).iter().all(|e| *e > next));
    assert_eq!(snapshot_epochs(&location), vec![next]);
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    assert!(remote
        .list(log_snapshot::INDEX)
        .unwrap()
        .iter()
        .all(|l| parse_snapshot_epoch(&l.key) == Some(next)));

    let c = open(&location, snapshotting());
    same_view(&a, &c);
    assert!(!block_ids(&c).contains(&first));
    clean(&c);
}

/// The offline server of the gap rule: A knows a block and goes quiet; B reuses its chunk in
/// a block of its own, a snapshot is written, B frees A's block after it, and the log behind
/// the snapshot is deleted. A, waking, finds the epochs it had to read gone: it builds its
/// catalog again from the snapshot, so it sees B's block and collects nothing B needs.
#[test]
fn a_server_that_slept_through_a_trim_of_the_log_collects_nothing_live() {
    let location = fresh_location();
    let a = open(&location, snapshotting());
    let b = open(&location, snapshotting());
    let x = chunk(60, 9000);
    let old = put(&a, &[&x]);
    a.flush_log().unwrap();
    b.refresh_from_log().unwrap();
    a.refresh_from_log().unwrap();

    let new = put(&b, &[&x]);
    let epoch = snapshot_all(&b, &location);
    b.free_block(old).unwrap();
    b.flush_log().unwrap();
    std::thread::sleep(2 * GRACE + Duration::from_millis(1200));
    let trimmed = b.trim_log().unwrap();
    assert_eq!(trimmed.behind, Some(epoch), "{trimmed:?}");

    // A wakes and collects twice across the grace period.
    a.sweep().unwrap();
    std::thread::sleep(GRACE + Duration::from_millis(1200));
    let report = a.sweep().unwrap();
    assert_eq!(report.deleted, 0, "{report:?}");
    for server in [&a, &b] {
        assert_eq!(server.chunk(&x.id).unwrap().payload, x.payload);
        assert!(server.manifest(new).is_ok());
        assert!(server.manifest(old).is_err());
        clean(server);
    }
    assert_eq!(block_ids(&a), vec![new]);
}

#[test]
fn a_snapshot_waits_until_the_log_has_grown_to_its_share() {
    let location = fresh_location();
    let options = S3Options {
        snapshot_min_bytes: 1 << 30,
        ..snapshotting()
    };
    let a = open(&location, options);
    put(&a, &[&chunk(9, 1000)]);
    a.flush_log().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.refresh_from_log().unwrap();
        match a.write_snapshot().unwrap() {
            SnapshotOutcome::TooLittleChange {
                log_bytes,
                threshold,
            } => {
                assert!(log_bytes > 0 && threshold == 1 << 30, "{log_bytes}");
                return;
            }
            SnapshotOutcome::UpToDate => {} // nothing settled yet
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "no epoch settled");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A `DONE` whose create is sent twice (its first answer lost) is this server's own: its
/// segments stay, and the snapshot opens.
#[test]
fn a_snapshot_whose_done_was_created_twice_keeps_its_segments() {
    let location = fresh_location();
    let (a, faulty) = faulty_store_at(&location, snapshotting());
    let block = put(&a, &[&chunk(70, 3000)]);
    faulty.inject("/DONE", crate::faulty::Fault::Replayed);
    let epoch = snapshot_all(&a, &location);
    faulty.heal();
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let segments: Vec<String> = remote
        .list(&log_snapshot::snapshot_dir(epoch))
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .filter(|k| !k.ends_with("/DONE"))
        .collect();
    assert!(!segments.is_empty(), "its segments were deleted");
    let b = open(&location, snapshotting());
    assert_eq!(block_ids(&b), vec![block]);
}
