//! Servers on S3-compatible storage (SeaweedFS on loopback): two servers sharing one bucket,
//! and an S3 server that goes away mid-run and comes back.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aetherflow_s3::Timeouts;
use aetherflow_vm::{Backend, S3Location, S3Options};
use serde_json::json;

use super::{b64, client, json, text, unb64, TestServer};

fn location(endpoint: &str, prefix: &str) -> S3Location {
    let bucket = std::env::var("AF_S3_BUCKET").unwrap_or_else(|_| "aetherflow-test".into());
    format!("s3://{bucket}/{prefix}?endpoint={endpoint}")
        .parse()
        .unwrap()
}

fn shared_endpoint() -> String {
    std::env::var("AF_S3_ENDPOINT").expect(
        "AF_S3_ENDPOINT is not set: these tests need a real S3 server. Run them with \
         `bash scripts/test.sh`, which installs and starts SeaweedFS",
    )
}

fn options() -> S3Options {
    S3Options {
        grace: Duration::from_secs(5),
        refresh_every: Duration::from_millis(300),
        sweep_every: Some(Duration::from_secs(2)),
        timeouts: Timeouts {
            request: Duration::from_secs(5),
            retry: Duration::from_secs(2),
        },
        ..S3Options::default()
    }
}

fn s3_server(location: &S3Location) -> TestServer {
    let location = location.clone();
    TestServer::with(move |vm, _| vm.backend = Backend::S3(location, options()))
}

fn allocate(url: &str, data: &[u8]) -> (u16, serde_json::Value) {
    json(
        client()
            .post(format!("{url}/api/memory/allocate"))
            .send_json(json!({"data": b64(data)}))
            .unwrap(),
    )
}

fn read(url: &str, id: &str) -> (u16, serde_json::Value) {
    json(
        client()
            .get(format!("{url}/api/memory/read/{id}"))
            .call()
            .unwrap(),
    )
}

#[test]
fn two_servers_share_one_bucket() {
    let location = location(
        &shared_endpoint(),
        &format!("rest-{}", uuid::Uuid::new_v4().simple()),
    );
    let (a, b) = (s3_server(&location), s3_server(&location));
    let data = text(3 << 20, 7);
    let (status, body) = allocate(&a.url, &data);
    assert_eq!(status, 200, "{body}");
    let on_a = body["blockId"].as_str().unwrap().to_string();

    let (status, body) = read(&b.url, &on_a);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        unb64(body["data"].as_str().unwrap()),
        data,
        "B reads what A allocated"
    );
    assert_eq!(read(&a.url, &on_a).0, 200, "now in A's read cache too");

    std::thread::sleep(Duration::from_millis(400)); // B's view of A's chunks refreshes
    let (status, body) = allocate(&b.url, &data);
    assert_eq!(status, 200, "{body}");
    let on_b = body["blockId"].as_str().unwrap().to_string();
    let (_, body) = read(&a.url, &on_b);
    assert_eq!(
        unb64(body["data"].as_str().unwrap()),
        data,
        "A reads what B allocated"
    );

    std::thread::sleep(Duration::from_millis(400));
    for server in [&a, &b] {
        let (_, stats) = json(
            client()
                .get(format!("{}/api/memory/stats", server.url))
                .call()
                .unwrap(),
        );
        assert_eq!(stats["stats"]["totalBlocks"], 2, "{stats}");
        let logical = stats["stats"]["bytes"]["logical"].as_u64().unwrap();
        let physical = stats["stats"]["bytes"]["physical"].as_u64().unwrap();
        assert_eq!(logical, 2 * data.len() as u64);
        assert!(
            physical < data.len() as u64,
            "the second copy was deduplicated across servers: {physical}"
        );
    }

    let (status, _) = json(
        client()
            .delete(format!("{}/api/memory/free/{on_a}", b.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200);
    // A trusts the bucket's word that a block exists for a second, and its cache until its
    // view of the bucket refreshes (300 ms here).
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(read(&a.url, &on_a).0, 404, "freed by B, gone for A");
    let raw = client()
        .get(format!("{}/api/memory/read/{on_a}", a.url))
        .header("Accept", "application/octet-stream")
        .call()
        .unwrap();
    assert_eq!(raw.status(), 404, "not even from A's read cache");
    assert_eq!(read(&a.url, &on_b).0, 200, "the shared chunks stay");

    let metrics = client()
        .get(format!("{}/metrics", a.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for op in ["put", "get", "list"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("aetherflow_store_requests_total{{op=\"{op}\"}}")))
            .unwrap_or_else(|| panic!("no {op} count in {metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
}

/// A SeaweedFS of this test's own, which it may stop and start.
struct PrivateS3 {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateS3 {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/seaweedfs.sh")
    }

    fn run(&self, what: &str) {
        let status = Command::new("bash")
            .arg(Self::script())
            .arg(what)
            .arg(self.dir.path())
            .env("AF_S3_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "seaweedfs.sh {what} failed");
    }

    fn start(port: u16) -> PrivateS3 {
        let s3 = PrivateS3 {
            dir: tempfile::tempdir().unwrap(),
            port,
        };
        s3.run("start");
        s3
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.run("stop");
    }
}

#[test]
fn an_s3_outage_is_a_503_and_service_resumes_with_nothing_lost() {
    let s3 = PrivateS3::start(20333);
    let server = s3_server(&location(&s3.endpoint(), "outage"));
    let kept = text(1 << 20, 11);
    let (status, body) = allocate(&server.url, &kept);
    assert_eq!(status, 200, "{body}");
    let kept_id = body["blockId"].as_str().unwrap().to_string();

    s3.run("stop");
    let started = Instant::now();
    let (status, body) = allocate(&server.url, &text(1 << 20, 12));
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("STORE_UNAVAILABLE")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fails in bounded time"
    );
    let (status, _) = json(
        client()
            .get(format!("{}/healthz", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200, "the server itself stays up");

    s3.run("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    let fresh = text(1 << 20, 13);
    let new_id = loop {
        let (status, body) = allocate(&server.url, &fresh);
        if status == 200 {
            break body["blockId"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "service did not resume: {body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    for (id, data) in [(&kept_id, &kept), (&new_id, &fresh)] {
        let (status, body) = read(&server.url, id);
        assert_eq!(status, 200, "{body}");
        assert_eq!(&unb64(body["data"].as_str().unwrap()), data);
    }
}
