//! Several servers on one bucket: each sees the others' blocks, and garbage collection never
//! deletes a chunk that another server's commit relies on.

use std::time::Duration;

use aetherflow_s3::S3Store;
use aetherflow_store::{BlockId, BlockStore, Error, NewChunk, Pin};

use crate::harness::{
    chunk, clean, commit_as, fresh_location, manifest_of, open, put, shared_options, single_writer,
};

const GRACE: Duration = Duration::from_secs(2);

/// Long enough for a pack or a mark to be a grace period old in the bucket's clock, which
/// keeps whole seconds.
fn wait_out_grace() {
    std::thread::sleep(GRACE + Duration::from_millis(1300));
}

#[test]
fn servers_see_each_others_blocks_and_share_chunks() {
    let location = fresh_location();
    let a = open(&location, shared_options(GRACE));
    let b = open(&location, shared_options(GRACE));
    assert_eq!(
        a.domain_salt(),
        b.domain_salt(),
        "one dedup domain per bucket prefix"
    );
    let c = chunk(1, 5000);
    let id = put(&a, &[&c]);
    assert_eq!(b.manifest(id).unwrap(), manifest_of(&[&c], 0));
    assert_eq!(b.chunk(&c.id).unwrap().payload, c.payload);

    b.refresh().unwrap();
    assert_eq!(b.totals().blocks, 1);
    assert_eq!(
        b.find_chunks(&[c.id]).unwrap(),
        vec![Some(c.info())],
        "dedup across servers"
    );
    let again = put(&b, &[&c]);
    b.refresh().unwrap();
    assert_eq!(
        b.totals().chunks,
        1,
        "the second server stored no second copy"
    );

    let mut listed = Vec::new();
    a.refresh().unwrap();
    a.blocks(&mut |s| {
        listed.push(s.id);
        true
    })
    .unwrap();
    let mut both = vec![id, again];
    both.sort();
    assert_eq!(listed, both);

    b.free_block(id).unwrap();
    // A server trusts the bucket's word that a block exists for a second.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(matches!(a.manifest(id), Err(Error::NotFound(_))));
    assert!(matches!(a.free_block(id), Err(Error::NotFound(_))));
    assert_eq!(
        a.chunk(&c.id).unwrap().payload,
        c.payload,
        "still used by the other block"
    );
    clean(&a);
    clean(&b);
}

/// Two servers, and a chunk in a pack a grace period old: the writer finds the chunk (its view
/// of the marks fresh, and empty), then the collector frees the last block using it and
/// condemns the pack. Returns the writer's pin, still held as by a running allocation.
fn found_then_condemned(seed: u8) -> (S3Store, S3Store, NewChunk, Pin) {
    let location = fresh_location();
    let collector = open(&location, shared_options(GRACE));
    let writer = open(&location, shared_options(GRACE));
    let c = chunk(seed, 4000);
    let old = put(&collector, &[&c]);
    wait_out_grace();
    let pin = writer.pin();
    writer.refresh().unwrap();
    assert!(writer.find_chunks(&[c.id]).unwrap()[0].is_some());
    collector.free_block(old).unwrap();
    let report = collector.sweep().unwrap();
    assert_eq!(report.condemned, 1, "{report:?}");
    (collector, writer, c, pin)
}

#[test]
fn a_commit_that_saw_no_mark_gets_the_pack_pardoned() {
    let (collector, writer, c, pin) = found_then_condemned(2);
    // The writer commits on its view, which is younger than a quarter of the grace period.
    let id = BlockId::random();
    writer
        .commit_block(id, &manifest_of(&[&c], 0), Vec::new())
        .unwrap();
    drop(pin);

    wait_out_grace();
    let second = collector.sweep().unwrap();
    assert_eq!((second.deleted, second.pardoned), (0, 1), "{second:?}");
    assert_eq!(collector.chunk(&c.id).unwrap().payload, c.payload);
    assert_eq!(writer.chunk(&c.id).unwrap().payload, c.payload);
    clean(&collector);
}

#[test]
fn a_commit_that_sees_a_mark_copies_the_chunk_first() {
    let (collector, writer, c, pin) = found_then_condemned(3);
    // The writer's view of the marks is now older than a quarter of the grace period, so
    // its commit looks again, sees the mark, and copies the chunk out of the doomed pack.
    std::thread::sleep(GRACE / 4 + Duration::from_millis(100));
    let id = BlockId::random();
    writer
        .commit_block(id, &manifest_of(&[&c], 0), Vec::new())
        .unwrap();
    drop(pin);

    wait_out_grace();
    let second = collector.sweep().unwrap();
    assert_eq!((second.deleted, second.pardoned), (1, 0), "{second:?}");
    assert_eq!(collector.chunk(&c.id).unwrap().payload, c.payload);
    assert_eq!(writer.manifest(id).unwrap(), manifest_of(&[&c], 0));
    clean(&collector);
}

#[test]
fn young_packs_and_fresh_marks_are_left_alone() {
    let location = fresh_location();
    let a = open(&location, shared_options(GRACE));
    let c = chunk(4, 3000);
    let id = put(&a, &[&c]);
    a.free_block(id).unwrap();
    let report = a.sweep().unwrap();
    assert_eq!(
        report.condemned, 0,
        "a pack younger than the grace period may still be committed to"
    );
    wait_out_grace();
    assert_eq!(a.sweep().unwrap().condemned, 1);
    assert_eq!(
        a.sweep().unwrap().deleted,
        0,
        "the mark is not yet a grace period old"
    );
    wait_out_grace();
    let report = a.sweep().unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    assert!(a.totals().physical < 1000, "{:?}", a.totals());
}

#[test]
fn mostly_dead_packs_are_compacted() {
    let store = open(&fresh_location(), single_writer());
    let (big, small) = (chunk(5, 60_000), chunk(6, 2_000));
    let both = put(&store, &[&big, &small]);
    let keep = put(&store, &[&small]);
    let before = store.totals().physical;
    store.free_block(both).unwrap();
    let after = store.totals().physical;
    assert!(
        after < before / 4,
        "compaction gave the space back: {before} -> {after}"
    );
    assert_eq!(store.chunk(&small.id).unwrap().payload, small.payload);
    assert_eq!(store.manifest(keep).unwrap(), manifest_of(&[&small], 0));
    clean(&store);
}

#[test]
fn concurrent_allocations_frees_and_sweeps_on_two_servers_lose_nothing() {
    use std::sync::Arc;
    use std::time::Instant;

    let location = fresh_location();
    let options = aetherflow_s3::S3Options {
        refresh_every: Duration::from_millis(300),
        pack_size: 64 * 1024,
        ..shared_options(GRACE)
    };
    let servers = [open(&location, options), open(&location, options)];
    // Overlapping content: every block shares chunks with blocks of both servers.
    let pool: Arc<Vec<NewChunk>> = Arc::new((0..24u8).map(|i| chunk(100 + i, 9_000)).collect());
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut deleted = 0;
    let kept: Vec<(BlockId, Vec<u8>)> = std::thread::scope(|s| {
        // Each server collects garbage all through the run, as its housekeeper would.
        let collectors: Vec<_> = servers
            .iter()
            .map(|server| {
                s.spawn(move || {
                    let mut deleted = 0;
                    while Instant::now() < deadline {
                        deleted += server.sweep().unwrap().deleted;
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    deleted
                })
            })
            .collect();
        let workers: Vec<_> = (0..4usize)
            .map(|t| {
                let server = &servers[t % 2];
                let pool = Arc::clone(&pool);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut round = 0usize;
                    while Instant::now() < deadline {
                        let a = &pool[(t * 7 + round) % pool.len()];
                        let b = &pool[(t * 5 + round * 3) % pool.len()];
                        let id = put(server, &[a, b]);
                        mine.push((id, vec![a.id.0[0], b.id.0[0]]));
                        if round % 3 == 2 {
                            let (old, _) = mine.remove(round % mine.len());
                            server.free_block(old).unwrap();
                        }
                        round += 1;
                    }
                    mine
                })
            })
            .collect();
        let kept = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        deleted += collectors
            .into_iter()
            .map(|c| c.join().unwrap())
            .sum::<u64>();
        kept
    });
    // Let every mark made during the run come due, and collect twice more.
    wait_out_grace();
    for server in &servers {
        deleted += server.sweep().unwrap().deleted;
    }
    wait_out_grace();
    for server in &servers {
        deleted += server.sweep().unwrap().deleted;
        server.refresh().unwrap();
    }
    assert!(deleted > 0, "the collectors had garbage to delete");
    assert!(kept.len() > 20, "the run allocated {} blocks", kept.len());
    for server in &servers {
        for (id, _) in &kept {
            let m = server.manifest(*id).unwrap();
            for c in m.chunk_refs() {
                server.chunk(c).unwrap();
            }
        }
        assert_eq!(server.totals().blocks, kept.len() as u64);
        clean(server);
    }
}

#[test]
fn an_imported_id_is_held_across_servers_until_its_block_is_freed() {
    let location = fresh_location();
    let a = open(&location, shared_options(GRACE));
    let b = open(&location, shared_options(GRACE));
    let taken = |r: aetherflow_store::Result<()>| matches!(r, Err(Error::AlreadyExists(_)));

    let id = BlockId::random();
    a.reserve_block(id).unwrap();
    assert!(taken(b.reserve_block(id)), "held before its block exists");
    let (old, new) = (chunk(60, 3000), chunk(61, 3000));
    commit_as(&a, id, &old).unwrap();
    assert!(taken(b.reserve_block(id)), "held by its block");
    assert!(taken(a.reserve_block(id)));

    // Freed, the id can be imported again, by another server; every server then reads the
    // new block, whatever order it reads the records in.
    a.free_block(id).unwrap();
    b.reserve_block(id).unwrap();
    commit_as(&b, id, &new).unwrap();
    for server in [&a, &b, &open(&location, shared_options(GRACE))] {
        server.refresh_from_log().unwrap();
        assert_eq!(server.manifest(id).unwrap(), manifest_of(&[&new], 0));
    }

    // An id held for an allocation that failed before its commit is given back.
    let other = BlockId::random();
    a.reserve_block(other).unwrap();
    a.unreserve_block(other);
    b.reserve_block(other).unwrap();
}
