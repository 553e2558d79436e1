//! `blocks`: a real corpus as raw 1 MiB blocks, allocated and then read back and compared byte
//! for byte, with the store requests each phase made (from `/metrics`). Run once per backend on
//! the same file, it gives the figures that compare backends: MB/s of each phase, and for an
//! object store, what each allocated GiB costs in requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{allocate_raw, new_agent, read_raw, Metrics, STORE_OPS};
use crate::content::stamped_copies;
use crate::pool::spread;
use crate::report::{print_routes, Results};
use crate::Args;

/// Block size: the unit a client of a block store would cut a large file into.
const BLOCK: usize = 1 << 20;

/// Longest a phase may take (a stuck backend must not hang the bench).
const PHASE_LIMIT: Duration = Duration::from_secs(1800);

const GIB: f64 = (1u64 << 30) as f64;

pub fn blocks(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(4);
    let label = args.label.as_deref().unwrap_or("blocks");
    let path = args.source.as_deref().expect("blocks needs --source");
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let source = match args.bytes {
        None => file,
        Some(total) => {
            let mut all = Vec::with_capacity(total as usize);
            stamped_copies(&file, total, |copy| {
                all.extend_from_slice(copy);
                true
            });
            all
        }
    };
    assert!(!source.is_empty(), "{path}: nothing to allocate");
    let count = source.len().div_ceil(BLOCK);
    let slice = |i: u64| {
        let at = i as usize * BLOCK;
        &source[at..(at + BLOCK).min(source.len())]
    };
    let ids = Mutex::new(vec![None::<String>; count]);
    let agent = new_agent();

    let before = Metrics::scrape(&agent, &args.url);
    let (allocate, t_allocate) = spread(conns, count as u64, PHASE_LIMIT, |agent, i, route| {
        let data = slice(i);
        let t = Instant::now();
        let (reply, id) = allocate_raw(agent, &args.url, data);
        route.record(t, id.is_some(), data.len() as u64, &reply);
        ids.lock().expect("ids lock")[i as usize] = id;
    });
    let allocated = Metrics::scrape(&agent, &args.url);

    let ids = ids.into_inner().expect("ids lock");
    let (verified, mismatched) = (AtomicU64::new(0), AtomicU64::new(0));
    let (read, t_read) = spread(conns, count as u64, PHASE_LIMIT, |agent, i, route| {
        // A block that failed to allocate is already an error of the first phase.
        let Some(id) = &ids[i as usize] else { return };
        let want = slice(i);
        let t = Instant::now();
        let reply = read_raw(agent, &args.url, id);
        if reply.ok() && reply.body == want {
            verified.fetch_add(1, Ordering::Relaxed);
            route.record_good(t, want.len() as u64);
        } else if reply.ok() {
            mismatched.fetch_add(1, Ordering::Relaxed);
            route.record_error(t, || {
                format!(
                    "block {i} ({id}): {} bytes back, not the {} sent",
                    reply.body.len(),
                    want.len()
                )
            });
        } else {
            route.record_error(t, || reply.describe());
        }
    });
    let after = Metrics::scrape(&agent, &args.url);
    let (verified, mismatched) = (verified.into_inner(), mismatched.into_inner());
    let stored = ids.iter().flatten().count();

    let mib = source.len() as f64 / BLOCK as f64;
    let name = std::path::Path::new(path)
        .file_name()
        .map_or(path.into(), |n| n.to_string_lossy());
    let what = match args.bytes {
        None => name.to_string(),
        Some(_) => format!("{name} repeated, each copy stamped apart"),
    };
    println!(
        "## Blocks, {label}: {mib:.1} MiB of {what}, as {count} raw 1 MiB blocks, {conns} connections"
    );
    println!();
    let allocated_bytes = allocate.bytes;
    let verified_bytes = read.bytes;
    let errors = allocate.errors + read.errors;
    let mut routes = BTreeMap::from([("allocate 1 MiB (raw)", allocate)]);
    print_routes(&mut routes, t_allocate, results, &format!("{label}-alloc"));
    println!();
    let mut routes = BTreeMap::from([("read 1 MiB (raw, compared)", read)]);
    print_routes(&mut routes, t_read, results, &format!("{label}-read"));
    println!();
    println!(
        "Allocated {stored} of {count} blocks; read back and identical: {verified} ({mismatched} \
         differed)."
    );
    results.put(&format!("{label}.blocks"), count);
    results.put(&format!("{label}.bytes"), source.len());
    results.put(&format!("{label}.conns"), conns);
    results.put(&format!("{label}.verified"), verified);
    results.put(&format!("{label}.mismatched"), mismatched);
    results.put(&format!("{label}.errors"), errors);
    for (phase, bytes, secs) in [
        ("alloc", allocated_bytes, t_allocate),
        ("read", verified_bytes, t_read),
    ] {
        results.put(&format!("{label}.{phase}_secs"), format!("{secs:.3}"));
        results.put(
            &format!("{label}.{phase}_mbps"),
            format!("{:.2}", bytes as f64 / 1e6 / secs),
        );
    }
    println!();
    server_side(
        label,
        [&before, &allocated, &after],
        allocated_bytes,
        results,
    );
}

/// What the server's `/metrics` say each phase did: store requests (object stores only), the
/// cache during the reads, and how much the store holds.
fn server_side(label: &str, scrapes: [&Metrics; 3], logical: u64, results: &mut Results) {
    let [before, allocated, after] = scrapes;
    let gib = logical as f64 / GIB;
    let blocks = logical as f64 / BLOCK as f64;
    if after.has_store_requests() {
        println!("Store requests (`aetherflow_store_requests_total`), scraped before and after each phase:");
        println!();
        println!("| op | before | after allocate | after read | allocate: per GiB | per block | read: per GiB | per block |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for op in STORE_OPS {
            let counts = scrapes.map(|m| m.store_requests(op).unwrap_or(0));
            let alloc = allocated.store_requests_since(before, op).unwrap_or(0);
            let read = after.store_requests_since(allocated, op).unwrap_or(0);
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} |",
                op.to_uppercase(),
                counts[0],
                counts[1],
                counts[2],
                alloc as f64 / gib,
                alloc as f64 / blocks,
                read as f64 / gib,
                read as f64 / blocks,
            );
            for (phase, n) in [("alloc", alloc), ("read", read)] {
                results.put(&format!("{label}.{phase}.{op}"), n);
                results.put(
                    &format!("{label}.{phase}.{op}_per_gib"),
                    format!("{:.1}", n as f64 / gib),
                );
            }
        }
        println!();
    } else {
        println!("The store makes no remote requests (no `aetherflow_store_requests_total`).");
        println!();
    }
    let delta = |series: &str, from: &Metrics, to: &Metrics| {
        to.value(series).unwrap_or(0.0) - from.value(series).unwrap_or(0.0)
    };
    let hits = delta("aetherflow_cache_hits_total", allocated, after);
    let misses = delta("aetherflow_cache_misses_total", allocated, after);
    let physical = allocated.value("aetherflow_physical_bytes").unwrap_or(0.0);
    let stored = allocated.value("aetherflow_logical_bytes").unwrap_or(0.0);
    println!(
        "Cache during the reads: {hits:.0} hits, {misses:.0} misses. The store holds \
         {:.1} MB for {:.1} MB of blocks ({:.2}x).",
        physical / 1e6,
        stored / 1e6,
        stored / physical.max(1.0)
    );
    results.put(&format!("{label}.read.cache_hits"), hits);
    results.put(&format!("{label}.read.cache_misses"), misses);
    results.put(&format!("{label}.physical_bytes"), physical);
    results.put(
        &format!("{label}.ratio"),
        format!("{:.3}", stored / physical.max(1.0)),
    );
}
