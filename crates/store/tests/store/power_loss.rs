//! Power cuts at random instants, on a simulated disk that keeps only what was synced.
//!
//! Two threads commit and free blocks while the main thread cuts the power at a random moment.
//! The disk after the cut must hold every block whose commit returned, none whose free
//! returned, and pass `verify` with every chunk read back. A missing `fsync` anywhere on the
//! commit path (pack data, a new pack's name, the index) loses an acknowledged block here,
//! which killing a process (the page cache survives that) would never show.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherflow_store::conformance::{chunk, manifest_of};
use aetherflow_store::local::sim::SimDisk;
use aetherflow_store::{BlockId, BlockStore, Error, LocalStore};

use super::small_packs;

/// Chunk lengths follow from the seed, so one identity always has one payload.
fn chunk_len(seed: u8) -> usize {
    3_000 + usize::from(seed) * 97
}

#[derive(Default)]
struct Model {
    /// Blocks whose commit returned, with the chunk seeds they hold.
    committed: HashMap<BlockId, Vec<u8>>,
    /// Commits and frees that had started but not returned: either outcome is right.
    committing: HashMap<BlockId, Vec<u8>>,
    freeing: HashSet<BlockId>,
    /// Blocks whose free returned.
    freed: HashSet<BlockId>,
}

fn random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn work(store: &LocalStore, model: &Mutex<Model>, stop: &AtomicBool, mut rng: u64) {
    while !stop.load(Ordering::Relaxed) {
        let free = {
            let m = model.lock().unwrap();
            let n = m.committed.len();
            (n > 4 && random(&mut rng) % 3 == 0).then(|| {
                *m.committed
                    .keys()
                    .nth(random(&mut rng) as usize % n)
                    .unwrap()
            })
        };
        if let Some(id) = free {
            {
                let mut m = model.lock().unwrap();
                if m.committed.remove(&id).is_none() {
                    continue;
                }
                m.freeing.insert(id);
            }
            store.free_block(id).unwrap();
            let mut m = model.lock().unwrap();
            m.freeing.remove(&id);
            m.freed.insert(id);
            continue;
        }
        // Seeds from a small range, so that blocks share chunks and frees leave shared ones.
        let seeds: Vec<u8> = (0..1 + random(&mut rng) % 4)
            .map(|_| (random(&mut rng) % 40) as u8)
            .collect();
        let chunks: Vec<_> = seeds.iter().map(|&s| chunk(s, chunk_len(s))).collect();
        let id = BlockId::random();
        model.lock().unwrap().committing.insert(id, seeds.clone());
        let _pin = store.pin();
        let found = store
            .find_chunks(&chunks.iter().map(|c| c.id).collect::<Vec<_>>())
            .unwrap();
        let new: Vec<_> = chunks
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(c, _)| c.clone())
            .collect();
        let staged = store.stage_chunks(&new).unwrap();
        let refs: Vec<_> = chunks.iter().collect();
        store
            .commit_block(id, &manifest_of(&refs, 100), staged)
            .unwrap();
        let mut m = model.lock().unwrap();
        m.committing.remove(&id);
        m.committed.insert(id, seeds);
    }
}

/// Checks the store after a power cut against the model, and settles what was in flight.
fn check_and_settle(store: &LocalStore, m: &mut Model) {
    for (id, seeds) in &m.committed {
        let manifest = store
            .manifest(*id)
            .unwrap_or_else(|e| panic!("acknowledged block {id} lost: {e}"));
        let expected: Vec<_> = seeds.iter().map(|&s| chunk(s, chunk_len(s)).id).collect();
        assert_eq!(manifest.chunk_refs().copied().collect::<Vec<_>>(), expected);
        for &s in seeds {
            let c = chunk(s, chunk_len(s));
            let got = store
                .chunk(&c.id)
                .unwrap_or_else(|e| panic!("chunk of acknowledged block {id}: {e}"));
            assert_eq!(got.payload, c.payload);
        }
    }
    for id in &m.freed {
        assert!(
            matches!(store.manifest(*id), Err(Error::NotFound(_))),
            "freed block {id} is back"
        );
    }
    for (id, seeds) in std::mem::take(&mut m.committing) {
        if store.manifest(id).is_ok() {
            m.committed.insert(id, seeds);
        }
    }
    for id in std::mem::take(&mut m.freeing) {
        match store.manifest(id) {
            Ok(manifest) => {
                let seeds = manifest
                    .chunk_refs()
                    .map(|c| {
                        (0..40u8)
                            .find(|&s| chunk(s, chunk_len(s)).id == *c)
                            .unwrap()
                    })
                    .collect();
                m.committed.insert(id, seeds);
            }
            Err(_) => {
                m.freed.insert(id);
            }
        }
    }
    let mut damage = Vec::new();
    store.verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
}

#[test]
fn acknowledged_changes_survive_power_loss() {
    let mut disk = SimDisk::new();
    let mut model = Model::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..24 {
        let store = Arc::new(LocalStore::open_on(Arc::new(disk.clone()), small_packs()).unwrap());
        check_and_settle(&store, &mut model);
        let shared = Arc::new(Mutex::new(std::mem::take(&mut model)));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                let (store, shared, stop) = (store.clone(), shared.clone(), stop.clone());
                let seed = random(&mut rng) | (w + 1);
                std::thread::spawn(move || work(&store, &shared, &stop, seed))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + random(&mut rng) % 40));
        // The cut and the model are taken together: everything the model calls done was done
        // before the cut.
        let after = {
            let m = shared.lock().unwrap();
            let after = disk.power_loss();
            model = Model {
                committed: m.committed.clone(),
                committing: m.committing.clone(),
                freeing: m.freeing.clone(),
                freed: m.freed.clone(),
            };
            after
        };
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        drop(store);
        assert!(
            round < 3 || !model.committed.is_empty() || !model.freed.is_empty(),
            "the workers did something before round {round}'s cut"
        );
        disk = after;
    }
    let store = LocalStore::open_on(Arc::new(disk), small_packs()).unwrap();
    check_and_settle(&store, &mut model);
    assert!(model.committed.len() + model.freed.len() > 50);
}
