//! Damage and mistakes: objects altered or cut in the bucket, a missing bucket.

use aetherflow_s3::remote::Remote;
use aetherflow_s3::{S3Location, S3Store};
use aetherflow_store::{BlockStore, Damage, Error, What};
use bytes::Bytes;

use crate::harness::{chunk, endpoint, fresh_location, open, put, quick_timeouts, single_writer};

fn pack_names(remote: &Remote) -> Vec<String> {
    remote
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect()
}

#[test]
fn altered_and_cut_packs_are_corrupt_and_named() {
    let location = fresh_location();
    let store = open(&location, single_writer());
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let (a, b) = (chunk(1, 5000), chunk(2, 5000));
    let block_a = put(&store, &[&a]);
    let packs_before = pack_names(&remote);
    let block_b = put(&store, &[&b]);
    let pack_a = packs_before[0].clone();
    let pack_b = pack_names(&remote)
        .into_iter()
        .find(|p| *p != pack_a)
        .unwrap();

    // One bit of a's payload flipped; b's pack cut in half.
    let mut bytes = remote.get(&pack_a).unwrap().to_vec();
    bytes[8 + 61 + 100] ^= 1;
    remote.put(&pack_a, Bytes::from(bytes), false).unwrap();
    let cut = remote.get(&pack_b).unwrap();
    remote
        .put(&pack_b, cut.slice(..cut.len() / 2), false)
        .unwrap();

    for c in [&a, &b] {
        let err = store.chunk(&c.id).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
    }
    let mut damage = Vec::new();
    store.verify(true, &mut |d| damage.push(d)).unwrap();
    for c in [&a, &b] {
        assert!(
            damage
                .iter()
                .any(|d| matches!(d, Damage::Chunk { id, .. } if *id == c.id)),
            "{damage:?}"
        );
    }

    // A server opening the bucket now cannot read b's index from the pack, but the log
    // carries every pack's index: it finds the chunk, and its check names the damage.
    let fresh = open(&location, single_writer());
    let mut damage = Vec::new();
    fresh.verify(true, &mut |d| damage.push(d)).unwrap();
    for c in [&a, &b] {
        assert!(
            damage
                .iter()
                .any(|d| matches!(d, Damage::Chunk { id, .. } if *id == c.id)),
            "{damage:?}"
        );
    }
    assert!(fresh.chunk(&b.id).unwrap_err().is_corrupt());
    for block in [block_a, block_b] {
        assert!(
            fresh.manifest(block).is_ok(),
            "the manifests themselves are fine"
        );
    }
}

#[test]
fn an_altered_log_record_is_named_by_check_and_stops_collection() {
    let location = fresh_location();
    let store = open(&location, single_writer());
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let c = chunk(3, 3000);
    put(&store, &[&c]);
    let key = remote
        .list("log/")
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .find(|k| !k.contains("epochs"))
        .expect("the block's record");
    let mut body = remote.get(&key).unwrap().to_vec();
    let last = body.len() - 1;
    body[last] ^= 0xFF;
    remote.put(&key, Bytes::from(body), false).unwrap();

    let fresh = open(&location, single_writer());
    let mut damage = Vec::new();
    fresh.verify(false, &mut |d| damage.push(d)).unwrap();
    assert!(
        damage
            .iter()
            .any(|d| matches!(d, Damage::Index { what } if what.contains(&key))),
        "{damage:?}"
    );
    let err = fresh.sweep().unwrap_err();
    assert!(
        err.is_corrupt() && err.to_string().contains("cannot be read"),
        "{err}"
    );
    assert_eq!(fresh.sweep().unwrap_err().to_string(), err.to_string());
    assert!(
        remote.get(&pack_names(&remote)[0]).is_ok(),
        "nothing was deleted"
    );
}

#[test]
fn a_missing_bucket_is_a_clear_error_at_open() {
    let location: S3Location = format!(
        "s3://no-such-bucket-{}/p?endpoint={}",
        uuid::Uuid::new_v4().simple(),
        endpoint()
    )
    .parse()
    .unwrap();
    let err = S3Store::open(&location, single_writer()).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(What::Bucket { name, .. }) if *name == location.bucket),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn an_unreachable_server_is_unavailable_not_missing() {
    let location: S3Location = "s3://b/p?endpoint=http://127.0.0.1:9".parse().unwrap();
    let err = S3Store::open(&location, single_writer()).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
}

#[test]
fn prefetched_chunks_are_fetched_once_and_checked_like_any_read() {
    let location = fresh_location();
    let store = open(&location, single_writer());
    let chunks: Vec<_> = (0..6u8).map(|i| chunk(50 + i, 20_000)).collect();
    put(&store, &chunks.iter().collect::<Vec<_>>());
    let ids: Vec<_> = chunks.iter().map(|c| c.id).collect();

    let gets = || store.remote_requests().unwrap().get;
    let before = gets();
    store.prefetch(&ids);
    for c in &chunks {
        assert_eq!(store.chunk(&c.id).unwrap().payload, c.payload);
    }
    assert_eq!(
        gets() - before,
        1,
        "one GET for the six records, back to back in their pack"
    );

    // The first chunk's payload damaged: prefetched or not, it is corrupt, never returned (by
    // a server that has not just handed the records over, and so keeps none of them).
    let remote = Remote::connect(&location, quick_timeouts()).unwrap();
    let pack = pack_names(&remote)[0].clone();
    let mut bytes = remote.get(&pack).unwrap().to_vec();
    bytes[8 + 61 + 10] ^= 1;
    remote.put(&pack, Bytes::from(bytes), false).unwrap();
    let store = open(&location, single_writer());
    store.prefetch(&ids);
    assert!(store.chunk(&ids[0]).unwrap_err().is_corrupt());
    for c in &chunks[1..] {
        assert_eq!(store.chunk(&c.id).unwrap().payload, c.payload);
    }
}

#[test]
fn a_chunk_two_readers_want_at_once_or_soon_after_is_fetched_once() {
    let location = fresh_location();
    let store = open(&location, single_writer());
    let chunks: Vec<_> = (0..4u8).map(|i| chunk(70 + i, 20_000)).collect();
    put(&store, &chunks.iter().collect::<Vec<_>>());
    let ids: Vec<_> = chunks.iter().map(|c| c.id).collect();
    let gets = || store.remote_requests().unwrap().get;

    // Two readers of the first chunk, both asking while its fetch is under way: they share it.
    let before = gets();
    store.prefetch(&ids);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    store.prefetch(&ids[..1]);
                    store.chunk(&ids[0]).unwrap().payload
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().unwrap(), chunks[0].payload);
        }
    });
    // A third comes a moment later, when the first two have it already.
    store.prefetch(&ids[..1]);
    assert_eq!(store.chunk(&ids[0]).unwrap().payload, chunks[0].payload);
    assert_eq!(
        gets() - before,
        1,
        "one GET for the four records, whoever asks for the first"
    );
}

#[test]
fn a_store_of_another_version_is_refused_by_name() {
    for (version, says) in [
        (1, "the build that wrote it"),
        (2, "aetherflow upgrade-store"),
        (4, "newer build"),
    ] {
        let location = fresh_location();
        let remote = Remote::connect(&location, quick_timeouts()).unwrap();
        remote
            .put(
                aetherflow_s3::keys::META,
                aetherflow_s3::meta::encode_identity(version, &[1; 16]),
                true,
            )
            .unwrap();
        let err = S3Store::open(&location, single_writer()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Refused(_)), "{message}");
        assert!(
            message.contains(&format!("version {version}"))
                && message.contains(&format!("version {}", aetherflow_s3::meta::META_VERSION))
                && message.contains(says),
            "{message}"
        );
        let listed = remote.list("").unwrap();
        assert_eq!(listed.len(), 1, "nothing is written to it: {listed:?}");
    }
}
