//! `/metrics`: Prometheus text. Requests by route and status, a latency histogram, body bytes in
//! and out, cache hits and misses, logical and physical bytes; NBD connections and requests by
//! command and outcome, and the bytes they moved.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use aetherflow_vm::VirtualMemory;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NbdCommand {
    command: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NbdBytes {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    method: String,
    route: String,
}

/// The server's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<Route, Histogram>,
    /// Request and response body bytes (declared lengths).
    bytes_in: Counter<u64, AtomicU64>,
    bytes_out: Counter<u64, AtomicU64>,
    cache_hits: Counter<u64, AtomicU64>,
    cache_misses: Counter<u64, AtomicU64>,
    logical: Gauge,
    physical: Gauge,
    blocks: Gauge,
    /// Requests to a remote store (object storage), by operation.
    store_requests: Family<Operation, Counter>,
    nbd_requests: Family<NbdCommand, Counter>,
    nbd_bytes: Family<NbdBytes, Counter>,
    nbd_connections: Gauge,
    nbd_connections_total: Counter,
    volumes: Gauge,
    /// Cache counts already added to the counters (they are read from the manager at scrape).
    seen: Mutex<(u64, u64)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<Route, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let mut m = Metrics {
            requests,
            latency,
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            logical: Gauge::default(),
            physical: Gauge::default(),
            blocks: Gauge::default(),
            store_requests: Family::default(),
            nbd_requests: Family::default(),
            nbd_bytes: Family::default(),
            nbd_connections: Gauge::default(),
            nbd_connections_total: Counter::default(),
            volumes: Gauge::default(),
            seen: Mutex::new((0, 0)),
            registry: Registry::with_prefix("aetherflow"),
        };
        let registry = &mut m.registry;
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        registry.register(
            "http_request_body_bytes",
            "Request body bytes received",
            m.bytes_in.clone(),
        );
        registry.register(
            "http_response_body_bytes",
            "Response body bytes sent",
            m.bytes_out.clone(),
        );
        registry.register(
            "cache_hits",
            "Block reads served from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Block reads that decompressed",
            m.cache_misses.clone(),
        );
        registry.register(
            "logical_bytes",
            "Bytes clients allocated",
            m.logical.clone(),
        );
        registry.register(
            "physical_bytes",
            "Bytes the store holds",
            m.physical.clone(),
        );
        registry.register("blocks", "Blocks stored", m.blocks.clone());
        registry.register(
            "store_requests",
            "Requests made to the object store (s3 backend), by operation",
            m.store_requests.clone(),
        );
        registry.register(
            "nbd_requests",
            "NBD requests by command and result (ok, error)",
            m.nbd_requests.clone(),
        );
        registry.register(
            "nbd_bytes",
            "Bytes NBD reads and writes moved, by command",
            m.nbd_bytes.clone(),
        );
        registry.register(
            "nbd_connections",
            "NBD connections open now",
            m.nbd_connections.clone(),
        );
        registry.register(
            "nbd_connections_accepted",
            "NBD connections accepted",
            m.nbd_connections_total.clone(),
        );
        registry.register(
            "volumes",
            "Volumes, snapshots and clones",
            m.volumes.clone(),
        );
        m
    }

    pub(crate) fn nbd_connected(&self) {
        self.nbd_connections.inc();
        self.nbd_connections_total.inc();
    }

    pub(crate) fn nbd_disconnected(&self) {
        self.nbd_connections.dec();
    }

    pub(crate) fn nbd_request(&self, command: &'static str, bytes: u64, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.nbd_requests
            .get_or_create(&NbdCommand { command, result })
            .inc();
        if bytes > 0 {
            self.nbd_bytes
                .get_or_create(&NbdBytes { command })
                .inc_by(bytes);
        }
    }

    /// The text exposition, with the manager's figures read now.
    pub fn render(&self, vm: &VirtualMemory) -> String {
        let s = vm.summary();
        {
            let mut seen = self.seen.lock().expect("metrics lock");
            self.cache_hits.inc_by(s.cache.hits.saturating_sub(seen.0));
            self.cache_misses
                .inc_by(s.cache.misses.saturating_sub(seen.1));
            *seen = (s.cache.hits.max(seen.0), s.cache.misses.max(seen.1));
        }
        self.logical
            .set(i64::try_from(s.bytes.logical).unwrap_or(i64::MAX));
        self.physical
            .set(i64::try_from(s.bytes.physical).unwrap_or(i64::MAX));
        self.blocks
            .set(i64::try_from(s.total_blocks).unwrap_or(i64::MAX));
        self.volumes
            .set(i64::try_from(s.total_volumes).unwrap_or(i64::MAX));
        if let Some(r) = vm.store().remote_requests() {
            // Under the lock: two scrapes at once must not both add the same difference.
            let _one = self.seen.lock().expect("metrics lock");
            for (op, total) in [
                ("put", r.put),
                ("get", r.get),
                ("head", r.head),
                ("list", r.list),
                ("delete", r.delete),
            ] {
                let counter = self.store_requests.get_or_create(&Operation { op });
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn record(
        &self,
        method: &str,
        route: &str,
        status: u16,
        seconds: f64,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.requests
            .get_or_create(&RouteStatus {
                method: method.into(),
                route: route.into(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                method: method.into(),
                route: route.into(),
            })
            .observe(seconds);
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Middleware: counts and times every request, and logs one line per request (method, route,
/// status, time: never headers, seeds or bodies).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let bytes_in = content_length(request.headers());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    state.metrics.record(
        &method,
        &route,
        status,
        elapsed,
        bytes_in,
        content_length(response.headers()),
    );
    tracing::info!(target: "aetherflow::http", "{method} {route} {status} {:.1}ms", elapsed * 1000.0);
    response
}
