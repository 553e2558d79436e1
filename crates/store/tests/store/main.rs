//! The storage layer's integration tests: the conformance suite on every backend here, and what
//! only the local backend promises (persistence, recovery, compaction, damage).

use aetherflow_store::local::LocalOptions;
use aetherflow_store::{BlockStore, LocalStore};

/// Small packs, so that a few test blocks already exercise rotation and compaction.
pub fn small_packs() -> LocalOptions {
    LocalOptions {
        pack_size: 256 * 1024,
        ..LocalOptions::default()
    }
}

mod memory {
    use super::*;
    fn with_store(test: &dyn Fn(&dyn BlockStore)) {
        test(&LocalStore::in_memory().unwrap())
    }
    aetherflow_store::conformance_tests!(with_store);
}

mod local {
    use super::*;
    fn with_store(test: &dyn Fn(&dyn BlockStore)) {
        let dir = tempfile::tempdir().unwrap();
        test(&LocalStore::open(dir.path(), small_packs()).unwrap())
    }
    aetherflow_store::conformance_tests!(with_store);
}

mod local_only;
mod power_loss;
