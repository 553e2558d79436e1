//! The bucket's log as a change feed: what a server commits reaches the log as records, and a
//! record that cannot be written is written with the next one.

use std::collections::HashSet;
use std::time::Duration;

use aetherflow_s3::log_record::{self, Event, LogRecord};
use aetherflow_s3::remote::Remote;
use aetherflow_s3::volume_objects;
use aetherflow_s3::{S3Location, S3Options, S3Store};
use aetherflow_store::{BlockId, BlockStore, Error, RequestCounts};
use bytes::Bytes;

use crate::faulty::{Fault, Faulty};
use crate::harness::{
    block_ids, chunk, commit_as, fresh_location, manifest_of, open, put, quick_timeouts,
    shared_options, single_writer,
};
use crate::injected::{faulty_store, faulty_store_at};
use crate::volumes::{entry, map_of, record, write};

/// Writes a log, never on its own (the test flushes it).
fn logging() -> S3Options {
    S3Options {
        log_every: Duration::from_secs(3600),
        ..single_writer()
    }
}

/// The blocks `records` add, in order.
fn added<'a>(records: impl IntoIterator<Item = &'a LogRecord>) -> Vec<BlockId> {
    records
        .into_iter()
        .flat_map(|r| &r.events)
        .filter_map(|e| match e {
            Event::BlockAdded { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

/// Every record in the log, decoded, and the epoch markers.
fn log_of(location: &S3Location) -> (Vec<LogRecord>, Vec<u64>) {
    let remote = Remote::connect(location, quick_timeouts()).unwrap();
    let mut records = Vec::new();
    let mut markers = Vec::new();
    for l in remote.list(log_record::LOG).unwrap() {
        if let Some(epoch) = log_record::parse_epoch_marker(&l.key) {
            markers.push(epoch);
        } else {
            let body = remote.get(&l.key).unwrap();
            records.push(LogRecord::decode(&l.key, &body).unwrap());
        }
    }
    (records, markers)
}

#[test]
fn what_a_server_commits_reaches_the_log() {
    let location = fresh_location();
    let store = open(&location, logging());
    let block = put(&store, &[&chunk(1, 5000), &chunk(2, 7000)]);
    let (records, markers) = log_of(&location);
    assert_eq!(markers, vec![0], "the first record made the first epoch");
    assert_eq!(
        records.len(),
        1,
        "a commit returns with its record: {records:?}"
    );
    assert_eq!(records[0].epoch, 0);
    assert!(
        records[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::PackAdded { .. })),
        "the block's pack rides in its record: {:?}",
        records[0].events
    );

    store.create_volume(&record("v")).unwrap();
    store.acquire_volume("v").unwrap();
    write(&store, "v", &[(3, &chunk(3, 4096))]).unwrap();
    store.free_block(block).unwrap();
    store.release_volume("v");
    store.flush_log().unwrap();

    let (records, _) = log_of(&location);
    let events: Vec<&Event> = records.iter().flat_map(|r| &r.events).collect();
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let packs: HashSet<String> = remote
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|l| l.key["packs/".len()..].to_string())
        .collect();
    let mut logged_packs: HashSet<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::PackAdded { name, entries, .. } => {
                assert!(!entries.is_empty());
                Some(name.clone())
            }
            _ => None,
        })
        .collect();
    // With no grace period, the free collected the block's pack at once.
    let deleted: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::PackDeleted { name } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 1, "{events:?}");
    assert!(logged_packs.remove(deleted[0]), "added, then deleted");
    assert_eq!(logged_packs, packs, "every pack uploaded, with its entries");
    let (layer, seq) = remote
        .list("layers/")
        .unwrap()
        .iter()
        .find_map(|l| volume_objects::parse_delta_key(&l.key))
        .unwrap();
    assert!(events.iter().any(
        |e| matches!(e, Event::DeltaAdded { layer: l, seq: s, .. } if (*l, *s) == (layer, seq))
    ));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::HeadChanged { name } if name == "v")));
    let added = events
        .iter()
        .position(|e| matches!(e, Event::BlockAdded { id, manifest, .. } if *id == block && manifest.chunk_refs().count() == 2))
        .expect("the block, with its manifest");
    let freed = events
        .iter()
        .position(|e| matches!(e, Event::BlockFreed { id, .. } if *id == block))
        .expect("the block freed");
    assert!(added < freed);
    assert!(
        remote.list("blocks/").unwrap().is_empty(),
        "a block is its record, not an object of its own"
    );

    // Nothing new: nothing written.
    let written = records.len();
    store.flush_log().unwrap();
    assert_eq!(log_of(&location).0.len(), written);
}

#[test]
fn a_commit_whose_record_cannot_be_written_fails_and_its_news_goes_with_the_next() {
    let (store, faulty) = faulty_store(logging());
    let first = put(&store, &[&chunk(10, 3000)]);
    faulty.inject("log/", Fault::Fail);
    let failed = BlockId::random();
    let err = commit_as(&store, failed, &chunk(12, 3000)).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    faulty.heal();
    assert!(store
        .manifest(failed)
        .unwrap_err()
        .to_string()
        .contains("not found"));
    let second = put(&store, &[&chunk(11, 3000)]);

    let (records, _) = log_of(store.location());
    let events: Vec<&Event> = records.iter().flat_map(|r| &r.events).collect();
    assert_eq!(
        added(&records),
        vec![first, second],
        "the failed commit is in no record"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::BlockFreed { id, .. } if *id == failed)),
        "and it is cancelled, in case its record landed after all: {events:?}"
    );
    let packs = events
        .iter()
        .filter(|e| matches!(e, Event::PackAdded { .. }))
        .count();
    assert_eq!(packs, 3, "the failed commit's pack is news all the same");
}

#[test]
fn a_record_that_returns_too_late_is_neither_acknowledged_nor_applied() {
    let grace = Duration::from_secs(2);
    let options = S3Options {
        grace,
        ..following()
    };
    let location = fresh_location();
    let (a, faulty) = faulty_store_at(&location, options);
    let b = open(&location, options);
    let on_time = put(&a, &[&chunk(40, 2000)]);

    // The record lands at once, but its answer comes after G/2.
    faulty.inject(
        "log/",
        Fault::SlowPut(grace / 2 + Duration::from_millis(500)),
    );
    let late = BlockId::random();
    let err = commit_as(&a, late, &chunk(41, 2000)).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    faulty.heal();
    let (records, _) = log_of(&location);
    assert!(
        added(&records).contains(&late),
        "the late record is in the bucket"
    );
    a.flush_log().unwrap();

    for server in [&a, &b] {
        server.refresh_from_log().unwrap();
        assert!(server
            .manifest(late)
            .unwrap_err()
            .to_string()
            .contains("not found"));
        assert_eq!(block_ids(server), vec![on_time]);
    }
    let fresh = open(&location, options);
    assert_eq!(
        block_ids(&fresh),
        vec![on_time],
        "nor by a server opened later"
    );
}

/// Servers sharing a bucket that follow its log, refreshing only when told.
fn following() -> S3Options {
    S3Options {
        log_every: Duration::from_secs(3600),
        refresh_every: Duration::from_secs(3600),
        ..shared_options(Duration::from_secs(60))
    }
}

/// A second server on `location`, whose listings are recorded.
fn watched(location: &S3Location) -> (S3Store, std::sync::Arc<Faulty>) {
    faulty_store_at(location, following())
}

/// Whether `listed` holds a listing of blocks, packs, volumes or layers.
fn lists_the_bucket(listed: &[String]) -> bool {
    listed.iter().any(|prefix| {
        ["/blocks", "/packs", "/volumes", "/layers"]
            .iter()
            .any(|dir| prefix.contains(dir))
    })
}

fn requests(c: RequestCounts) -> u64 {
    c.get + c.put + c.list + c.head + c.delete
}

#[test]
fn a_second_server_learns_from_the_log_without_listing_the_bucket() {
    let location = fresh_location();
    let a = open(&location, following());
    let (b, faulty) = watched(&location);
    b.refresh_from_log().unwrap();

    let (c1, c2) = (chunk(1, 5000), chunk(2, 4096));
    let block = put(&a, &[&c1]);
    a.create_volume(&record("v")).unwrap();
    a.acquire_volume("v").unwrap();
    write(&a, "v", &[(2, &c2)]).unwrap();
    a.release_volume("v");
    a.flush_log().unwrap();

    faulty.take_listed();
    b.refresh_from_log().unwrap();
    assert_eq!(block_ids(&b), vec![block]);
    assert_eq!(b.chunk(&c1.id).unwrap().payload, c1.payload);
    let map = map_of(&b, "v");
    assert_eq!(map.into_iter().collect::<Vec<_>>(), vec![(2, entry(&c2))]);
    let listed = faulty.take_listed();
    assert!(
        listed.iter().any(|prefix| prefix.contains("/log/")) && !lists_the_bucket(&listed),
        "the log is listed, not the bucket: {listed:?}"
    );

    a.free_block(block).unwrap();
    a.flush_log().unwrap();
    b.refresh_from_log().unwrap();
    assert!(block_ids(&b).is_empty(), "the free came through the log");
    let listed = faulty.take_listed();
    assert!(!lists_the_bucket(&listed), "{listed:?}");
}

#[test]
fn an_idle_refresh_costs_a_few_requests_whatever_the_bucket_holds() {
    let grace = Duration::from_secs(2);
    let options = S3Options {
        grace,
        ..following()
    };
    let location = fresh_location();
    let a = open(&location, options);
    let c = chunk(3, 100);
    for _ in 0..2500 {
        put(&a, &[&c]);
    }
    a.flush_log().unwrap();

    let b = open(&location, options);
    assert_eq!(block_ids(&b).len(), 2500);
    // B's open found epoch 0 full and began epoch 1; once epoch 0 has settled, a refresh
    // reads it one last time, and from then on only the epochs that can still change.
    std::thread::sleep(grace + Duration::from_secs(2));
    b.refresh_from_log().unwrap();
    for _ in 0..2 {
        let before = requests(b.remote_requests().unwrap());
        b.refresh_from_log().unwrap();
        let cost = requests(b.remote_requests().unwrap()) - before;
        assert!(
            cost <= 4,
            "an idle refresh from the log cost {cost} requests"
        );
    }
    // Listing everything, as refreshes did before the log, costs more than that.
    let before = requests(b.remote_requests().unwrap());
    b.refresh().unwrap();
    let listing = requests(b.remote_requests().unwrap()) - before;
    assert!(listing > 4, "a complete refresh cost {listing} requests");
}

#[test]
fn damaged_and_replayed_records_change_nothing() {
    let location = fresh_location();
    let a = open(&location, following());
    let b = open(&location, following());
    b.refresh_from_log().unwrap();
    put(&a, &[&chunk(4, 3000)]);
    a.flush_log().unwrap();
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let record = remote
        .list(log_record::LOG)
        .unwrap()
        .into_iter()
        .find(|l| log_record::parse_record_key(&l.key).is_some())
        .unwrap();
    let (epoch, _, _) = log_record::parse_record_key(&record.key).unwrap();
    let body = remote.get(&record.key).unwrap();
    // The same record under another writer's key (a replay), a torn copy, and garbage.
    remote
        .put(
            &log_record::record_key(epoch, "intruder", 1),
            body.clone(),
            true,
        )
        .unwrap();
    remote
        .put(
            &log_record::record_key(epoch, "intruder", 2),
            body.slice(..body.len() / 2),
            true,
        )
        .unwrap();
    remote
        .put(
            &log_record::record_key(epoch, "intruder", 3),
            Bytes::from_static(b"not a record at all"),
            true,
        )
        .unwrap();
    // Only the three bad records, on their own: nothing of theirs is applied.
    remote.delete(&record.key).unwrap();
    b.refresh_from_log().unwrap();
    assert!(block_ids(&b).is_empty(), "a bad record added a block");

    // What a record that cannot be read holds is unknown: nothing is collected, and a check
    // names each one, until they are removed from the bucket.
    let err = b.sweep().unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
    let mut damage = Vec::new();
    b.verify(false, &mut |d| damage.push(format!("{d:?}")))
        .unwrap();
    for seq in 1..=3 {
        let key = log_record::record_key(epoch, "intruder", seq);
        assert!(damage.iter().any(|d| d.contains(&key)), "{key}: {damage:?}");
        remote.delete(&key).unwrap();
    }
    b.sweep().unwrap();
}

/// A record of a writer that is not a store, adding a made-up block.
fn foreign_record(epoch: u64, seq: u64, id: BlockId) -> (String, Bytes) {
    let record = LogRecord {
        writer: "elsewhere".into(),
        seq,
        epoch,
        events: vec![Event::BlockAdded {
            id,
            manifest: std::sync::Arc::new(manifest_of(&[&chunk(9, 100)], 0)),
            imported: false,
        }],
    };
    (record.key(), Bytes::from(record.encode()))
}

#[test]
fn a_record_that_lands_after_its_epoch_settled_is_ignored_and_epochs_advance() {
    let grace = Duration::from_secs(4);
    let options = S3Options {
        grace,
        epoch_records: 2,
        ..following()
    };
    let location = fresh_location();
    let a = open(&location, options);
    let b = open(&location, options);
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let first = put(&a, &[&chunk(5, 2000)]);
    a.flush_log().unwrap();
    b.refresh_from_log().unwrap();
    assert_eq!(block_ids(&b), vec![first]);

    // Epoch 0 holds A's record and one more: the next refresh begins epoch 1.
    let on_time = BlockId::random();
    let (key, body) = foreign_record(0, 1, on_time);
    remote.put(&key, body, true).unwrap();
    b.refresh_from_log().unwrap();
    assert!(block_ids(&b).contains(&on_time));
    let markers: Vec<u64> = remote
        .list(log_record::EPOCHS)
        .unwrap()
        .iter()
        .filter_map(|l| log_record::parse_epoch_marker(&l.key))
        .collect();
    assert_eq!(markers, vec![0, 1], "a full epoch is followed by the next");

    // No acknowledged record lands in epoch 0 once marker 1 is G/2 (and the bucket's second)
    // old: one landing after that was never acknowledged, and no reader applies it. One in
    // epoch 1 is applied.
    std::thread::sleep(grace / 2 + Duration::from_secs(2));
    let (late, in_time) = (BlockId::random(), BlockId::random());
    let (key, body) = foreign_record(0, 2, late);
    remote.put(&key, body, true).unwrap();
    let (key, body) = foreign_record(1, 3, in_time);
    remote.put(&key, body, true).unwrap();
    b.refresh_from_log().unwrap();
    let known = block_ids(&b);
    assert!(known.contains(&in_time), "{known:?}");
    assert!(
        !known.contains(&late),
        "a record of a settled epoch was applied"
    );
}

#[test]
fn a_refresh_that_fails_part_way_loses_no_record() {
    let location = fresh_location();
    let a = open(&location, following());
    let (b, faulty) = watched(&location);
    b.refresh_from_log().unwrap();
    let blocks: Vec<BlockId> = (0..3)
        .map(|i| {
            let id = put(&a, &[&chunk(20 + i, 1000)]);
            a.flush_log().unwrap();
            id
        })
        .collect();
    // The second of A's three records cannot be read for a while.
    faulty.inject("-0000000000000001", Fault::Fail);
    assert!(b.refresh_from_log().is_err());
    faulty.heal();
    b.refresh_from_log().unwrap();
    let mut known = block_ids(&b);
    known.sort();
    let mut expected = blocks;
    expected.sort();
    assert_eq!(known, expected, "every record is read in the end");
}

#[test]
fn a_block_this_server_freed_is_not_brought_back_by_another_servers_record() {
    let location = fresh_location();
    let a = open(&location, following());
    let b = open(&location, following());
    a.refresh_from_log().unwrap();
    // B allocates; A frees the block before it has read B's record of it.
    let block = put(&b, &[&chunk(30, 2000)]);
    b.flush_log().unwrap();
    a.free_block(block).unwrap();
    a.refresh_from_log().unwrap();
    assert!(
        !block_ids(&a).contains(&block),
        "B's record brought back a block A freed"
    );
}

#[test]
fn volumes_are_learnt_from_the_log_at_open_and_in_the_sweep() {
    let location = fresh_location();
    let a = open(&location, following());
    let c = chunk(50, 4096);
    a.create_volume(&record("v")).unwrap();
    a.acquire_volume("v").unwrap();
    write(&a, "v", &[(1, &c)]).unwrap();
    a.release_volume("v");
    a.snapshot_volume("v", "s", false).unwrap();

    let (b, faulty) = watched(&location);
    b.sweep().unwrap();
    let listed = faulty.take_listed();
    assert!(
        !listed
            .iter()
            .any(|p| p.contains("/volumes") || p.contains("/layers")),
        "an open and a sweep list no volume heads or layers: {listed:?}"
    );
    let mut names: Vec<String> = b.volumes().unwrap().into_iter().map(|v| v.name).collect();
    names.sort();
    assert_eq!(names, ["s", "v"]);
    for name in ["v", "s"] {
        let map: Vec<_> = map_of(&b, name).into_iter().collect();
        assert_eq!(map, vec![(1, entry(&c))], "{name}");
    }
}

#[test]
fn commits_whose_chunks_share_a_pack_share_its_record() {
    let (store, faulty) = faulty_store(logging());
    let store = std::sync::Arc::new(store);
    let (a, b) = (chunk(70, 3000), chunk(71, 3000));
    let _pin = store.pin();
    // Both blocks' chunks go into the one open pack; its upload answers slowly.
    let staged_a = store.stage_chunks(std::slice::from_ref(&a)).unwrap();
    let staged_b = store.stage_chunks(std::slice::from_ref(&b)).unwrap();
    faulty.inject("packs/", Fault::SlowPut(Duration::from_millis(700)));
    let (id_a, id_b) = (BlockId::random(), BlockId::random());
    let first = {
        let (store, a) = (store.clone(), a.clone());
        std::thread::spawn(move || store.commit_block(id_a, &manifest_of(&[&a], 0), staged_a))
    };
    std::thread::sleep(Duration::from_millis(200)); // the first commit is uploading the pack
    store
        .commit_block(id_b, &manifest_of(&[&b], 0), staged_b)
        .unwrap();
    first.join().unwrap().unwrap();
    faulty.heal();

    let (records, _) = log_of(store.location());
    let with_blocks: Vec<Vec<BlockId>> = records
        .iter()
        .map(|r| added([r]))
        .filter(|ids| !ids.is_empty())
        .collect();
    assert_eq!(with_blocks.len(), 1, "one record for both: {with_blocks:?}");
    assert_eq!(with_blocks[0].len(), 2);
    assert!(
        records
            .iter()
            .flat_map(|r| &r.events)
            .any(|e| matches!(e, Event::PackAdded { .. })),
        "with the pack's news"
    );
}

#[test]
fn alone_on_a_bucket_no_acknowledged_record_is_ever_taken_for_late() {
    // No grace period: records are placed by a listing up to a minute old, so one may land in
    // an epoch whose successor began seconds before; every one of them counts.
    let options = S3Options {
        epoch_records: 1,
        ..logging()
    };
    let location = fresh_location();
    let store = open(&location, options);
    let first = put(&store, &[&chunk(80, 1000)]);
    store.refresh_from_log().unwrap(); // epoch 0 is full: epoch 1 begins
    std::thread::sleep(Duration::from_millis(2100));
    let stale = BlockId::random();
    let (key, body) = foreign_record(0, 1, stale);
    Remote::connect(&location, quick_timeouts())
        .unwrap()
        .put(&key, body, true)
        .unwrap();
    let second = put(&store, &[&chunk(81, 1000)]);
    drop(store);
    let reopened = open(&location, options);
    let mut known = block_ids(&reopened);
    known.sort();
    let mut expected = vec![first, second, stale];
    expected.sort();
    assert_eq!(known, expected);
}

#[test]
fn a_commit_whose_view_of_the_marks_grew_old_waiting_for_its_pack_is_not_logged() {
    // The marks are looked at before a commit waits for its pack; a record placed more than
    // G/2 after that view could land after a mark it did not see is G old.
    let grace = Duration::from_secs(2);
    let options = S3Options {
        grace,
        ..following()
    };
    let location = fresh_location();
    let (store, faulty) = faulty_store_at(&location, options);
    let on_time = put(&store, &[&chunk(90, 2000)]);
    faulty.inject(
        "packs/",
        Fault::SlowPut(grace / 2 + Duration::from_millis(500)),
    );
    let slow = BlockId::random();
    let err = commit_as(&store, slow, &chunk(91, 2000)).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("condemned"), "{err}");
    faulty.heal();
    let (records, _) = log_of(&location);
    assert!(!added(&records).contains(&slow));
    assert_eq!(block_ids(&open(&location, options)), vec![on_time]);
}

#[test]
fn a_create_retried_after_its_answer_was_lost_knows_its_own_object() {
    let (store, faulty) = faulty_store(logging());
    faulty.inject("log/", Fault::Replayed);
    faulty.inject("blocks/", Fault::Replayed);
    let block = put(&store, &[&chunk(95, 2000)]);
    let imported = BlockId::random();
    store.reserve_block(imported).unwrap();
    faulty.heal();
    assert!(block_ids(&open(store.location(), logging())).contains(&block));
}

#[test]
fn an_import_whose_record_failed_gives_its_id_back_once_cancelled() {
    let (store, faulty) = faulty_store(logging());
    let id = BlockId::random();
    let c = chunk(97, 2000);
    store.reserve_block(id).unwrap();
    faulty.inject("log/", Fault::Fail);
    assert!(commit_as(&store, id, &c).is_err());
    faulty.heal();
    // Held while the block's record may be in the bucket without its cancellation...
    assert!(matches!(
        store.reserve_block(id),
        Err(Error::AlreadyExists(_))
    ));
    // ...and free once the cancellation is in the log: the import can be done again.
    store.flush_log().unwrap();
    store.reserve_block(id).unwrap();
    commit_as(&store, id, &c).unwrap();
    let reopened = open(store.location(), logging());
    assert_eq!(reopened.manifest(id).unwrap(), manifest_of(&[&c], 0));
}
