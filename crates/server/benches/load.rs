//! Load generator for `aetherflow serve`: N worker threads, each with its own keep-alive
//! connection, every loop bounded by a request count and a deadline. Loopback only. Prints
//! markdown tables; with `--results FILE` it also appends `key value` lines for `bench/server.sh`.
//!
//!     cargo bench -p aetherflow-server --bench load -- mixed --url http://127.0.0.1:PORT
//!     cargo bench -p aetherflow-server --bench load -- hit --url http://127.0.0.1:PORT
//!     cargo bench -p aetherflow-server --bench load -- json-vs-raw --url http://127.0.0.1:PORT
//!     cargo bench -p aetherflow-server --bench load -- gen --bytes 2GiB --source silesia.tar
//!
//! | scenario | what it does |
//! |---|---|
//! | `mixed` | `--conns` (64) connections for `--secs` (30): JSON allocate of 64 KiB–1 MiB text-like blocks (45 %), JSON read of earlier blocks (50 %), stats (5 %) |
//! | `hit` | allocates one 64 KiB block, reads it once to warm the cache, then `--conns` (64) connections read it for `--secs` (10) |
//! | `json-vs-raw` | `--mib` (192) MiB in 1 MiB blocks through JSON allocate, then the same amount through the raw octet-stream route, `--conns` (4) connections; MB/s of each and the ratio |
//! | `gen` | writes `--bytes` of `--source` repeated, each copy stamped so that no copy deduplicates against another, to stdout (the same bytes every run) |

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

/// Hard cap on any single request (a stuck server must not hang the bench).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    scenario: String,
    url: String,
    conns: Option<usize>,
    secs: Option<f64>,
    mib: Option<u64>,
    bytes: Option<u64>,
    source: Option<String>,
    results: Option<String>,
    rate: Option<f64>,
}

fn parse_size(text: &str) -> u64 {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("bad size {text:?}"));
    let mul = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => panic!("bad size unit {other:?}"),
    };
    n * mul
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut args = Args {
        scenario: String::new(),
        url: "http://127.0.0.1:5000".into(),
        conns: None,
        secs: None,
        mib: None,
        bytes: None,
        source: None,
        results: None,
        rate: None,
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => args.url = value(),
            "--conns" => args.conns = Some(value().parse().expect("--conns N")),
            "--secs" => args.secs = Some(value().parse().expect("--secs S")),
            "--mib" => args.mib = Some(value().parse().expect("--mib N")),
            "--bytes" => args.bytes = Some(parse_size(&value())),
            "--source" => args.source = Some(value()),
            "--results" => args.results = Some(value()),
            "--rate" => args.rate = Some(value().parse().expect("--rate REQUESTS_PER_SECOND")),
            s if !s.starts_with('-') && args.scenario.is_empty() => args.scenario = s.into(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    let host = args
        .url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("--url must be http://127.0.0.1:PORT"));
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "the load generator only talks to loopback, not {host}"
    );
    args.url = args.url.trim_end_matches('/').to_string();
    args
}

/// `key value` lines for the script that drives this bench.
struct Results(Option<std::fs::File>);

impl Results {
    fn open(path: &Option<String>) -> Results {
        Results(path.as_ref().map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("results file")
        }))
    }

    fn put(&mut self, key: &str, value: impl std::fmt::Display) {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{key} {value}").expect("results file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Content

/// xorshift64*: deterministic, fast, good enough for picking words.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "block", "store", "memory",
    "request", "server", "client", "latency", "compressed", "chunk", "index", "cache", "river",
    "morning", "letter", "window", "garden", "history", "question", "answer", "number", "system",
    "people", "between", "through", "another", "because", "against", "without", "something",
];

const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const PATHS: &[&str] = &[
    "/api/memory/allocate",
    "/api/memory/read",
    "/api/memory/stats",
    "/healthz",
    "/metrics",
    "/api/memory/export",
];

/// Text-like content: prose paragraphs and log lines, with some repeated boilerplate, so that
/// it compresses like real text (3–5x) and has repeats for dedup to find.
fn text_corpus(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 4096);
    let boiler = b"-- This message and any attachments are confidential. If you received it in \
                   error, please tell the sender and delete it. --\n";
    let mut t = 1_700_000_000u64;
    while out.len() < len {
        match rng.below(10) {
            0..=4 => {
                // A paragraph of prose.
                let words = 40 + rng.below(120);
                for i in 0..words {
                    let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                    if i == 0 {
                        let mut c = w.as_bytes().to_vec();
                        c[0] = c[0].to_ascii_uppercase();
                        out.extend_from_slice(&c);
                    } else {
                        out.push(b' ');
                        out.extend_from_slice(w.as_bytes());
                    }
                    if rng.below(14) == 0 {
                        out.extend_from_slice(b". ");
                    }
                }
                out.extend_from_slice(b".\n\n");
            }
            5..=8 => {
                // A burst of log lines.
                for _ in 0..(5 + rng.below(30)) {
                    t += rng.below(3);
                    let line = format!(
                        "{t} {} req={:08x} path={} status={} bytes={} ms={}\n",
                        LEVELS[rng.below(LEVELS.len() as u64) as usize],
                        rng.next() as u32,
                        PATHS[rng.below(PATHS.len() as u64) as usize],
                        [200, 200, 200, 201, 404, 500][rng.below(6) as usize],
                        rng.below(1 << 20),
                        rng.below(900),
                    );
                    out.extend_from_slice(line.as_bytes());
                }
            }
            _ => out.extend_from_slice(boiler),
        }
    }
    out.truncate(len);
    out
}

/// Makes `data` unlike any other stamped block: 16 bytes of hex every 16 KiB, so every
/// content-defined chunk (at least 64 KiB on the server) differs, while the text stays text.
fn stamp(data: &mut [u8], tag: u64) {
    let mark = format!("{tag:016x}");
    let mut at = 0;
    while at + 16 <= data.len() {
        data[at..at + 16].copy_from_slice(mark.as_bytes());
        at += 16 << 10;
    }
}

/// A global counter that makes every stamped block unique across threads and phases.
static STAMP: AtomicU64 = AtomicU64::new(1);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn json_allocate_body(data: &[u8]) -> Vec<u8> {
    let encoded = b64(data);
    let mut body = Vec::with_capacity(encoded.len() + 16);
    body.extend_from_slice(b"{\"data\":\"");
    body.extend_from_slice(encoded.as_bytes());
    body.extend_from_slice(b"\"}");
    body
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .max_idle_connections_per_host(1)
        .build()
        .into()
}

/// What one request gave: the status (0 for a transport error) and the body.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    match result {
        Ok(mut r) => {
            let status = r.status().as_u16();
            match r.body_mut().with_config().limit(1 << 30).read_to_vec() {
                Ok(body) => Reply { status, body },
                Err(e) => Reply {
                    status: 0,
                    body: e.to_string().into_bytes(),
                },
            }
        }
        Err(e) => Reply {
            status: 0,
            body: e.to_string().into_bytes(),
        },
    }
}

fn post(agent: &ureq::Agent, url: &str, content_type: &str, body: &[u8]) -> Reply {
    finish(
        agent
            .post(url)
            .header("Content-Type", content_type)
            .send(body),
    )
}

fn get(agent: &ureq::Agent, url: &str) -> Reply {
    finish(agent.get(url).call())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocateReply {
    success: bool,
    block_id: String,
    original_size: u64,
}

#[derive(Deserialize)]
struct ReadReply<'a> {
    success: bool,
    size: u64,
    #[serde(borrow)]
    data: &'a str,
}

#[derive(Deserialize)]
struct StatsReply {
    success: bool,
    stats: StatsBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatsBody {
    total_blocks: u64,
    cache: CacheCounts,
}

#[derive(Deserialize)]
struct CacheCounts {
    hits: u64,
    misses: u64,
}

/// Allocates `data` through the JSON route; returns the block id when the reply is right.
fn allocate_json(agent: &ureq::Agent, base: &str, data: &[u8]) -> (Reply, Option<String>) {
    let body = json_allocate_body(data);
    let reply = post(
        agent,
        &format!("{base}/api/memory/allocate"),
        "application/json",
        &body,
    );
    let id = check_allocate(&reply, data.len() as u64);
    (reply, id)
}

fn allocate_raw(agent: &ureq::Agent, base: &str, data: &[u8]) -> (Reply, Option<String>) {
    let reply = post(
        agent,
        &format!("{base}/api/memory/allocate"),
        "application/octet-stream",
        data,
    );
    let id = check_allocate(&reply, data.len() as u64);
    (reply, id)
}

fn check_allocate(reply: &Reply, len: u64) -> Option<String> {
    if !reply.ok() {
        return None;
    }
    let a: AllocateReply = serde_json::from_slice(&reply.body).ok()?;
    (a.success && a.original_size == len).then_some(a.block_id)
}

/// Reads a block as JSON; true when the reply has the expected size and a matching data length.
fn read_json(agent: &ureq::Agent, base: &str, id: &str, len: u64) -> (Reply, bool) {
    let reply = get(agent, &format!("{base}/api/memory/read/{id}"));
    let good = reply.ok()
        && serde_json::from_slice::<ReadReply>(&reply.body).is_ok_and(|r| {
            r.success && r.size == len && r.data.len() as u64 == len.div_ceil(3) * 4
        });
    (reply, good)
}

fn stats(agent: &ureq::Agent, base: &str) -> (Reply, Option<StatsBody>) {
    let reply = get(agent, &format!("{base}/api/memory/stats"));
    let parsed = if reply.ok() {
        serde_json::from_slice::<StatsReply>(&reply.body)
            .ok()
            .filter(|s| s.success)
            .map(|s| s.stats)
    } else {
        None
    };
    (reply, parsed)
}

// ---------------------------------------------------------------------------------------------
// Recording

/// Latencies (µs) and payload bytes of one route.
#[derive(Default)]
struct Route {
    latencies: Vec<u32>,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
}

impl Route {
    fn record(&mut self, started: Instant, good: bool, bytes: u64, reply: &Reply) {
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.latencies.push(us);
        if good {
            self.bytes += bytes;
        } else {
            self.errors += 1;
            if self.first_error.is_none() {
                let text = String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]);
                self.first_error = Some(format!("status {}: {text}", reply.status));
            }
        }
    }

    fn merge(&mut self, other: Route) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.bytes += other.bytes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Nearest-rank percentile of sorted latencies, in ms.
fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

struct Summary {
    count: usize,
    errors: u64,
    p50: f64,
    p99: f64,
    max: f64,
    rps: f64,
    mbps: f64,
}

fn summarize(route: &mut Route, secs: f64) -> Summary {
    route.latencies.sort_unstable();
    let l = &route.latencies;
    Summary {
        count: l.len(),
        errors: route.errors,
        p50: pct(l, 50.0),
        p99: pct(l, 99.0),
        max: pct(l, 100.0),
        rps: l.len() as f64 / secs,
        mbps: route.bytes as f64 / 1e6 / secs,
    }
}

fn print_routes(
    routes: &mut BTreeMap<&'static str, Route>,
    secs: f64,
    results: &mut Results,
    prefix: &str,
) {
    println!("| route | requests | errors | p50 ms | p99 ms | max ms | req/s | payload MB/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut total_errors = 0;
    for (name, route) in routes.iter_mut() {
        let s = summarize(route, secs);
        total_errors += s.errors;
        println!(
            "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            s.count, s.errors, s.p50, s.p99, s.max, s.rps, s.mbps
        );
        let key = name.split_whitespace().next().unwrap_or(name);
        results.put(&format!("{prefix}.{key}.count"), s.count);
        results.put(&format!("{prefix}.{key}.errors"), s.errors);
        results.put(&format!("{prefix}.{key}.p50_ms"), format!("{:.3}", s.p50));
        results.put(&format!("{prefix}.{key}.p99_ms"), format!("{:.3}", s.p99));
        results.put(&format!("{prefix}.{key}.max_ms"), format!("{:.3}", s.max));
        results.put(&format!("{prefix}.{key}.mbps"), format!("{:.2}", s.mbps));
    }
    results.put(&format!("{prefix}.errors"), total_errors);
    for (name, route) in routes.iter() {
        if let Some(e) = &route.first_error {
            println!();
            println!("First error on {name}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Blocks allocated so far (id, size), shared by the workers of `mixed`.
#[derive(Default)]
struct Known {
    blocks: Vec<(String, u64)>,
}

fn mixed(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(64);
    let secs = args.secs.unwrap_or(30.0);
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
                    } else if roll < 95 {
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
        "## Mixed load: {conns} connections, {elapsed:.1} s (allocate 45 %, read 50 %, stats 5 %)"
    );
    println!();
    print_routes(&mut routes, elapsed, results, "mixed");
    println!();
    println!("Blocks in the store at the end: {blocks}. Payload MB/s counts the block bytes (before base64).");
    results.put("mixed.blocks", blocks);
    results.put("mixed.secs", format!("{elapsed:.2}"));
}

fn hit(args: &Args, results: &mut Results) {
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

/// One phase of `json-vs-raw`: `blocks` distinct 1 MiB blocks over `conns` connections.
fn upload_phase(
    args: &Args,
    corpus: &Arc<Vec<u8>>,
    conns: usize,
    blocks: u64,
    raw: bool,
) -> (Route, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let corpus = Arc::clone(corpus);
            let next = Arc::clone(&next);
            let url = args.url.clone();
            std::thread::spawn(move || {
                let agent = new_agent();
                let mut route = Route::default();
                let len = 1usize << 20;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= blocks || Instant::now() >= deadline {
                        break;
                    }
                    // The same content for both routes (offset by block number), stamped apart.
                    let off = (i as usize * 3_333_331) % (corpus.len() - len);
                    let mut data = corpus[off..off + len].to_vec();
                    stamp(&mut data, STAMP.fetch_add(1, Ordering::Relaxed));
                    let t = Instant::now();
                    let (reply, id) = if raw {
                        allocate_raw(&agent, &url, &data)
                    } else {
                        allocate_json(&agent, &url, &data)
                    };
                    route.record(t, id.is_some(), len as u64, &reply);
                }
                route
            })
        })
        .collect();
    let mut route = Route::default();
    for h in handles {
        route.merge(h.join().expect("worker"));
    }
    (route, start.elapsed().as_secs_f64())
}

fn json_vs_raw(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(4);
    let blocks = args.mib.unwrap_or(192);
    let corpus = Arc::new(text_corpus(64 << 20, 23));
    // Warm both paths (connections, allocator) so neither phase pays for starting up.
    upload_phase(args, &corpus, conns, conns as u64, false);
    upload_phase(args, &corpus, conns, conns as u64, true);
    let (json, t_json) = upload_phase(args, &corpus, conns, blocks, false);
    let (raw, t_raw) = upload_phase(args, &corpus, conns, blocks, true);
    let mut routes: BTreeMap<&'static str, Route> = BTreeMap::new();
    let json_mbps = json.bytes as f64 / 1e6 / t_json;
    let raw_mbps = raw.bytes as f64 / 1e6 / t_raw;
    routes.insert("allocate 1 MiB (JSON)", json);
    println!("## JSON vs raw allocate: {blocks} distinct 1 MiB blocks each, {conns} connections");
    println!();
    print_routes(&mut routes, t_json, results, "jvr-json");
    let mut routes: BTreeMap<&'static str, Route> = BTreeMap::new();
    routes.insert("allocate 1 MiB (raw)", raw);
    println!();
    print_routes(&mut routes, t_raw, results, "jvr-raw");
    println!();
    println!("| route | MB/s | vs raw |");
    println!("|---|---:|---:|");
    println!("| raw octet-stream (reference) | {raw_mbps:.1} | 1.00 |");
    println!(
        "| JSON base64 | {json_mbps:.1} | {:.2} |",
        json_mbps / raw_mbps
    );
    results.put("jvr.json_mbps", format!("{json_mbps:.2}"));
    results.put("jvr.raw_mbps", format!("{raw_mbps:.2}"));
    results.put("jvr.ratio", format!("{:.3}", json_mbps / raw_mbps));
}

/// `--bytes` of `--source` repeated; copy k has every 32 KiB stamped with k, so copies do not
/// deduplicate against each other (chunks are at least 64 KiB) yet compress like the source.
fn gen(args: &Args) {
    let total = args.bytes.expect("gen needs --bytes");
    let source = std::fs::read(args.source.as_ref().expect("gen needs --source")).expect("source");
    assert!(
        source.len() >= 1 << 20,
        "the source should be at least 1 MiB"
    );
    let mut out = std::io::stdout().lock();
    let mut copy = source.clone();
    let mut written = 0u64;
    let mut k = 0u64;
    while written < total {
        copy.copy_from_slice(&source);
        let mark = format!("[copy {k:08}]");
        let mut at = (k as usize * 4099) % (32 << 10);
        while at + mark.len() <= copy.len() {
            copy[at..at + mark.len()].copy_from_slice(mark.as_bytes());
            at += 32 << 10;
        }
        let n = (total - written).min(copy.len() as u64) as usize;
        if out.write_all(&copy[..n]).is_err() {
            return; // the reader went away
        }
        written += n as u64;
        k += 1;
    }
    let _ = out.flush();
}

fn main() {
    let args = parse_args();
    let mut results = Results::open(&args.results);
    match args.scenario.as_str() {
        "mixed" => mixed(&args, &mut results),
        "hit" => hit(&args, &mut results),
        "json-vs-raw" => json_vs_raw(&args, &mut results),
        "gen" => gen(&args),
        other => {
            eprintln!("usage: load (mixed|hit|json-vs-raw|gen) --url http://127.0.0.1:PORT [--conns N] [--secs S] [--mib N] [--bytes N --source FILE] [--results FILE]");
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
}
