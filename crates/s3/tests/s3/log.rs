//! The bucket's log as a change feed: what a server commits reaches the log as records, and a
//! record that cannot be written is written with the next one.

use std::collections::HashSet;
use std::time::Duration;

use aetherflow_s3::log_record::{self, Event, LogRecord};
use aetherflow_s3::remote::Remote;
use aetherflow_s3::volume_objects;
use aetherflow_s3::{S3Location, S3Options};
use aetherflow_store::BlockStore;

use crate::faulty::Fault;
use crate::harness::{chunk, fresh_location, open, put, quick_timeouts, single_writer};
use crate::injected::faulty_store;
use crate::volumes::{record, write};

/// Writes a log, never on its own (the test flushes it).
fn logging() -> S3Options {
    S3Options {
        log_every: Some(Duration::from_secs(3600)),
        ..single_writer()
    }
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
    store.create_volume(&record("v")).unwrap();
    store.acquire_volume("v").unwrap();
    write(&store, "v", &[(3, &chunk(3, 4096))]).unwrap();
    store.free_block(block).unwrap();
    store.release_volume("v");
    assert!(
        log_of(&location).0.is_empty(),
        "nothing is written before a flush"
    );
    store.flush_log().unwrap();

    let (records, markers) = log_of(&location);
    assert_eq!(markers, vec![0], "the first record made the first epoch");
    assert_eq!(records.len(), 1, "{records:?}");
    let events = &records[0].events;
    assert_eq!(records[0].epoch, 0);

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
        .position(|e| matches!(e, Event::BlockAdded { id, manifest } if *id == block && manifest.chunk_refs().count() == 2))
        .expect("the block, with its manifest");
    let freed = events
        .iter()
        .position(|e| matches!(e, Event::BlockFreed { id } if *id == block))
        .expect("the block freed");
    assert!(added < freed);

    // Nothing new: nothing written.
    store.flush_log().unwrap();
    assert_eq!(log_of(&location).0.len(), 1);
}

#[test]
fn a_record_that_cannot_be_written_goes_with_the_next() {
    let (store, faulty) = faulty_store(logging());
    let first = put(&store, &[&chunk(10, 3000)]);
    faulty.inject("log/", Fault::Fail);
    assert!(store.flush_log().is_err());
    faulty.heal();
    let second = put(&store, &[&chunk(11, 3000)]);
    store.flush_log().unwrap();

    let (records, _) = log_of(store.location());
    let added: Vec<_> = records
        .iter()
        .flat_map(|r| &r.events)
        .filter_map(|e| match e {
            Event::BlockAdded { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(
        added,
        vec![first, second],
        "the failed record's events come first"
    );
}
