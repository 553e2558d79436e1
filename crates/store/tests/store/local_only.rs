//! What only the durable local backend promises.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use aetherflow_store::conformance::{chunk, manifest_of};
use aetherflow_store::{BlockId, BlockStore, Damage, Error, LocalStore};

use super::small_packs;

fn commit(store: &LocalStore, seeds: &[u8], len: usize) -> BlockId {
    let chunks: Vec<_> = seeds.iter().map(|&s| chunk(s, len)).collect();
    let refs: Vec<_> = chunks.iter().collect();
    let staged = store.stage_chunks(&chunks).unwrap();
    let id = BlockId::random();
    store
        .commit_block(id, &manifest_of(&refs, 0), staged)
        .unwrap();
    id
}

fn pack_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn damage(store: &LocalStore) -> Vec<Damage> {
    let mut d = Vec::new();
    store.verify(true, &mut |x| d.push(x)).unwrap();
    d
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (id, totals, salt) = {
        let store = LocalStore::open(dir.path(), small_packs()).unwrap();
        let id = commit(&store, &[1, 2], 10_000);
        store.add_accesses(&[(id, 4)]).unwrap();
        (id, store.totals(), store.domain_salt())
    };
    let store = LocalStore::open(dir.path(), small_packs()).unwrap();
    assert_eq!(store.totals(), totals);
    assert_eq!(
        store.domain_salt(),
        salt,
        "the seed domain salt is fixed at creation"
    );
    assert_eq!(store.accesses(id).unwrap(), 4);
    assert_eq!(
        store.chunk(&chunk(2, 10_000).id).unwrap().payload,
        chunk(2, 10_000).payload
    );
    assert!(damage(&store).is_empty());
}

#[test]
fn a_second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = LocalStore::open(dir.path(), small_packs()).unwrap();
    let err = LocalStore::open(dir.path(), small_packs()).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn uncommitted_bytes_are_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let committed = {
        let store = LocalStore::open(dir.path(), small_packs()).unwrap();
        commit(&store, &[1], 50_000);
        let committed = store.totals();
        // Staged but never committed, as if the process died before its index commit: some land
        // in the active pack, some fill new packs.
        let orphans: Vec<_> = (10..30).map(|s| chunk(s, 50_000)).collect();
        for c in &orphans {
            drop(store.stage_chunks(std::slice::from_ref(c)).unwrap());
        }
        assert!(store.totals().physical > committed.physical + 900_000);
        // No orderly close, as in a crash. The leaked store keeps its lock, so the "restart"
        // opens a copy of the directory as the disk holds it now.
        std::mem::forget(store);
        committed
    };
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let store = LocalStore::open(copy.path(), small_packs()).unwrap();
    assert_eq!(
        store.totals(),
        committed,
        "orphans are gone, committed data stays"
    );
    assert_eq!(pack_files(copy.path()).len(), 1);
    assert!(damage(&store).is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_flipped_bit_is_named_and_spares_other_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), small_packs()).unwrap();
    commit(&store, &[1, 2, 3], 20_000);
    let pack = &pack_files(dir.path())[0];
    // The second record's payload: pack header 16, record header 61, payload 20,000 each.
    let at = 16 + (61 + 20_000) + 61 + 777;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(pack)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x04], at).unwrap();
    let hit = chunk(2, 20_000).id;
    assert!(store.chunk(&hit).unwrap_err().is_corrupt());
    for s in [1, 3] {
        assert_eq!(
            store.chunk(&chunk(s, 20_000).id).unwrap().payload,
            chunk(s, 20_000).payload
        );
    }
    let found = damage(&store);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(matches!(&found[0], Damage::Chunk { id, .. } if *id == hit));
    let mut quick = Vec::new();
    store.verify(false, &mut |d| quick.push(d)).unwrap();
    assert!(
        quick.is_empty(),
        "without read_data only the index is checked"
    );
}

#[test]
fn freeing_everything_gives_the_disk_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), small_packs()).unwrap();
    let ids: Vec<_> = (0..60u8).map(|i| commit(&store, &[i], 30_000)).collect();
    let peak: u64 = pack_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(pack_files(dir.path()).len() > 3, "small packs rotate");
    // Free every other block first: compaction must keep the survivors readable.
    for id in ids.iter().step_by(2) {
        store.free_block(*id).unwrap();
    }
    for i in (1..60u8).step_by(2) {
        assert_eq!(
            store.chunk(&chunk(i, 30_000).id).unwrap().payload,
            chunk(i, 30_000).payload
        );
    }
    assert!(damage(&store).is_empty());
    for id in ids.iter().skip(1).step_by(2) {
        store.free_block(*id).unwrap();
    }
    let left: u64 = pack_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(left <= peak / 100, "{left} bytes of packs left of {peak}");
    assert!(damage(&store).is_empty());
}

#[test]
fn one_reclaim_pass_moving_more_than_a_pack_keeps_every_survivor() {
    // Frees pile up while an allocation is pinned (so nothing can be reclaimed), then a single
    // pass compacts several packs at once: the copies fill more than one new pack.
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), small_packs()).unwrap();
    let ids: Vec<_> = (0..90u8).map(|i| commit(&store, &[i], 30_000)).collect();
    let pin = store.pin();
    for (i, id) in ids.iter().enumerate() {
        if i % 3 != 0 {
            store.free_block(*id).unwrap();
        }
    }
    drop(pin);
    let trigger = commit(&store, &[200], 10);
    store.free_block(trigger).unwrap(); // the one big pass
    for i in (0..90u8).step_by(3) {
        let c = chunk(i, 30_000);
        assert_eq!(
            store.chunk(&c.id).unwrap().payload,
            c.payload,
            "chunk {i} after compaction"
        );
    }
    assert!(damage(&store).is_empty(), "{:?}", damage(&store));
    drop(store);
    // And after a restart, whose own reclaim pass runs too.
    let store = LocalStore::open(dir.path(), small_packs()).unwrap();
    for i in (0..90u8).step_by(3) {
        assert_eq!(
            store.chunk(&chunk(i, 30_000).id).unwrap().payload,
            chunk(i, 30_000).payload
        );
    }
    assert!(damage(&store).is_empty());
}

#[test]
fn a_damaged_manifest_is_named_and_the_rest_still_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let store = LocalStore::open(dir.path(), small_packs()).unwrap();
        (commit(&store, &[1], 1000), commit(&store, &[2], 1000))
    };
    // Damage block a's manifest in the index itself, through redb.
    {
        use redb::ReadableTable;
        let db = redb::Database::open(dir.path().join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<u128, &[u8]>::new("blocks"))
                .unwrap();
            let mut bytes = t.get(a.as_u128()).unwrap().unwrap().value().to_vec();
            bytes[20] ^= 1;
            t.insert(a.as_u128(), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = LocalStore::open(dir.path(), small_packs()).unwrap();
    let mut listed = Vec::new();
    store
        .blocks(&mut |s| {
            listed.push(s.id);
            true
        })
        .unwrap();
    assert_eq!(listed, vec![b]);
    assert!(damage(&store)
        .iter()
        .any(|d| matches!(d, Damage::Block { id, .. } if *id == a)));
}
