//! `aetherflow serve` as a process: refusing unsafe listens, logs that never hold secrets, a clean
//! stop on SIGTERM, and `memory-info --server`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{af, stderr};

/// A server process, killed if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server on an ephemeral loopback port; returns the process and its base URL.
fn start(args: &[&str]) -> (Server, String, BufReader<std::process::ChildStderr>) {
    let mut child = Server(
        Command::new(env!("CARGO_BIN_EXE_aetherflow"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("AF_LOG", "debug")
            .env_remove("AF_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the server exited before listening"
        );
        if let Some(rest) = line.split("listening on ").nth(1) {
            let url = rest.split_whitespace().next().unwrap().to_string();
            return (child, url, err);
        }
    }
}

fn stop(
    mut server: Server,
    mut err: BufReader<std::process::ChildStderr>,
) -> (Option<i32>, String) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = server.0.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    (status.code(), rest)
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

#[test]
fn a_public_address_needs_a_token_or_insecure() {
    let out = af(&["serve", "--memory", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("without a token"), "{}", stderr(&out));
    for extra in [["--token", "x"], ["--insecure", "--memory"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
            .args(["serve", "--memory", "--listen", "0.0.0.0:0"])
            .args(extra.iter().filter(|a| **a != "--memory"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening on"), "{extra:?}: {line}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn logs_never_hold_seeds_or_data_and_sigterm_stops_cleanly() {
    let data_dir = tempfile::tempdir().unwrap();
    let (child, url, err) = start(&["--data-dir", data_dir.path().to_str().unwrap()]);
    let http = agent();
    let seed = "SEED-sentinel-4f7c1e";
    let data = b"DATA-sentinel-very-private-content ".repeat(100);
    let data_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&data)
    };
    let mut response = http
        .post(format!("{url}/api/memory/allocate"))
        .send_json(serde_json::json!({"data": data_b64, "seed": seed}))
        .unwrap();
    let answer: serde_json::Value = response.body_mut().read_json().unwrap();
    let id = answer["blockId"].as_str().unwrap().to_string();
    http.get(format!("{url}/api/memory/read/{id}"))
        .header("X-AetherFlow-Seed", seed)
        .call()
        .unwrap();
    http.get(format!("{url}/api/memory/read/{id}"))
        .header("X-AetherFlow-Seed", "wrong-SEED-sentinel")
        .call()
        .unwrap();
    http.post(format!("{url}/api/memory/allocate"))
        .header("Content-Type", "application/octet-stream")
        .header("X-AetherFlow-Seed", seed)
        .send(&data[..])
        .unwrap();
    http.post(format!("{url}/api/memory/compress"))
        .send_json(serde_json::json!({"data": data_b64, "seed": seed}))
        .unwrap();
    http.post(format!("{url}/api/memory/allocate"))
        .header("Content-Type", "application/json")
        .send(format!(
            "{{\"data\": \"{data_b64}\", \"seed\": \"{seed}\", \"junk\": 1}}"
        ))
        .unwrap();

    let mut memory_info = af(&["memory-info", "--server", &url]);
    assert!(memory_info.status.success(), "{}", stderr(&memory_info));
    let text = String::from_utf8(std::mem::take(&mut memory_info.stdout)).unwrap();
    assert!(text.contains("in 2 blocks"), "{text}");

    let (code, log) = stop(child, err);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        log.contains("POST /api/memory/allocate 200"),
        "requests are logged: {log}"
    );
    for secret in [seed, "SEED-sentinel", "DATA-sentinel", &data_b64[..40]] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
    // The blocks survived the stop.
    let out = af(&[
        "check",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
        "--read-data",
        "--seed",
        seed,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn memory_info_reports_a_servers_errors_clearly() {
    let (child, url, err) = start(&["--memory", "--token", "tk"]);
    let out = af(&["memory-info", "--server", &url]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(["memory-info", "--server", &url, "--json"])
        .env("AF_TOKEN", "tk")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["store"]["backend"], "memory");
    stop(child, err);
}
