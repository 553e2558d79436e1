//! The S3 backend against a real S3 server: the conformance suite, servers sharing a bucket,
//! and damage in the bucket.

mod faults;
mod faulty;
mod harness;
mod injected;
mod log;
mod shared;
mod snapshots;
mod volumes;

fn with_store(test: &dyn Fn(&dyn aetherflow_store::BlockStore)) {
    let store = harness::open(&harness::fresh_location(), harness::single_writer());
    test(&store);
}

aetherflow_store::conformance_tests!(with_store);
