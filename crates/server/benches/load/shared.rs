//! `shared`: two servers on one store (the S3 backend's multi-writer case), allocating at once
//! for a fixed time; then every block is read through both servers and compared with what was
//! sent. A quarter of the blocks are verbatim slices of the source that both servers send, so
//! both store and deduplicate the same chunks while both are writing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{allocate_raw, new_agent, read_raw, Metrics, STORE_OPS};
use crate::content::{stamp, Rng, STAMP};
use crate::pool::spread;
use crate::report::{print_routes, Results, Route};
use crate::Args;

/// Verbatim 1 MiB slices both servers send (at offsets `k` MiB, `k` below this).
const COMMON_SLICES: u64 = 16;

/// One allocated block and how to make its bytes again (no copy kept in memory).
struct Sent {
    server: usize,
    id: String,
    offset: usize,
    len: usize,
    /// The stamp written into it; 0 for a verbatim slice.
    tag: u64,
}

fn content(source: &[u8], offset: usize, len: usize, tag: u64) -> Vec<u8> {
    let mut data = source[offset..offset + len].to_vec();
    if tag != 0 {
        stamp(&mut data, tag);
    }
    data
}

/// The next block a worker sends: (offset, length, tag).
fn pick(rng: &mut Rng, source_len: usize) -> (usize, usize, u64) {
    if rng.below(4) == 0 {
        let offset = (rng.below(COMMON_SLICES) as usize) << 20;
        return (offset, 1 << 20, 0);
    }
    // 64 KiB – 1 MiB, more small blocks than large ones.
    let len = (64usize << 10) << rng.below(5);
    let len = (len + rng.below(len as u64) as usize).min(1 << 20);
    let offset = rng.below((source_len - len) as u64) as usize;
    (offset, len, STAMP.fetch_add(1, Ordering::Relaxed))
}

pub fn shared(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(4);
    let secs = args.secs.unwrap_or(60.0);
    let urls = [
        args.url.as_str(),
        args.url2.as_deref().expect("shared needs --url2"),
    ];
    let path = args.source.as_deref().expect("shared needs --source");
    let source = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        source.len() as u64 >= COMMON_SLICES << 20,
        "{path}: the source should be at least {COMMON_SLICES} MiB"
    );
    let agent = new_agent();
    let before = urls.map(|u| Metrics::scrape(&agent, u));

    // Allocate: `conns` connections to each server, all until the same deadline.
    let sent = Mutex::new(Vec::<Sent>::new());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let max_requests = (secs * 2000.0) as u64;
    let routes: [Route; 2] = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2 * conns)
            .map(|w| {
                let (server, source, sent) = (w % 2, &source, &sent);
                s.spawn(move || {
                    let agent = new_agent();
                    let mut rng = Rng::new(5000 + w as u64);
                    let mut route = Route::default();
                    for _ in 0..max_requests {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let (offset, len, tag) = pick(&mut rng, source.len());
                        let data = content(source, offset, len, tag);
                        let t = Instant::now();
                        let (reply, id) = allocate_raw(&agent, urls[server], &data);
                        route.record(t, id.is_some(), len as u64, &reply);
                        if let Some(id) = id {
                            let block = Sent {
                                server,
                                id,
                                offset,
                                len,
                                tag,
                            };
                            sent.lock().expect("sent lock").push(block);
                        }
                    }
                    (server, route)
                })
            })
            .collect();
        let mut routes = [Route::default(), Route::default()];
        for w in workers {
            let (server, route) = w.join().expect("worker");
            routes[server].merge(route);
        }
        routes
    });
    let elapsed = start.elapsed().as_secs_f64();
    let allocated = urls.map(|u| Metrics::scrape(&agent, u));
    let sent = sent.into_inner().expect("sent lock");

    // Read every block through both servers: task 2k + s reads block k from server s.
    let readable: Vec<AtomicU8> = sent.iter().map(|_| AtomicU8::new(0)).collect();
    let mismatched = AtomicU64::new(0);
    let read_routes: [Mutex<Route>; 2] = Default::default();
    let tasks = 2 * sent.len() as u64;
    let (_, t_read) = spread(conns, tasks, Duration::from_secs(1800), |agent, task, _| {
        let (k, server) = ((task / 2) as usize, (task % 2) as usize);
        let block = &sent[k];
        let want = content(&source, block.offset, block.len, block.tag);
        let t = Instant::now();
        let reply = read_raw(agent, urls[server], &block.id);
        let mut route = read_routes[server].lock().expect("route lock");
        if reply.ok() && reply.body == want {
            readable[k].fetch_or(1 << server, Ordering::Relaxed);
            route.record_good(t, block.len as u64);
        } else if reply.ok() {
            mismatched.fetch_add(1, Ordering::Relaxed);
            route.record_error(t, || {
                let (got, len) = (reply.body.len(), block.len);
                format!("block {}: {got} bytes back, not the {len} sent", block.id)
            });
        } else {
            route.record_error(t, || format!("block {}: {}", block.id, reply.describe()));
        }
    });
    let after = urls.map(|u| Metrics::scrape(&agent, u));
    let readable: Vec<u8> = readable.into_iter().map(AtomicU8::into_inner).collect();

    println!(
        "## Two servers on one store: {conns} connections each, {elapsed:.1} s of raw allocate \
         (64 KiB–1 MiB blocks, a quarter of them verbatim slices both servers send)"
    );
    println!();
    let [alloc_a, alloc_b] = routes;
    let alloc_errors = alloc_a.errors + alloc_b.errors;
    let mut table = BTreeMap::from([
        ("allocate-a (raw, server A)", alloc_a),
        ("allocate-b (raw, server B)", alloc_b),
    ]);
    print_routes(&mut table, elapsed, results, "shared-alloc");
    println!();
    let [read_a, read_b] = read_routes.map(|m| m.into_inner().expect("route lock"));
    let read_errors = read_a.errors + read_b.errors;
    let mut table = BTreeMap::from([
        ("read-a (raw, compared, server A)", read_a),
        ("read-b (raw, compared, server B)", read_b),
    ]);
    print_routes(&mut table, t_read, results, "shared-read");
    println!();

    // Blocks by the server that allocated them, and through which servers they read back right.
    println!(
        "| allocated via | blocks | MiB | verbatim slices | identical via A | via B | via both |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, origin) in [("A", Some(0)), ("B", Some(1)), ("either", None)] {
        let mine: Vec<(&Sent, u8)> = sent
            .iter()
            .zip(readable.iter().copied())
            .filter(|(b, _)| origin.is_none_or(|o| b.server == o))
            .collect();
        let n = |f: &dyn Fn(&Sent, u8) -> bool| mine.iter().filter(|(b, r)| f(b, *r)).count();
        let row = [
            mine.len(),
            n(&|_, _| true),
            n(&|b, _| b.tag == 0),
            n(&|_, r| r & 1 != 0),
            n(&|_, r| r & 2 != 0),
            n(&|_, r| r == 3),
        ];
        let mib = mine.iter().map(|(b, _)| b.len).sum::<usize>() as f64 / (1 << 20) as f64;
        println!(
            "| {name} | {} | {mib:.1} | {} | {} | {} | {} |",
            row[0], row[2], row[3], row[4], row[5]
        );
        rows.push(row);
    }
    println!();
    let [_, _, all] = rows[..] else {
        unreachable!("three rows")
    };
    let mismatched = mismatched.into_inner();
    let logical: u64 = sent.iter().map(|b| b.len as u64).sum();
    println!(
        "Allocate errors: {alloc_errors}. Read errors: {read_errors} ({mismatched} with other \
         bytes). Identical through both servers: {} of {} blocks.",
        all[5], all[0]
    );
    println!();
    for (key, value) in [
        ("shared.secs", format!("{elapsed:.2}")),
        ("shared.conns", conns.to_string()),
        ("shared.blocks", all[0].to_string()),
        ("shared.a.blocks", rows[0][0].to_string()),
        ("shared.b.blocks", rows[1][0].to_string()),
        ("shared.verbatim", all[2].to_string()),
        ("shared.bytes", logical.to_string()),
        ("shared.alloc_errors", alloc_errors.to_string()),
        ("shared.read_errors", read_errors.to_string()),
        ("shared.mismatched", mismatched.to_string()),
        ("shared.readable_a", all[3].to_string()),
        ("shared.readable_b", all[4].to_string()),
        ("shared.readable_both", all[5].to_string()),
    ] {
        results.put(key, value);
    }
    store_requests([&before, &allocated, &after], logical, results);
}

/// Store requests each server made while both allocated (per GiB both allocated together), and
/// while every block was read through both (per GiB read: twice as many bytes).
fn store_requests(scrapes: [&[Metrics; 2]; 3], logical: u64, results: &mut Results) {
    let [before, allocated, after] = scrapes;
    if !after.iter().all(Metrics::has_store_requests) {
        return;
    }
    let gib = logical as f64 / (1u64 << 30) as f64;
    println!("Store requests of each server, by phase:");
    println!();
    println!("| op | allocate: A | B | per GiB allocated | read: A | B | per GiB read |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for op in STORE_OPS {
        let since = |to: &[Metrics; 2], from: &[Metrics; 2]| {
            [0, 1].map(|s| to[s].store_requests_since(&from[s], op).unwrap_or(0))
        };
        let [a, b] = since(allocated, before);
        let [ra, rb] = since(after, allocated);
        let alloc_per_gib = (a + b) as f64 / gib;
        let read_per_gib = (ra + rb) as f64 / (2.0 * gib);
        println!(
            "| {} | {a} | {b} | {alloc_per_gib:.0} | {ra} | {rb} | {read_per_gib:.0} |",
            op.to_uppercase()
        );
        for (phase, per_gib) in [("alloc", alloc_per_gib), ("read", read_per_gib)] {
            let key = format!("shared.{phase}.{op}_per_gib");
            results.put(&key, format!("{per_gib:.1}"));
        }
    }
}
