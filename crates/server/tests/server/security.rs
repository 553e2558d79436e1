//! Bad input, tokens, limits and slow clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{b64, client, json, text, TestServer};

#[test]
fn bad_requests_get_400_naming_what_is_wrong() {
    let server = TestServer::start();
    let http = client();
    let url = format!("{}/api/memory/allocate", server.url);
    let cases: [(&str, &str, &str); 5] = [
        ("{\"data\": ", "BAD_JSON", "EOF"),
        ("{}", "BAD_JSON", "missing field `data`"),
        ("{\"data\": \"@@@\"}", "BAD_BASE64", "\"data\""),
        ("{\"data\": 5}", "BAD_JSON", "invalid type"),
        ("{\"data\": \"\", \"seed\": \"\"}", "BAD_SEED", "empty"),
    ];
    for (body, code, says) in cases {
        let (status, answer) = json(
            http.post(&url)
                .header("Content-Type", "application/json")
                .send(body)
                .unwrap(),
        );
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{body} -> {answer}"
        );
        assert_eq!(answer["success"], false);
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body} -> {answer}"
        );
    }
    let (status, answer) = json(
        http.get(format!("{}/api/memory/read/not-a-uuid", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("MALFORMED_ID"))
    );
    let (status, answer) = json(
        http.get(format!(
            "{}/api/memory/read/6f1c9d52-2f0e-4f4e-9b1a-3c2d1e0f9a8b",
            server.url
        ))
        .call()
        .unwrap(),
    );
    assert_eq!((status, answer["code"].as_str()), (404, Some("NOT_FOUND")));
}

/// The server may answer 413 and close while the client is still sending: either the client
/// reads the 413, or its send fails on the closed connection. Both are a refusal.
fn refused_as_too_large(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) {
    match result {
        Ok(response) => {
            let (status, answer) = json(response);
            assert_eq!(
                (status, answer["code"].as_str()),
                (413, Some("PAYLOAD_TOO_LARGE")),
                "{answer}"
            );
        }
        Err(ureq::Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn bodies_over_the_limit_get_413_without_being_read() {
    let server = TestServer::with(|_, c| c.max_body = 64 * 1024);
    let http = client();
    refused_as_too_large(
        http.post(format!("{}/api/memory/allocate", server.url))
            .send_json(json!({"data": b64(&text(100_000, 1))})),
    );
    // A client declares 1 GiB and sends nothing more: the answer comes at once.
    let mut socket = TcpStream::connect(server.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(socket, "POST /api/memory/allocate HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1073741824\r\n\r\n").unwrap();
    let mut head = [0u8; 64];
    let n = socket.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // A chunked raw upload (no declared length) is cut off once it passes the limit.
    let big = text(200_000, 2);
    refused_as_too_large(
        http.post(format!("{}/api/memory/allocate", server.url))
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut &big[..])),
    );
    let (_, stats) = json(
        http.get(format!("{}/api/memory/stats", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(stats["stats"]["totalBlocks"], 0, "nothing stored");
}

#[test]
fn capacity_exhausted_is_507_and_stores_nothing() {
    let server = TestServer::with(|vm, _| vm.capacity = 100_000);
    let http = client();
    let (status, _) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .send_json(json!({"data": b64(&text(60_000, 1))}))
            .unwrap(),
    );
    assert_eq!(status, 200);
    let (status, answer) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .send_json(json!({"data": b64(&text(60_000, 2))}))
            .unwrap(),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (507, Some("CAPACITY_EXCEEDED")),
        "{answer}"
    );
    let (_, stats) = json(
        http.get(format!("{}/api/memory/stats", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(stats["stats"]["totalBlocks"], 1);
}

#[test]
fn a_token_guards_every_route_but_healthz() {
    let server = TestServer::with(|_, c| c.token = Some("t0ken".into()));
    let http = client();
    for path in [
        "/api/memory/stats",
        "/api/memory/export",
        "/metrics",
        "/openapi.json",
        "/api/memory/read/6f1c9d52-2f0e-4f4e-9b1a-3c2d1e0f9a8b",
        "/",
    ] {
        let response = http.get(format!("{}{path}", server.url)).call().unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let response = http
            .get(format!("{}{path}", server.url))
            .header("Authorization", "Bearer wrong")
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path} with a wrong token");
    }
    let (status, answer) = json(
        http.post(format!("{}/api/memory/allocate", server.url))
            .send_json(json!({"data": "aGk="}))
            .unwrap(),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    assert_eq!(
        http.get(format!("{}/healthz", server.url))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let (status, _) = json(
        http.get(format!("{}/api/memory/stats", server.url))
            .header("Authorization", "Bearer t0ken")
            .call()
            .unwrap(),
    );
    assert_eq!(status, 200);
}

/// Median time of a few health checks.
fn health_latency(url: &str) -> Duration {
    let http = client();
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(
                http.get(format!("{url}/healthz"))
                    .call()
                    .unwrap()
                    .status()
                    .as_u16(),
                200
            );
            t.elapsed()
        })
        .collect();
    times.sort();
    times[2]
}

#[test]
fn stalled_clients_are_cut_off_while_others_are_served() {
    let server = TestServer::with(|_, c| {
        c.header_timeout = Duration::from_secs(1);
        c.body_timeout = Duration::from_secs(1);
    });
    // One sends its head a byte at a time and then stops; one sends half a body and stops.
    let mut slow_head = TcpStream::connect(server.addr).unwrap();
    for b in b"POST /api/memory/allocate HTTP/1.1\r\nHost: x\r\n" {
        slow_head.write_all(&[*b]).unwrap();
    }
    let mut slow_body = TcpStream::connect(server.addr).unwrap();
    write!(slow_body, "POST /api/memory/allocate HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n").unwrap();
    slow_body.write_all(&[7u8; 5000]).unwrap();
    // Meanwhile everyone else is served promptly.
    assert!(health_latency(&server.url) < Duration::from_millis(500));

    let started = Instant::now();
    slow_head
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = slow_head.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stalled head was not cut off"
    );
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow_body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stalled body was not cut off"
    );
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 408")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let (_, stats) = json(
        client()
            .get(format!("{}/api/memory/stats", server.url))
            .call()
            .unwrap(),
    );
    assert_eq!(
        stats["stats"]["totalBlocks"], 0,
        "the half upload stored nothing"
    );
}

#[test]
fn shutdown_lets_requests_in_flight_finish() {
    let server = TestServer::start();
    let url = server.url.clone();
    let data = text(4 << 20, 9);
    // An upload that trickles in over about a second while the server is asked to stop.
    let uploader = std::thread::spawn(move || {
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                let n = buf.len().min(self.0.len()).min(100_000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut body = Slow(&data);
        json(
            client()
                .post(format!("{url}/api/memory/allocate"))
                .header("Content-Type", "application/octet-stream")
                .send(ureq::SendBody::from_reader(&mut body))
                .unwrap(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    server.stop();
    let (status, answer) = uploader.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["originalSize"], 4 << 20);
}
