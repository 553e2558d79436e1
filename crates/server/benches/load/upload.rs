//! `json-vs-raw` (what base64 in JSON costs against the raw route) and `gen` (the stamped
//! Silesia stream `bench/server.sh` pipes into the raw route and into the CLI).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::{allocate_json, allocate_raw};
use crate::content::{stamp, stamped_copies, text_corpus, STAMP};
use crate::pool::spread;
use crate::report::{print_routes, Results, Route};
use crate::Args;

/// One phase of `json-vs-raw`: `blocks` distinct 1 MiB blocks over `conns` connections.
fn upload_phase(args: &Args, corpus: &[u8], conns: usize, blocks: u64, raw: bool) -> (Route, f64) {
    let len = 1usize << 20;
    spread(
        conns,
        blocks,
        Duration::from_secs(300),
        |agent, i, route| {
            // The same content for both routes (offset by block number), stamped apart.
            let off = (i as usize * 3_333_331) % (corpus.len() - len);
            let mut data = corpus[off..off + len].to_vec();
            stamp(&mut data, STAMP.fetch_add(1, Ordering::Relaxed));
            let t = Instant::now();
            let (reply, id) = if raw {
                allocate_raw(agent, &args.url, &data)
            } else {
                allocate_json(agent, &args.url, &data)
            };
            route.record(t, id.is_some(), len as u64, &reply);
        },
    )
}

pub fn json_vs_raw(args: &Args, results: &mut Results) {
    let conns = args.conns.unwrap_or(4);
    let blocks = args.mib.unwrap_or(192);
    let corpus = text_corpus(64 << 20, 23);
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

/// `--bytes` of `--source` repeated, each copy stamped apart (see [`stamped_copies`]).
pub fn gen(args: &Args) {
    let total = args.bytes.expect("gen needs --bytes");
    let source = std::fs::read(args.source.as_ref().expect("gen needs --source")).expect("source");
    let mut out = std::io::stdout().lock();
    // A failed write means the reader went away: stop there.
    stamped_copies(&source, total, |copy| out.write_all(copy).is_ok());
    let _ = out.flush();
}
