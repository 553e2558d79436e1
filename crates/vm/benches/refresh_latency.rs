//! Allocation latency on S3 while the server's view of the bucket refreshes in the background.
//!
//! A bucket is filled with many small blocks (so that a refresh, which lists them, takes a
//! while); then a second server opens it and allocates 4 KiB blocks from several threads for a
//! while, its housekeeper refreshing meanwhile. Prints p50, p99 and the maximum latency.
//!
//! Needs a real S3 server: `bash bench/s3_refresh.sh` starts SeaweedFS and runs this.
//! Env: `AF_S3_ENDPOINT`, `AF_S3_BUCKET`, `BLOCKS` (20000), `SECONDS` (30), `THREADS` (4),
//! `REFRESH_SECS` (5: the measured server's `refresh_every`; 3600 measures without refreshes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aetherflow_vm::{Backend, S3Location, S3Options, VirtualMemory, VmConfig};

mod s3_common;
use s3_common::{block, env};

fn server(location: &S3Location, refresh_every: Duration) -> VirtualMemory {
    let options = S3Options {
        refresh_every,
        sweep_every: None,
        ..S3Options::default()
    };
    VirtualMemory::open(VmConfig::new(Backend::S3(location.clone(), options))).unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks benches for their tests; there are none.
    }
    let endpoint =
        std::env::var("AF_S3_ENDPOINT").expect("AF_S3_ENDPOINT: run bench/s3_refresh.sh");
    let bucket = std::env::var("AF_S3_BUCKET").unwrap_or_else(|_| "aetherflow-test".into());
    let blocks = env("BLOCKS", 20_000);
    let seconds = env("SECONDS", 30);
    let threads = env("THREADS", 4);
    let prefix = format!("bench-refresh-{}", std::process::id());
    let location: S3Location = format!("s3://{bucket}/{prefix}?endpoint={endpoint}")
        .parse()
        .unwrap();

    let filler = Arc::new(server(&location, Duration::from_secs(3600)));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (filler, next) = (filler.clone(), next.clone());
            s.spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= blocks {
                    break;
                }
                filler.allocate(&block(n), None).unwrap();
            });
        }
    });
    eprintln!(
        "filled {blocks} blocks in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let vm = Arc::new(server(
        &location,
        Duration::from_secs(env("REFRESH_SECS", 5)),
    ));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let measured = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (vm, latencies, stop, next) =
                (vm.clone(), latencies.clone(), stop.clone(), next.clone());
            s.spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let data = block(next.fetch_add(1, Ordering::Relaxed) + t);
                    let at = Instant::now();
                    vm.allocate(&data, None).unwrap();
                    mine.push(at.elapsed());
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pick = |q: f64| l[((l.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    let slow = l.iter().filter(|d| d.as_millis() >= 100).count();
    println!(
        "allocate 4 KiB with {blocks} blocks in the bucket, {threads} threads, {:.0} s: {} allocations, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms, {slow} took 100 ms or more",
        measured.elapsed().as_secs_f64(),
        l.len(),
        pick(0.5),
        pick(0.99),
        pick(0.999),
        pick(1.0)
    );
}
