//! The volume half of the contract: maps, snapshots, clones, and what they share.

use std::collections::BTreeMap;

use super::{assert_clean, chunk, put};
use crate::volume::{MapEntry, VolumeRecord};
use crate::{BlockStore, Error, NewChunk, What};

const CHUNK: u32 = 4096;

fn record(name: &str, size: u64) -> VolumeRecord {
    VolumeRecord {
        name: name.into(),
        size,
        chunk_size: CHUNK,
        read_only: false,
        seed: None,
        origin: None,
        created: 1_800_000_000,
        written: 0,
        zeroed: 0,
    }
}

/// The map of a volume, holes left out.
fn map_of(store: &dyn BlockStore, name: &str) -> BTreeMap<u64, MapEntry> {
    let mut out = BTreeMap::new();
    store
        .volume_map(name, 0..u64::MAX, &mut |i, e| {
            out.insert(i, e);
            true
        })
        .unwrap();
    out
}

fn entry(c: &NewChunk) -> MapEntry {
    MapEntry::Chunk {
        id: c.id,
        stored_len: c.payload.len() as u32,
    }
}

/// Writes chunks at indexes, staging the ones the store lacks, as a volume write-back does.
fn write(store: &dyn BlockStore, name: &str, at: &[(u64, &NewChunk)], durable: bool) {
    let _pin = store.pin();
    let ids: Vec<_> = at.iter().map(|(_, c)| c.id).collect();
    let found = store.find_chunks(&ids).unwrap();
    let mut new: Vec<NewChunk> = Vec::new();
    for ((_, c), f) in at.iter().zip(found) {
        if f.is_none() && !new.iter().any(|n| n.id == c.id) {
            new.push((*c).clone());
        }
    }
    let staged = store.stage_chunks(&new).unwrap();
    let changes: Vec<(u64, MapEntry)> = at.iter().map(|(i, c)| (*i, entry(c))).collect();
    store
        .commit_volume(name, &changes, staged, durable)
        .unwrap();
}

pub fn volumes_are_created_once_and_named_safely(store: &dyn BlockStore) {
    store.create_volume(&record("disk", 1 << 30)).unwrap();
    assert!(matches!(
        store.create_volume(&record("disk", 1 << 20)),
        Err(Error::AlreadyExists(What::Volume(_)))
    ));
    assert!(matches!(
        store.create_volume(&record("../etc", 1 << 20)),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        store.volume("nope"),
        Err(Error::NotFound(What::Volume(_)))
    ));
    assert_eq!(store.volume("disk").unwrap(), record("disk", 1 << 30));
    assert_eq!(store.volumes().unwrap().len(), 1);
    // A 100 TiB volume with nothing written costs its record.
    let before = store.totals().physical;
    store.create_volume(&record("huge", 100 << 40)).unwrap();
    assert!(store.totals().physical - before < 4096);
    assert!(map_of(store, "huge").is_empty());
    assert_eq!(store.totals().volumes, 2);
    assert_clean(store);
}

pub fn volume_maps_commit_overwrite_and_release(store: &dyn BlockStore) {
    store.create_volume(&record("v", 1 << 20)).unwrap();
    let (a, b) = (chunk(11, CHUNK as usize), chunk(12, CHUNK as usize));
    write(store, "v", &[(0, &a), (5, &a), (7, &b)], false);
    store
        .commit_volume(
            "v",
            &[(9, MapEntry::Zero), (3, MapEntry::Hole)],
            Vec::new(),
            true,
        )
        .unwrap();
    let m = map_of(store, "v");
    assert_eq!(m.len(), 4);
    assert_eq!(
        (m[&0], m[&7], m[&9]),
        (entry(&a), entry(&b), MapEntry::Zero)
    );
    let v = store.volume("v").unwrap();
    assert_eq!(
        (v.written, v.zeroed),
        (3 * u64::from(CHUNK), u64::from(CHUNK))
    );
    assert_eq!(store.chunk(&a.id).unwrap().payload, a.payload);
    // Overwriting every use of `a` releases it (by the next sync); `b` stays.
    write(store, "v", &[(0, &b), (5, &b)], true);
    store.sync().unwrap();
    assert!(matches!(store.chunk(&a.id), Err(Error::NotFound(_))));
    assert_eq!(store.chunk(&b.id).unwrap().payload, b.payload);
    // Writing a chunk past the end is refused, and changes nothing.
    assert!(store
        .commit_volume("v", &[(1 << 20, MapEntry::Zero)], Vec::new(), true)
        .is_err());
    assert_eq!(map_of(store, "v").len(), 4);
    assert_clean(store);
}

pub fn volumes_and_blocks_share_chunks(store: &dyn BlockStore) {
    store.create_volume(&record("v", 1 << 20)).unwrap();
    let shared = chunk(21, CHUNK as usize);
    let block = put(store, &[&shared], 0);
    write(store, "v", &[(1, &shared)], true);
    store.free_block(block).unwrap();
    assert_eq!(store.chunk(&shared.id).unwrap().payload, shared.payload);
    let block = put(store, &[&shared], 0);
    store.delete_volume("v").unwrap();
    assert_eq!(store.chunk(&shared.id).unwrap().payload, shared.payload);
    store.free_block(block).unwrap();
    assert!(matches!(store.chunk(&shared.id), Err(Error::NotFound(_))));
    assert_clean(store);
}

pub fn snapshots_freeze_and_clones_diverge(store: &dyn BlockStore) {
    store.create_volume(&record("live", 1 << 20)).unwrap();
    let (old, new, other) = (
        chunk(31, CHUNK as usize),
        chunk(32, CHUNK as usize),
        chunk(33, CHUNK as usize),
    );
    write(store, "live", &[(0, &old), (1, &old)], true);
    let snap = store.snapshot_volume("live", "snap", false).unwrap();
    assert!(snap.read_only);
    assert_eq!(snap.origin.as_deref(), Some("live"));
    assert_eq!(snap.written, 2 * u64::from(CHUNK));
    write(store, "live", &[(0, &new)], true);
    store.clear_volume("live", 1..2, true).unwrap();
    assert_eq!(map_of(store, "live"), BTreeMap::from([(0, entry(&new))]));
    assert_eq!(
        map_of(store, "snap"),
        BTreeMap::from([(0, entry(&old)), (1, entry(&old))])
    );
    assert!(matches!(
        store.commit_volume("snap", &[(0, MapEntry::Zero)], Vec::new(), true),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        store.snapshot_volume("live", "clone-of-live", true),
        Err(Error::Refused(_))
    ));
    let clone = store.snapshot_volume("snap", "clone", true).unwrap();
    assert!(!clone.read_only);
    write(store, "clone", &[(1, &other)], true);
    assert_eq!(
        map_of(store, "clone"),
        BTreeMap::from([(0, entry(&old)), (1, entry(&other))])
    );
    assert_eq!(map_of(store, "snap")[&1], entry(&old));
    // A snapshot of a snapshot, then deleting what they came from: each keeps its content.
    store.snapshot_volume("snap", "snap2", false).unwrap();
    store.delete_volume("snap").unwrap();
    store.delete_volume("live").unwrap();
    assert_eq!(map_of(store, "snap2")[&0], entry(&old));
    assert_eq!(store.chunk(&old.id).unwrap().payload, old.payload);
    assert!(matches!(store.chunk(&new.id), Err(Error::NotFound(_))));
    assert_clean(store);
    store.delete_volume("snap2").unwrap();
    assert_eq!(
        store.chunk(&old.id).unwrap().payload,
        old.payload,
        "the clone uses it"
    );
    store.delete_volume("clone").unwrap();
    for c in [&old, &new, &other] {
        assert!(matches!(store.chunk(&c.id), Err(Error::NotFound(_))));
    }
    assert_eq!(store.totals().volumes, 0);
    assert_clean(store);
}

pub fn clearing_a_range_costs_what_it_held(store: &dyn BlockStore) {
    let size = 100u64 << 40;
    store.create_volume(&record("big", size)).unwrap();
    let a = chunk(41, CHUNK as usize);
    let far = size / u64::from(CHUNK) - 1;
    write(store, "big", &[(3, &a), (far, &a)], true);
    // A trim of the whole 100 TiB visits two rows.
    store.clear_volume("big", 0..u64::MAX, true).unwrap();
    assert!(map_of(store, "big").is_empty());
    assert_eq!(store.volume("big").unwrap().written, 0);
    assert!(matches!(store.chunk(&a.id), Err(Error::NotFound(_))));
    assert_clean(store);
}

pub fn usage_counts_what_only_the_volume_holds(store: &dyn BlockStore) {
    store.create_volume(&record("v", 1 << 20)).unwrap();
    let (mine, shared) = (chunk(51, CHUNK as usize), chunk(52, CHUNK as usize));
    let _block = put(store, &[&shared], 0);
    write(store, "v", &[(0, &mine), (1, &shared), (2, &mine)], true);
    let u = store.volume_usage("v").unwrap();
    assert_eq!(u.chunks, 2);
    assert_eq!(u.unique, 2 * u64::from(CHUNK));
    let mine_len = mine.payload.len() as u64;
    assert!(
        u.exclusive >= mine_len && u.exclusive < mine_len + 1024,
        "{u:?}"
    );
    // After a snapshot, nothing is the volume's alone: the snapshot shares it all.
    store.snapshot_volume("v", "s", false).unwrap();
    let u = store.volume_usage("v").unwrap();
    assert!(u.exclusive < 1024, "{u:?}");
    assert_clean(store);
}
