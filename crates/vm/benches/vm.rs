//! Latency of the hot paths (criterion): a cache-hit read of a 1 MiB block, and a block lookup in
//! a store of 1,000,000 blocks. The lookup fixture is built once under `target/bench-fixtures`
//! (a couple of minutes) and reused; setup also prints the resident memory per block.
//!
//!     cargo bench -p aetherflow-vm --bench vm

use std::path::PathBuf;
use std::sync::Arc;

use aetherflow_store::local::LocalOptions;
use aetherflow_store::LocalStore;
use aetherflow_vm::{Backend, BlockId, VirtualMemory, VmConfig};
use criterion::{criterion_group, criterion_main, Criterion};

const FIXTURE_BLOCKS: u64 = 1_000_000;

fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i} of a block that reads like a log file\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn cache_hit(c: &mut Criterion) {
    let vm = VirtualMemory::open(VmConfig::new(Backend::Memory)).unwrap();
    let id = vm.allocate(&text(1 << 20), None).unwrap();
    vm.read(id, None).unwrap(); // the miss that fills the cache
    c.bench_function("read 1 MiB block, cache hit", |b| {
        b.iter(|| vm.read(id, None).unwrap())
    });
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn fixture() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-fixtures/vm-1m-blocks");
    let done = dir.join("COMPLETE");
    if done.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "building the 1,000,000-block fixture in {} (once)...",
        dir.display()
    );
    let options = LocalOptions {
        sync_commits: false,
        ..LocalOptions::default()
    };
    let store = Arc::new(LocalStore::open(&dir, options).unwrap());
    let vm = VirtualMemory::with_store(store, VmConfig::new(Backend::Memory)).unwrap();
    for i in 0..FIXTURE_BLOCKS {
        let mut block = format!("block {i:>12} ").into_bytes();
        block.resize(256, b'.');
        vm.allocate(&block, None).unwrap();
    }
    drop(vm);
    std::fs::write(done, b"").unwrap();
    dir
}

fn lookup(c: &mut Criterion) {
    let dir = fixture();
    let before = resident_bytes();
    let vm = VirtualMemory::open(VmConfig::new(Backend::Local(dir))).unwrap();
    let after_open = resident_bytes();
    let mut ids: Vec<BlockId> = Vec::new();
    let mut n = 0u64;
    vm.store()
        .blocks(&mut |b| {
            if n % 100 == 0 {
                ids.push(b.id);
            }
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(n, FIXTURE_BLOCKS);
    for id in &ids {
        vm.block_size(*id, None).unwrap();
    }
    let after_lookups = resident_bytes();
    eprintln!(
        "resident memory with {n} blocks: {} bytes/block after open, {} bytes/block after {} lookups \
         (the process's whole growth, redb's bounded page cache included)",
        after_open.saturating_sub(before) / n,
        after_lookups.saturating_sub(before) / n,
        ids.len()
    );
    let mut next = 0;
    c.bench_function("look up a block among 1,000,000", |b| {
        b.iter(|| {
            next = (next + 7919) % ids.len();
            vm.block_size(ids[next], None).unwrap()
        })
    });
}

criterion_group!(benches, cache_hit, lookup);
criterion_main!(benches);
