//! Load generator for `aetherflow serve`: N worker threads, each with its own keep-alive
//! connection, every loop bounded by a request count and a deadline. Loopback only. Prints
//! markdown tables; with `--results FILE` it also appends `key value` lines for the scripts in
//! `bench/` (`server.sh`, `s3.sh`).
//!
//!     cargo bench -p aetherflow-server --bench load -- mixed --url http://127.0.0.1:PORT
//!     cargo bench -p aetherflow-server --bench load -- hit --url http://127.0.0.1:PORT
//!     cargo bench -p aetherflow-server --bench load -- json-vs-raw --url http://127.0.0.1:PORT
//!     cargo bench -p aetherflow-server --bench load -- gen --bytes 2GiB --source silesia.tar
//!     cargo bench -p aetherflow-server --bench load -- blocks --url URL --source silesia.tar
//!     cargo bench -p aetherflow-server --bench load -- shared --url URL --url2 URL2 --source silesia.tar
//!
//! | scenario | what it does |
//! |---|---|
//! | `mixed` | `--conns` (64) connections for `--secs` (30): JSON allocate of 64 KiB–1 MiB text-like blocks (45 %), JSON read of earlier blocks (50 %), stats (`--stats-percent`, 5 %; the reads take the rest) |
//! | `hit` | allocates one 64 KiB block, reads it once to warm the cache, then `--conns` (64) connections read it for `--secs` (10) |
//! | `json-vs-raw` | `--mib` (192) MiB in 1 MiB blocks through JSON allocate, then the same amount through the raw octet-stream route, `--conns` (4) connections; MB/s of each and the ratio |
//! | `gen` | writes `--bytes` of `--source` repeated, each copy stamped so that no copy deduplicates against another, to stdout (the same bytes every run) |
//! | `blocks` | `--source` (or `--bytes` of it as `gen` writes them) as raw 1 MiB blocks over `--conns` (4) connections, then every block read back raw and compared byte for byte; MB/s of each phase and the store requests (`/metrics`) each phase made, per GiB; `--label` names the results keys |
//! | `shared` | two servers on one store: `--conns` (4) connections to each of `--url` and `--url2` allocate raw blocks for `--secs` (60), then every block is read from both servers and compared with what was sent |
//!
//! | module | holds |
//! |---|---|
//! | [`client`] | the HTTP helpers: agents, requests, the replies of each route, `/metrics` |
//! | [`content`] | deterministic text-like content and stamps that keep blocks distinct |
//! | [`report`] | per-route latency recording, markdown tables, the results file |
//! | [`pool`] | a fixed number of numbered requests spread over connections |
//! | [`mixed`] | `mixed` and `hit` |
//! | [`upload`] | `json-vs-raw` and `gen` |
//! | [`blocks`] | `blocks` |
//! | [`shared`] | `shared` |

mod blocks;
mod client;
mod content;
mod mixed;
mod pool;
mod report;
mod shared;
mod upload;

use report::Results;

/// The command line: one scenario and the options it reads (each scenario has its defaults).
struct Args {
    scenario: String,
    url: String,
    /// The second server of `shared`.
    url2: Option<String>,
    conns: Option<usize>,
    secs: Option<f64>,
    mib: Option<u64>,
    bytes: Option<u64>,
    source: Option<String>,
    results: Option<String>,
    rate: Option<f64>,
    /// Prefix of the results keys of `blocks` (so one results file can hold several runs).
    label: Option<String>,
    /// Share of `mixed`'s requests that ask for the stats (5 %); the rest of the 55 % are reads.
    stats_percent: Option<u64>,
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

/// A server URL, checked to be on loopback (the generator must never load anything else).
fn loopback_url(url: &str) -> String {
    let host = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("--url must be http://127.0.0.1:PORT"));
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "the load generator only talks to loopback, not {host}"
    );
    url.trim_end_matches('/').to_string()
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut args = Args {
        scenario: String::new(),
        url: "http://127.0.0.1:5000".into(),
        url2: None,
        conns: None,
        secs: None,
        mib: None,
        bytes: None,
        source: None,
        results: None,
        rate: None,
        label: None,
        stats_percent: None,
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => args.url = value(),
            "--url2" => args.url2 = Some(value()),
            "--conns" => args.conns = Some(value().parse().expect("--conns N")),
            "--secs" => args.secs = Some(value().parse().expect("--secs S")),
            "--mib" => args.mib = Some(value().parse().expect("--mib N")),
            "--bytes" => args.bytes = Some(parse_size(&value())),
            "--source" => args.source = Some(value()),
            "--results" => args.results = Some(value()),
            "--rate" => args.rate = Some(value().parse().expect("--rate REQUESTS_PER_SECOND")),
            "--label" => args.label = Some(value()),
            "--stats-percent" => {
                let n: u64 = value().parse().expect("--stats-percent 0..=55");
                assert!(
                    n <= 55,
                    "--stats-percent: at most 55 (allocations take 45 %)"
                );
                args.stats_percent = Some(n);
            }
            s if !s.starts_with('-') && args.scenario.is_empty() => args.scenario = s.into(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    args.url = loopback_url(&args.url);
    args.url2 = args.url2.as_deref().map(loopback_url);
    args
}

fn main() {
    let args = parse_args();
    let mut results = Results::open(&args.results);
    match args.scenario.as_str() {
        "mixed" => mixed::mixed(&args, &mut results),
        "hit" => mixed::hit(&args, &mut results),
        "json-vs-raw" => upload::json_vs_raw(&args, &mut results),
        "gen" => upload::gen(&args),
        "blocks" => blocks::blocks(&args, &mut results),
        "shared" => shared::shared(&args, &mut results),
        other => {
            eprintln!("usage: load (mixed|hit|json-vs-raw|gen|blocks|shared) --url http://127.0.0.1:PORT [--url2 URL] [--conns N] [--secs S] [--mib N] [--bytes N --source FILE] [--label NAME] [--stats-percent N] [--results FILE]");
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
}
