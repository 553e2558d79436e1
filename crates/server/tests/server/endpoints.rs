//! The seven endpoints and the raw routes, with the JSON shapes of SPEC §3.

use std::io::Read;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{b64, client, json, text, unb64, TestServer};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn allocate_read_stats_free_round_trip() {
    let server = TestServer::start();
    let http = client();
    let data = text(1 << 20, 1);
    let (status, body) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .send_json(json!({"data": b64(&data)}))
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["originalSize"], 1 << 20);
    assert_eq!(
        body["message"],
        "Successfully allocated 1.00 MB in virtual memory"
    );
    let id = body["blockId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID");

    let (status, body) = json(
        http.get(format!("{}/api/memory/read/{id}", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["success"].clone(),
            body["blockId"].clone(),
            body["size"].clone(),
            body["verified"].clone()
        ),
        (json!(true), json!(id), json!(1 << 20), json!(true))
    );
    assert_eq!(unb64(body["data"].as_str().unwrap()), data);

    let (status, body) = json(
        http.get(format!("{}/api/memory/stats", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200);
    let stats = &body["stats"];
    assert_eq!(stats["totalBlocks"], 1);
    assert_eq!(stats["virtualMemoryCapacity"], "100.0TB");
    assert_eq!(stats["bytes"]["logical"], 1 << 20);
    assert_eq!(stats["backend"], "memory");
    assert_eq!(stats["durable"], false);
    assert!(stats["ratios"]["overall"].as_f64().unwrap() > 2.0);
    let detail = &stats["blockDetails"][0];
    assert_eq!(detail["id"], id.as_str());
    assert_eq!(detail["checksum"], hex(&Sha256::digest(&data)));
    assert_eq!(detail["accessCount"], 1);
    assert!(humantime::parse_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());

    let (status, body) = json(
        http.delete(format!("{}/api/memory/free/{id}", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(
        (status, body["success"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, body) = json(
        http.get(format!("{}/api/memory/read/{id}", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    let (status, _) = json(
        http.delete(format!("{}/api/memory/free/{id}", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 404, "double free");
}

#[test]
fn seeded_blocks_need_their_seed_and_never_leak_data() {
    let server = TestServer::start();
    let http = client();
    let data = text(50_000, 2);
    let (_, body) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .send_json(json!({"data": b64(&data), "seed": "correct horse"}))
            .unwrap(),
    );
    let id = body["blockId"].as_str().unwrap().to_string();
    let read = |seed: Option<&str>| {
        let mut request = http.get(format!("{}/api/memory/read/{id}", server.url));
        if let Some(seed) = seed {
            request = request.header("X-AetherFlow-Seed", seed);
        }
        json(request.call().unwrap())
    };
    for (seed, code) in [(None, "SEED_REQUIRED"), (Some("wrong"), "WRONG_SEED")] {
        let (status, body) = read(seed);
        assert_eq!((status, body["code"].as_str()), (401, Some(code)), "{body}");
        assert_eq!(body["success"], false);
        assert!(body.get("data").is_none(), "no data with a 401");
    }
    let (status, body) = read(Some("correct horse"));
    assert_eq!(status, 200);
    assert_eq!(unb64(body["data"].as_str().unwrap()), data);
    // Cached now: still guarded.
    assert_eq!(read(Some("wrong")).0, 401);
    // Freeing needs the seed too.
    let (status, _) = json(
        http.delete(format!("{}/api/memory/free/{id}", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 401);
    let (status, _) = json(
        http.delete(format!("{}/api/memory/free/{id}", server.url))
            .header("X-AetherFlow-Seed", "correct horse")
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200);
}

#[test]
fn compress_and_decompress_round_trip_without_storing() {
    let server = TestServer::start();
    let http = client();
    let data = text(300_000, 3);
    let (status, body) = json(
        http.post(format!("{}/api/memory/compress", server.url))
            .send_json(json!({"data": b64(&data)}))
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["originalSize"], 300_000);
    assert_eq!(body["checksum"], hex(&Sha256::digest(&data)));
    assert!(body["compressionPercent"].as_str().unwrap().ends_with('%'));
    let af = body["compressed"].as_str().unwrap().to_string();
    assert_eq!(
        unb64(&af).len() as u64,
        body["compressedSize"].as_u64().unwrap()
    );
    // A JSON number, as SPEC §3 gives it: originalSize / compressedSize.
    let ratio = body["ratio"].as_f64().expect("ratio is a number");
    assert!(
        (ratio - 300_000.0 / unb64(&af).len() as f64).abs() < 1e-9,
        "{ratio}"
    );
    let (status, body) = json(
        http.post(format!("{}/api/memory/decompress", server.url))
            .send_json(json!({"compressed": af}))
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["verified"].clone(), body["size"].clone()),
        (json!(true), json!(300_000))
    );
    assert_eq!(unb64(body["data"].as_str().unwrap()), data);
    let (_, stats) = json(
        http.get(format!("{}/api/memory/stats", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(stats["stats"]["totalBlocks"], 0, "compress stores nothing");

    // Encrypted: the wrong seed gets 401 and no data.
    let (_, body) = json(
        http.post(format!("{}/api/memory/compress", server.url))
            .send_json(json!({"data": b64(&data), "seed": "s3cret"}))
            .unwrap(),
    );
    let af = body["compressed"].as_str().unwrap().to_string();
    for (seed, code) in [
        (json!(null), "SEED_REQUIRED"),
        (json!("nope"), "WRONG_SEED"),
    ] {
        let (status, body) = json(
            http.post(format!("{}/api/memory/decompress", server.url))
                .send_json(json!({"compressed": af, "seed": seed}))
                .unwrap(),
        );
        assert_eq!((status, body["code"].as_str()), (401, Some(code)), "{body}");
        assert!(body.get("data").is_none());
    }
    let (status, body) = json(
        http.post(format!("{}/api/memory/decompress", server.url))
            .send_json(json!({"compressed": b64(b"not an af file at all")}))
            .unwrap(),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Invalid AetherFlow magic"),
        "{body}"
    );
}

#[test]
fn a_tiny_af_that_expands_past_the_limit_is_refused() {
    let server = TestServer::with(|_, c| c.max_body = 1 << 20);
    let http = client();
    // 8 MiB of zeros compresses to about 200 bytes, and would decompress past the 1 MiB bound.
    let mut af = Vec::new();
    aetherflow_engine::compress(
        aetherflow_engine::Source::from_bytes(&vec![0u8; 8 << 20]),
        &mut af,
        &Default::default(),
        &aetherflow_engine::NoProgress,
    )
    .unwrap();
    let (status, body) = json(
        http.post(format!("{}/api/memory/decompress", server.url))
            .send_json(json!({"compressed": b64(&af)}))
            .unwrap(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("OUTPUT_TOO_LARGE")),
        "{body}"
    );
}

#[test]
fn raw_bytes_stream_both_ways_with_ranges() {
    let server = TestServer::start();
    let http = client();
    let mut data = text(3 << 20, 4);
    data.extend(vec![0u8; 1 << 20]);
    let (status, body) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .header("Content-Type", "application/octet-stream")
            .send(&data[..])
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["originalSize"], data.len());
    let id = body["blockId"].as_str().unwrap().to_string();
    let url = format!("{}/api/memory/read/{id}", server.url);

    let mut response = http
        .get(&url)
        .header("Accept", "application/octet-stream")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["accept-ranges"], "bytes");
    let mut got = Vec::new();
    response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .reader()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, data);

    for (range, expect) in [
        ("bytes=0-99", 0..100),
        ("bytes=1000000-", 1_000_000..data.len()),
        ("bytes=-10", data.len() - 10..data.len()),
    ] {
        let mut response = http
            .get(&url)
            .header("Accept", "application/octet-stream")
            .header("Range", range)
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 206, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes {}-{}/{}", expect.start, expect.end - 1, data.len()).as_str()
        );
        let mut part = Vec::new();
        response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .reader()
            .read_to_end(&mut part)
            .unwrap();
        assert!(part == data[expect.clone()], "{range}");
    }
    // A small block is read whole through the cache: the second raw read is a hit.
    let small = text(100_000, 44);
    let (_, body) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .header("Content-Type", "application/octet-stream")
            .send(&small[..])
            .unwrap(),
    );
    let small_url = format!(
        "{}/api/memory/read/{}",
        server.url,
        body["blockId"].as_str().unwrap()
    );
    for (round, range) in [(0, "bytes=10-19"), (1, "bytes=99990-")] {
        let mut response = http
            .get(&small_url)
            .header("Accept", "application/octet-stream")
            .header("Range", range)
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 206, "round {round}");
        let part = response.body_mut().read_to_vec().unwrap();
        let expect = if round == 0 {
            &small[10..20]
        } else {
            &small[99_990..]
        };
        assert_eq!(part, expect);
    }
    let (_, stats) = json(
        http.get(format!("{}/api/memory/stats", server.url))
            .call()
            .unwrap(),
    );
    assert!(
        stats["stats"]["cache"]["hits"].as_u64().unwrap() >= 1,
        "{}",
        stats["stats"]["cache"]
    );
    let response = http
        .get(&url)
        .header("Accept", "application/octet-stream")
        .header("Range", format!("bytes={}-", data.len()))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );
}

#[test]
fn an_export_moves_every_block_to_another_server() {
    let (a, b) = (TestServer::start(), TestServer::start());
    let http = client();
    let plain = text(200_000, 5);
    let (_, body) = json(
        http.post(format!("{}/api/memory/allocate", a.url))
            .send_json(json!({"data": b64(&plain)}))
            .unwrap(),
    );
    let id = body["blockId"].as_str().unwrap().to_string();
    let (_, body) = json(
        http.post(format!("{}/api/memory/allocate", a.url))
            .send_json(json!({"data": b64(b"secret"), "seed": "k"}))
            .unwrap(),
    );
    let sid = body["blockId"].as_str().unwrap().to_string();

    let mut export = http
        .get(format!("{}/api/memory/export?data=true", a.url))
        .header("X-AetherFlow-Seed", "k")
        .call()
        .unwrap();
    assert_eq!(export.status().as_u16(), 200);
    let doc = export
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(parsed["blocks"].as_array().unwrap().len(), 2);
    let (_, listing) = json(
        http.get(format!("{}/api/memory/export", a.url))
            .call()
            .unwrap(),
    );
    assert!(
        listing["blocks"][0].get("data").is_none(),
        "without ?data=true no data"
    );

    let (status, body) = json(
        http.post(format!("{}/api/memory/import", b.url))
            .header("Content-Type", "application/json")
            .header("X-AetherFlow-Seed", "k")
            .send(&doc[..])
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"], 2);
    let (_, body) = json(
        http.get(format!("{}/api/memory/read/{id}", b.url))
            .call()
            .unwrap(),
    );
    assert_eq!(unb64(body["data"].as_str().unwrap()), plain);
    let (status, _) = json(
        http.get(format!("{}/api/memory/read/{sid}", b.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 401, "still seeded on the new server");
    let (_, body) = json(
        http.get(format!("{}/api/memory/read/{sid}", b.url))
            .header("X-AetherFlow-Seed", "k")
            .call()
            .unwrap(),
    );
    assert_eq!(unb64(body["data"].as_str().unwrap()), b"secret");

    // A checksum that is not a SHA-256, or data that is not base64, makes the document
    // invalid, even on a block that would be skipped (no data; seeded, but no seed given).
    let malformed = [
        (
            json!({"id": "e3e70682-c209-1cac-a29f-6fbed82c07cd", "checksum": "3M"}),
            "checksum",
        ),
        (
            json!({"id": "e3e70682-c209-1cac-a29f-6fbed82c07cd", "data": "%%", "seeded": true}),
            "base64",
        ),
    ];
    for (block, fault) in malformed {
        let (status, body) = json(
            http.post(format!("{}/api/memory/import", b.url))
                .header("Content-Type", "application/json")
                .send(json!({ "blocks": [block] }).to_string().as_bytes())
                .unwrap(),
        );
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].to_string().contains(fault), "{body}");
    }
}

#[test]
fn every_route_is_described_and_served() {
    let server = TestServer::start();
    let http = client();
    let (status, doc) = json(
        http.get(format!("{}/openapi.json", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/api/memory/allocate", "post"),
        ("/api/memory/read/{blockId}", "get"),
        ("/api/memory/stats", "get"),
        ("/api/memory/compress", "post"),
        ("/api/memory/decompress", "post"),
        ("/api/memory/export", "get"),
        ("/api/memory/import", "post"),
        ("/api/memory/free/{blockId}", "delete"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/api/volumes", "post"),
        ("/api/volumes", "get"),
        ("/api/volumes/{name}", "get"),
        ("/api/volumes/{name}", "delete"),
        ("/api/volumes/{name}/snapshot", "post"),
        ("/api/volumes/{name}/clone", "post"),
        ("/api/volumes/{name}/unlock", "post"),
        ("/api/volumes/{name}/lock", "post"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let described: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        described,
        expected.len(),
        "a described route this test does not know: {:?}",
        paths
    );
    // Each described route is really served (anything but the fallback's NO_SUCH_ROUTE).
    for (path, method) in expected {
        let url = format!(
            "{}{}",
            server.url,
            path.replace("{blockId}", "00000000-0000-4000-8000-000000000000")
                .replace("{name}", "no-such-volume")
        );
        let response = match method {
            "get" => http.get(&url).call(),
            "delete" => http.delete(&url).call(),
            _ => http
                .post(&url)
                .header("Content-Type", "application/json")
                .send("{}"),
        }
        .unwrap();
        let (_, body) = json(response);
        assert_ne!(body["code"], "NO_SUCH_ROUTE", "{method} {path}");
    }
    let (status, body) = json(
        http.get(format!("{}/api/memory/nothing", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NO_SUCH_ROUTE"))
    );
    let mut metrics = http.get(format!("{}/metrics", server.url)).call().unwrap();
    let text = metrics.body_mut().read_to_string().unwrap();
    for name in [
        "aetherflow_http_requests_total",
        "aetherflow_http_request_duration_seconds_bucket",
        "aetherflow_cache_hits_total",
        "aetherflow_logical_bytes",
        "aetherflow_physical_bytes",
        "aetherflow_http_request_body_bytes_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}
