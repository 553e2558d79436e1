//! `mixed` (allocate, read and stats together, as a busy server sees them) and `hit` (the
//! latency floor: one cached block read by many connections, closed loop or paced).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{allocate_json, new_agent, read_json, stats};
use crate::content::{stamp, text_corpus, Rng, STAMP};
use crate::report::{print_routes, Results, Route};
use crate::Args;

/// Blocks allocated so far (id, size), shared by the workers of `mixed`.
#[derive(Default)]
struct Known {
    blocks: Vec<(String, u64)>,
}

pub fn mixed(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(64);
    let secs = args.secs.unwrap_or(30.0);
    let stats_percent = args.stats_percent.unwrap_or(5);
    let corpus = Arc::new(text_corpus(48 << 20, 7));
    let known = Arc::new(Mutex::new(Known::default()));
    // A few blocks first, so that the first reads have something to read.
    {
        let agent = new_agent();
        for i in 0..8u64 {
            let len = 256 << 10;
            let off = (i as usize * 1_000_003) % (corpus.len() - len);
            let mut data = corpus[off..off + len].to_vec();
            stamp(&mut data, STAMP.fetch_add(1, Ordering::Relaxed));
            let (reply, id) = allocate_json(&agent, &args.url, &data);
            let id = id.unwrap_or_else(|| {
                panic!(
                    "warm-up allocate failed: status {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                )
            });
            known.lock().unwrap().blocks.push((id, len as u64));
        }
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    // Bounded by count as well as time: no worker can loop forever.
    let max_requests = (secs * 2000.0) as u64;
    let handles: Vec<_> = (0..conns)
        .map(|w| {
            let corpus = Arc::clone(&corpus);
            let known = Arc::clone(&known);
            let url = args.url.clone();
            std::thread::spawn(move || {
                let agent = new_agent();
                let mut rng = Rng::new(1000 + w as u64);
                let mut routes: BTreeMap<&'static str, Route> = BTreeMap::new();
                for _ in 0..max_requests {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let roll = rng.below(100);
                    if roll < 45 {
                        // 64 KiB – 1 MiB, log-uniform-ish: more small blocks than large ones.
                        let len = (64usize << 10) << rng.below(5);
                        let len = (len + rng.below(len as u64) as usize).min(1 << 20);
                        let off = rng.below((corpus.len() - len) as u64) as usize;
                        let mut data = corpus[off..off + len].to_vec();
                        // 70 % new content; 30 % verbatim corpus slices that dedup can find.
                        if rng.below(10) < 7 {
                            stamp(&mut data, STAMP.fetch_add(1, Ordering::Relaxed));
                        }
                        let t = Instant::now();
                        let (reply, id) = allocate_json(&agent, &url, &data);
                        routes.entry("allocate (JSON)").or_default().record(
                            t,
                            id.is_some(),
                            len as u64,
                            &reply,
                        );
                        if let Some(id) = id {
                            known.lock().unwrap().blocks.push((id, len as u64));
                        }
                    } else if roll < 100 - stats_percent {
                        let (id, len) = {
                            let k = known.lock().unwrap();
                            let n = k.blocks.len() as u64;
                            // Half the reads go to the 64 newest blocks (a hot set), half anywhere.
                            let i = if rng.below(2) == 0 {
                                n - 1 - rng.below(n.min(64))
                            } else {
                                rng.below(n)
                            };
                            k.blocks[i as usize].clone()
                        };
                        let t = Instant::now();
                        let (reply, good) = read_json(&agent, &url, &id, len);
                        routes
                            .entry("read (JSON)")
                            .or_default()
                            .record(t, good, len, &reply);
                    } else {
                        let t = Instant::now();
                        let (reply, parsed) = stats(&agent, &url);
                        routes
                            .entry("stats")
                            .or_default()
                            .record(t, parsed.is_some(), 0, &reply);
                    }
                }
                routes
            })
        })
        .collect();
    let mut routes: BTreeMap<&'static str, Route> = BTreeMap::new();
    for h in handles {
        for (name, r) in h.join().expect("worker") {
            routes.entry(name).or_default().merge(r);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (_, s) = stats(&new_agent(), &args.url);
    let blocks = s.map_or(0, |s| s.total_blocks);
    println!(
        "## Mixed load: {conns} connections, {elapsed:.1} s (allocate 45 %, read {} %, stats {stats_percent} %)",
        55 - stats_percent
    );
    println!();
    print_routes(&mut routes, elapsed, results, "mixed");
    println!();
    println!("Blocks in the store at the end: {blocks}. Payload MB/s counts the block bytes (before base64).");
    results.put("mixed.blocks", blocks);
    results.put("mixed.secs", format!("{elapsed:.2}"));
}

pub fn hit(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(64);
    let secs = args.secs.unwrap_or(10.0);
    let len = 64u64 << 10;
    let agent = new_agent();
    let mut data = text_corpus(len as usize, 11);
    stamp(&mut data, STAMP.fetch_add(1, Ordering::Relaxed) ^ 0x5eed);
    let (reply, id) = allocate_json(&agent, &args.url, &data);
    let id = id.unwrap_or_else(|| {
        panic!(
            "allocate failed: status {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )
    });
    for _ in 0..3 {
        let (reply, good) = read_json(&agent, &args.url, &id, len);
        assert!(good, "warm-up read failed: status {}", reply.status);
    }
    let before = stats(&agent, &args.url).1.expect("stats");
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let max_requests = (secs * 20_000.0) as u64;
    // Paced: connection w sends its k-th request at start + (k * conns + w) / rate, and the
    // latency counts from that moment (a late send is the server's delay too).
    let interval = args.rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
    let handles: Vec<_> = (0..conns)
        .map(|w| {
            let url = args.url.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                let agent = new_agent();
                let mut route = Route::default();
                for k in 0..max_requests {
                    let t = match interval {
                        None => Instant::now(),
                        Some(i) => {
                            let at = start + i * k as u32 + i.mul_f64(w as f64 / conns as f64);
                            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            at
                        }
                    };
                    if t >= deadline {
                        break;
                    }
                    let (reply, good) = read_json(&agent, &url, &id, len);
                    route.record(t, good, len, &reply);
                }
                route
            })
        })
        .collect();
    let mut routes: BTreeMap<&'static str, Route> = BTreeMap::new();
    let name = if args.rate.is_some() {
        "paced read 64 KiB (JSON, cache hit)"
    } else {
        "read 64 KiB (JSON, cache hit)"
    };
    for h in handles {
        routes
            .entry(name)
            .or_default()
            .merge(h.join().expect("worker"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = stats(&agent, &args.url).1.expect("stats");
    let hits = after.cache.hits - before.cache.hits;
    let misses = after.cache.misses - before.cache.misses;
    match args.rate {
        None => println!("## Cache-hit read: one 64 KiB block, {conns} connections, closed loop, {elapsed:.1} s"),
        Some(r) => println!("## Cache-hit read: one 64 KiB block, {conns} connections paced at {r:.0} requests/s in all, {elapsed:.1} s"),
    }
    println!();
    let prefix = if args.rate.is_some() {
        "hitpaced"
    } else {
        "hit"
    };
    print_routes(&mut routes, elapsed, results, prefix);
    println!();
    println!(
        "Server cache during the run: {hits} hits, {misses} misses ({:.2} % hits).",
        hits as f64 * 100.0 / (hits + misses).max(1) as f64
    );
    results.put(&format!("{prefix}.cache_misses"), misses);
}
