//! The S3 backend against a real S3 server: the conformance suite, servers sharing a bucket,
//! and damage in the bucket.

mod faults;
mod faulty;
mod harness;
mod injected;
mod shared;

fn with_store(test: &dyn Fn(&dyn aetherflow_store::BlockStore)) {
    let store = harness::open(&harness::fresh_location(), harness::single_writer());
    test(&store);
}

aetherflow_store::conformance_tests!(blocks: with_store);

/// Volumes are not kept on object storage yet: asking for one is refused, by name, and nothing
/// is written.
#[test]
fn volumes_are_refused_with_a_clear_error() {
    with_store(&|store| {
        let record = aetherflow_store::VolumeRecord {
            name: "v".into(),
            size: 1 << 20,
            chunk_size: 65536,
            read_only: false,
            seed: None,
            origin: None,
            created: 0,
            written: 0,
            zeroed: 0,
        };
        let err = store.create_volume(&record).unwrap_err();
        assert!(
            matches!(&err, aetherflow_store::Error::Refused(why) if why.contains("object storage")),
            "{err}"
        );
        assert!(store.volumes().unwrap().is_empty());
    });
}
