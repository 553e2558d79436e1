//! The real S3 server the tests run against: SeaweedFS started by `scripts/test.sh`
//! (`scripts/seaweedfs.sh`), named by `AF_S3_ENDPOINT` and `AF_S3_BUCKET`. Each test works
//! under a prefix of its own, so tests run in parallel on one bucket.

use std::time::Duration;

use aetherflow_s3::{S3Location, S3Options, S3Store, Timeouts};
pub use aetherflow_store::conformance::{chunk, manifest_of};
use aetherflow_store::{BlockId, BlockStore, NewChunk};

pub fn endpoint() -> String {
    std::env::var("AF_S3_ENDPOINT").expect(
        "AF_S3_ENDPOINT is not set: these tests need a real S3 server. Run them with \
         `bash scripts/test.sh`, which installs and starts SeaweedFS (scripts/seaweedfs.sh)",
    )
}

pub fn bucket() -> String {
    std::env::var("AF_S3_BUCKET").unwrap_or_else(|_| "aetherflow-test".into())
}

/// A location no other test uses.
pub fn fresh_location() -> S3Location {
    location_at(&format!("test-{}", uuid::Uuid::new_v4().simple()))
}

pub fn location_at(prefix: &str) -> S3Location {
    format!("s3://{}/{prefix}?endpoint={}", bucket(), endpoint())
        .parse()
        .unwrap()
}

pub fn quick_timeouts() -> Timeouts {
    Timeouts {
        request: Duration::from_secs(5),
        retry: Duration::from_secs(2),
    }
}

/// Options for several servers on one bucket, with a grace period short enough to wait out.
pub fn shared_options(grace: Duration) -> S3Options {
    S3Options {
        grace,
        sweep_every: None,
        refresh_every: Duration::from_secs(30),
        timeouts: quick_timeouts(),
        ..S3Options::default()
    }
}

pub fn single_writer() -> S3Options {
    S3Options {
        timeouts: quick_timeouts(),
        ..S3Options::single_writer()
    }
}

pub fn open(location: &S3Location, options: S3Options) -> S3Store {
    S3Store::open(location, options).unwrap()
}

/// Allocates a block of `chunks` the way the memory manager does.
pub fn put(store: &dyn BlockStore, chunks: &[&NewChunk]) -> BlockId {
    let _pin = store.pin();
    let present = store
        .find_chunks(&chunks.iter().map(|c| c.id).collect::<Vec<_>>())
        .unwrap();
    let new: Vec<NewChunk> = chunks
        .iter()
        .zip(present)
        .filter(|(_, p)| p.is_none())
        .map(|(c, _)| (*c).clone())
        .collect();
    let staged = store.stage_chunks(&new).unwrap();
    let id = BlockId::random();
    store
        .commit_block(id, &manifest_of(chunks, 0), staged)
        .unwrap();
    id
}

/// Commits a block of `c` under `id`, its chunk staged for it (as an import does after
/// reserving the id, or a test that needs the commit's error).
pub fn commit_as(
    store: &dyn BlockStore,
    id: BlockId,
    c: &NewChunk,
) -> aetherflow_store::Result<()> {
    let _pin = store.pin();
    let staged = store.stage_chunks(std::slice::from_ref(c))?;
    store.commit_block(id, &manifest_of(&[c], 0), staged)
}

/// The ids of every block `store` knows, in order.
pub fn block_ids(store: &dyn BlockStore) -> Vec<BlockId> {
    let mut ids = Vec::new();
    store
        .blocks(&mut |b| {
            ids.push(b.id);
            true
        })
        .unwrap();
    ids.sort();
    ids
}

pub fn clean(store: &dyn BlockStore) {
    let mut damage = Vec::new();
    store.verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(damage.is_empty(), "verify found {damage:?}");
}
