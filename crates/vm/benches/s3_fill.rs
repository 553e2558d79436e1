//! Bulk loader for `bench/s3_scale.sh`: fills a bucket prefix with many distinct 4 KiB blocks
//! through the store's own staging and commit path (in process, no HTTP), as 16 clients of a
//! server would, so that a fill of 10^5 blocks takes minutes rather than an hour.
//!
//! Env: `AF_S3_ENDPOINT`, `AF_S3_BUCKET`, `PREFIX` (the store's prefix in the bucket), `BLOCKS`
//! (10000), `FIRST` (0: the number of the first block, so that a fill can be topped up),
//! `THREADS` (16), `GRACE_SECS` (900: the collection grace the records are written under).
//! Block `n`'s content is a function of `n` alone, so no two blocks dedup.
//!
//! With `SNAPSHOT=1` it then writes a snapshot of the log's settled epochs (waiting for the
//! epochs of the fill to settle: half the grace and a few seconds), as a server's housekeeper
//! would once the log has grown (`SETTLE_SECS`: how long it waits, 0 for a bucket filled long
//! ago). `BLOCKS=0 SNAPSHOT=1` writes the snapshot of a bucket filled before (with the same
//! `GRACE_SECS`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aetherflow_vm::{Backend, S3Location, S3Options, VirtualMemory, VmConfig};

mod s3_common;
use s3_common::{block, env};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks benches for their tests; there are none.
    }
    let endpoint = std::env::var("AF_S3_ENDPOINT").expect("AF_S3_ENDPOINT: run bench/s3_scale.sh");
    let bucket = std::env::var("AF_S3_BUCKET").expect("AF_S3_BUCKET");
    let prefix = std::env::var("PREFIX").expect("PREFIX");
    let first = env("FIRST", 0);
    let end = first + env("BLOCKS", 10_000);
    let threads = env("THREADS", 16);
    let location: S3Location = format!("s3://{bucket}/{prefix}?endpoint={endpoint}")
        .parse()
        .expect("location");
    // No refreshes or sweeps while filling: this process is the prefix's only writer.
    let grace = Duration::from_secs(env("GRACE_SECS", 900));
    let options = S3Options {
        grace,
        refresh_every: Duration::from_secs(24 * 3600),
        sweep_every: None,
        snapshot_every: None,
        snapshot_min_bytes: 0,
        ..S3Options::default()
    };
    let vm =
        VirtualMemory::open(VmConfig::new(Backend::S3(location.clone(), options))).expect("open");
    let next = AtomicU64::new(first);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break;
                }
                vm.allocate(&block(n), None).expect("allocate");
                if n % 10_000 == 0 && n > first {
                    eprintln!("  {n} blocks, {:.0} s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let requests = vm.store().remote_requests().unwrap_or_default();
    println!(
        "filled blocks {first}..{end} in {:.1} s ({} PUTs)",
        started.elapsed().as_secs_f64(),
        requests.put
    );
    drop(vm);
    if env("SNAPSHOT", 0) == 1 {
        snapshot(&location, options);
    }
}

/// Writes a snapshot of every epoch of the log that has settled once the fill's have.
fn snapshot(location: &S3Location, options: S3Options) {
    let store = aetherflow_s3::S3Store::open(location, options).expect("open");
    let started = Instant::now();
    // Reading the log begins the next epoch; the fill's settle G/2 and two seconds after.
    store.refresh_from_log().expect("read the log");
    std::thread::sleep(Duration::from_millis(1100));
    store.refresh_from_log().expect("read the log");
    let settle = env("SETTLE_SECS", options.grace.as_secs() / 2 + 3);
    std::thread::sleep(Duration::from_secs(settle));
    store.refresh_from_log().expect("read the log");
    let written = Instant::now();
    let outcome = store.write_snapshot().expect("write a snapshot");
    println!(
        "snapshot: {outcome:?}, written in {:.1} s ({:.1} s with the wait)",
        written.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
