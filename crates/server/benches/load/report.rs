//! Recording and reporting: latencies per route, the markdown tables, and the `key value`
//! results file the bench scripts read their figures from.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use crate::client::Reply;

/// `key value` lines for the script that drives this bench.
pub struct Results(Option<std::fs::File>);

impl Results {
    pub fn open(path: &Option<String>) -> Results {
        Results(path.as_ref().map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("results file")
        }))
    }

    pub fn put(&mut self, key: &str, value: impl std::fmt::Display) {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{key} {value}").expect("results file");
        }
    }
}

/// Latencies (µs) and payload bytes of one route.
#[derive(Default)]
pub struct Route {
    latencies: Vec<u32>,
    pub errors: u64,
    pub bytes: u64,
    first_error: Option<String>,
}

impl Route {
    /// Records one request that started at `started`: its payload counts only when `good`.
    pub fn record(&mut self, started: Instant, good: bool, bytes: u64, reply: &Reply) {
        if good {
            self.record_good(started, bytes);
        } else {
            self.record_error(started, || reply.describe());
        }
    }

    pub fn record_good(&mut self, started: Instant, bytes: u64) {
        self.latencies.push(micros_since(started));
        self.bytes += bytes;
    }

    /// Records a failed request; `why` is asked for the first failure only.
    pub fn record_error(&mut self, started: Instant, why: impl FnOnce() -> String) {
        self.latencies.push(micros_since(started));
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    pub fn merge(&mut self, other: Route) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.bytes += other.bytes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn micros_since(started: Instant) -> u32 {
    started.elapsed().as_micros().min(u32::MAX as u128) as u32
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

pub fn print_routes(
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
