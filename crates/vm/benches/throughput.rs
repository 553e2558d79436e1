//! Throughput and space figures of the memory manager against `aetherflow compress` and
//! `aetherflow decompress` on the same data, in the same run. Prints a markdown table.
//!
//!     cargo bench -p aetherflow-vm --bench throughput -- SILESIA.tar SCRATCH_DIR
//!
//! `bench/vm.sh` prepares the tar and runs this; `AF_BIN` names the aetherflow binary
//! (default: target/release/aetherflow).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use aetherflow_vm::{Backend, BlockId, VirtualMemory, VmConfig};

const BLOCK: usize = 1 << 20;
const RUNS: usize = 3;

fn best(mut f: impl FnMut()) -> f64 {
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn run(bin: &Path, args: &[&str]) {
    let ok = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("aetherflow runs")
        .success();
    assert!(ok, "aetherflow {args:?} failed");
}

fn open(dir: &Path, cache: u64) -> VirtualMemory {
    let _ = std::fs::remove_dir_all(dir);
    let mut config = VmConfig::new(Backend::Local(dir.to_path_buf()));
    config.cache_size = cache;
    VirtualMemory::open(config).unwrap()
}

/// Allocates `data` in 1 MiB blocks from `threads` threads; returns the ids in order.
fn allocate_all(vm: &VirtualMemory, data: &[u8], threads: usize) -> Vec<BlockId> {
    let blocks: Vec<&[u8]> = data.chunks(BLOCK).collect();
    let mut ids = vec![None; blocks.len()];
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks_mut(blocks.len().div_ceil(threads))
            .zip(blocks.chunks(blocks.len().div_ceil(threads)))
            .collect();
        for (out, input) in parts {
            s.spawn(move || {
                for (slot, block) in out.iter_mut().zip(input) {
                    *slot = Some(vm.allocate(block, None).unwrap());
                }
            });
        }
    });
    ids.into_iter().map(Option::unwrap).collect()
}

fn read_all(vm: &VirtualMemory, ids: &[BlockId], threads: usize) -> u64 {
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for part in ids.chunks(ids.len().div_ceil(threads)) {
            let total = &total;
            s.spawn(move || {
                for id in part {
                    let n = vm.read(*id, None).unwrap().len() as u64;
                    total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    total.into_inner()
}

fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_usage(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// Text-like content with no long repeats: every line differs.
fn unique_text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "{:016x} event={} user={} status=ok\n",
                x,
                x % 977,
                x % 10_007
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    out
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let tar = PathBuf::from(
        args.first()
            .expect("usage: throughput SILESIA.tar SCRATCH_DIR"),
    );
    let scratch = PathBuf::from(
        args.get(1)
            .expect("usage: throughput SILESIA.tar SCRATCH_DIR"),
    );
    std::fs::create_dir_all(&scratch).unwrap();
    let bin = std::env::var_os("AF_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/aetherflow"),
        PathBuf::from,
    );
    let data = std::fs::read(&tar).unwrap();
    let mb = data.len() as f64 / 1e6;
    let af = scratch.join("silesia.af");
    let (tar_s, af_s) = (tar.to_str().unwrap(), af.to_str().unwrap());

    let t_compress = best(|| run(&bin, &["compress", tar_s, "-"]));
    run(&bin, &["compress", tar_s, af_s]);
    let t_decompress = best(|| run(&bin, &["decompress", af_s, "-"]));

    let dir = scratch.join("vm-store");
    let mut ids = Vec::new();
    let t_alloc1 = best(|| {
        let vm = open(&dir, 0);
        ids = allocate_all(&vm, &data, 1);
    });
    // The same without fsync (bulk-load mode): what durability costs per allocation.
    let t_alloc1_nosync = best(|| {
        let _ = std::fs::remove_dir_all(&dir);
        let options = aetherflow_store::local::LocalOptions {
            sync_commits: false,
            ..Default::default()
        };
        let store = std::sync::Arc::new(aetherflow_store::LocalStore::open(&dir, options).unwrap());
        let vm = VirtualMemory::with_store(store, VmConfig::new(Backend::Memory)).unwrap();
        allocate_all(&vm, &data, 1);
    });
    let t_alloc2 = best(|| {
        let vm = open(&dir, 0);
        ids = allocate_all(&vm, &data, 2);
    });
    let vm = VirtualMemory::open({
        let mut c = VmConfig::new(Backend::Local(dir.clone()));
        c.cache_size = 0; // every read is a miss
        c
    })
    .unwrap();
    let s = vm.summary();
    let t_read1 = best(|| assert_eq!(read_all(&vm, &ids, 1), data.len() as u64));
    let t_read2 = best(|| assert_eq!(read_all(&vm, &ids, 2), data.len() as u64));
    drop(vm);

    println!(
        "# Memory manager, {} bytes of Silesia in 1 MiB blocks, best of {RUNS}",
        data.len()
    );
    println!();
    println!("| operation | MB/s | vs the CLI |");
    println!("|---|---:|---:|");
    println!(
        "| `aetherflow compress` (reference) | {:.0} | 1.00 |",
        mb / t_compress
    );
    println!(
        "| allocate, 1 client thread | {:.0} | {:.2} |",
        mb / t_alloc1,
        t_compress / t_alloc1
    );
    println!(
        "| allocate, 2 client threads | {:.0} | {:.2} |",
        mb / t_alloc2,
        t_compress / t_alloc2
    );
    println!(
        "| allocate, 1 client thread, no fsync (bulk load, not the default) | {:.0} | {:.2} |",
        mb / t_alloc1_nosync,
        t_compress / t_alloc1_nosync
    );
    println!(
        "| `aetherflow decompress` (reference) | {:.0} | 1.00 |",
        mb / t_decompress
    );
    println!(
        "| cache-miss read, 1 client thread | {:.0} | {:.2} |",
        mb / t_read1,
        t_decompress / t_read1
    );
    println!(
        "| cache-miss read, 2 client threads | {:.0} | {:.2} |",
        mb / t_read2,
        t_decompress / t_read2
    );
    println!();
    println!(
        "Stored: {} logical bytes in {} physical ({:.3}x overall; the .af file: {:.3}x)",
        s.bytes.logical,
        s.bytes.physical,
        s.ratios.overall,
        data.len() as f64 / std::fs::metadata(&af).unwrap().len() as f64
    );

    // Space: the same 256 MiB twice, 64 MiB of zeros, then everything freed.
    let vm = open(&dir, 50 << 20);
    let content = unique_text(256 << 20);
    let p0 = vm.summary().bytes.physical;
    let a = vm
        .allocate_from(&content[..], Some(content.len() as u64), None)
        .unwrap();
    let p1 = vm.summary().bytes.physical;
    let b = vm
        .allocate_from(&content[..], Some(content.len() as u64), None)
        .unwrap();
    let p2 = vm.summary().bytes.physical;
    let z = vm
        .allocate_from(
            std::io::repeat(0).take_exact(64 << 20),
            Some(64 << 20),
            None,
        )
        .unwrap();
    let p3 = vm.summary().bytes.physical;
    let mut more = allocate_all(&vm, &data, 2);
    more.extend([a, b, z]);
    let peak_physical = vm.summary().bytes.physical;
    let peak_disk = disk_usage(&dir);
    for id in more {
        vm.free(id).unwrap();
    }
    let end_physical = vm.summary().bytes.physical;
    let end_disk = disk_usage(&dir);
    println!();
    println!("| space | bytes |");
    println!("|---|---:|");
    println!(
        "| 256 MiB of distinct text, first allocation | {} |",
        p1 - p0
    );
    println!(
        "| the same 256 MiB again | {} ({:.3} % of the first) |",
        p2 - p1,
        (p2 - p1) as f64 * 100.0 / (p1 - p0) as f64
    );
    println!("| 64 MiB of zeros | {} |", p3 - p2);
    println!("| peak physical / data dir on disk | {peak_physical} / {peak_disk} |");
    println!(
        "| after freeing every block: physical / on disk | {end_physical} ({:.2} %) / {end_disk} ({:.2} %) |",
        end_physical as f64 * 100.0 / peak_physical as f64,
        end_disk as f64 * 100.0 / peak_disk as f64
    );
}

trait TakeExact {
    fn take_exact(self, n: u64) -> std::io::Take<Self>
    where
        Self: Sized;
}

impl<R: std::io::Read> TakeExact for R {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
