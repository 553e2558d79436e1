//! The backend's contract over an in-memory object store, in plain `cargo test`: no S3 server
//! needed. (`tests/s3` runs the same suite, and the tests of several servers and faults, against
//! SeaweedFS, the realistic tier.)

use std::sync::Arc;

use aetherflow_s3::{S3Location, S3Options, S3Store};
use object_store::memory::InMemory;

fn with_store(test: &dyn Fn(&dyn aetherflow_store::BlockStore)) {
    let location: S3Location = "s3://memory/store?endpoint=http://127.0.0.1:1"
        .parse()
        .unwrap();
    let store = S3Store::open_on(
        Arc::new(InMemory::new()),
        &location,
        S3Options::single_writer(),
    )
    .unwrap();
    test(&store);
}

aetherflow_store::conformance_tests!(with_store);
