//! HTTP helpers shared by every scenario: one agent per connection, requests that never fail
//! the bench (a transport error is a reply with status 0), the replies of the routes the
//! scenarios check, and the `/metrics` samples.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::content::json_allocate_body;

/// Hard cap on any single request (a stuck server must not hang the bench).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An agent that keeps one connection per server alive and hands every status back as a reply.
pub fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .max_idle_connections_per_host(1)
        .build()
        .into()
}

/// What one request gave: the status (0 for a transport error) and the body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The status and the start of the body, for error messages.
    pub fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]);
        format!("status {}: {text}", self.status)
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

pub fn post(agent: &ureq::Agent, url: &str, content_type: &str, body: &[u8]) -> Reply {
    finish(
        agent
            .post(url)
            .header("Content-Type", content_type)
            .send(body),
    )
}

pub fn get(agent: &ureq::Agent, url: &str) -> Reply {
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
pub struct StatsBody {
    pub total_blocks: u64,
    pub cache: CacheCounts,
}

#[derive(Deserialize)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
}

/// Allocates `data` through the JSON route; returns the block id when the reply is right.
pub fn allocate_json(agent: &ureq::Agent, base: &str, data: &[u8]) -> (Reply, Option<String>) {
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

/// Allocates `data` through the raw octet-stream route; the block id when the reply is right.
pub fn allocate_raw(agent: &ureq::Agent, base: &str, data: &[u8]) -> (Reply, Option<String>) {
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
pub fn read_json(agent: &ureq::Agent, base: &str, id: &str, len: u64) -> (Reply, bool) {
    let reply = get(agent, &format!("{base}/api/memory/read/{id}"));
    let good = reply.ok()
        && serde_json::from_slice::<ReadReply>(&reply.body).is_ok_and(|r| {
            r.success && r.size == len && r.data.len() as u64 == len.div_ceil(3) * 4
        });
    (reply, good)
}

/// Reads a block's raw bytes (`Accept: application/octet-stream`); the caller compares them.
pub fn read_raw(agent: &ureq::Agent, base: &str, id: &str) -> Reply {
    finish(
        agent
            .get(&format!("{base}/api/memory/read/{id}"))
            .header("Accept", "application/octet-stream")
            .call(),
    )
}

pub fn stats(agent: &ureq::Agent, base: &str) -> (Reply, Option<StatsBody>) {
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

/// The operations `aetherflow_store_requests_total` counts (object storage backends only).
pub const STORE_OPS: [&str; 5] = ["put", "get", "head", "list", "delete"];

/// One scrape of `/metrics`: every sample by its series (name and labels, as exposed).
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// Scrapes `base/metrics`; panics when the server does not answer (the figures would lie).
    pub fn scrape(agent: &ureq::Agent, base: &str) -> Metrics {
        let reply = get(agent, &format!("{base}/metrics"));
        assert!(reply.ok(), "/metrics: {}", reply.describe());
        let text = String::from_utf8_lossy(&reply.body);
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics(samples)
    }

    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// Requests of one operation the store made to its bucket; `None` for a local backend.
    pub fn store_requests(&self, op: &str) -> Option<u64> {
        self.value(&format!("aetherflow_store_requests_total{{op=\"{op}\"}}"))
            .map(|v| v as u64)
    }

    /// Requests of one operation made since `earlier` (a scrape of the same server).
    pub fn store_requests_since(&self, earlier: &Metrics, op: &str) -> Option<u64> {
        Some(
            self.store_requests(op)?
                .saturating_sub(earlier.store_requests(op)?),
        )
    }

    /// True when the server's store counts requests to an object store.
    pub fn has_store_requests(&self) -> bool {
        STORE_OPS.iter().any(|op| self.store_requests(op).is_some())
    }
}
