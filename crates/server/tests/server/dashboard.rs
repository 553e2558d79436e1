//! The dashboard in a real headless Chromium (driven by `tests/browser/dashboard.test.mjs`): the
//! page loads, shows the figures of a server holding known blocks, and logs no console errors.
//! `.ci/run` installs Chromium and the script's packages; a missing one fails this test.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use super::{b64, client, json, text, TestServer};

fn browser_test(args: &[String]) -> (bool, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci` in {} first (.ci/run does)",
        dir.display()
    );
    let out = Command::new("node")
        .arg(dir.join("dashboard.test.mjs"))
        .args(args)
        .output()
        .expect("node runs (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn allocate(server: &TestServer, body: serde_json::Value) -> String {
    let (status, answer) = json(
        client()
            .post(format!("{}/api/memory/allocate", server.url))
            .send_json(body)
            .unwrap(),
    );
    assert_eq!(status, 200, "{answer}");
    answer["blockId"].as_str().unwrap().to_string()
}

#[test]
fn the_dashboard_shows_a_servers_live_figures() {
    let server = TestServer::start();
    let a = allocate(&server, json!({"data": b64(&text(300_000, 1))}));
    let b = allocate(
        &server,
        json!({"data": b64(&text(100_000, 2)), "seed": "dash"}),
    );
    let c = allocate(&server, json!({"data": b64(&vec![0u8; 1 << 20])}));
    let logical = 300_000 + 100_000 + (1 << 20);
    for (name, seed) in [("vm-disk", None), ("secrets", Some("dash"))] {
        let mut body = json!({"name": name, "size": "100TiB"});
        if let Some(seed) = seed {
            body["seed"] = seed.into();
        }
        let (status, answer) = json(
            client()
                .post(format!("{}/api/volumes", server.url))
                .send_json(body)
                .unwrap(),
        );
        assert_eq!(status, 200, "{answer}");
    }
    let shot = std::env::temp_dir().join("aetherflow-dashboard.png");
    let mut args: Vec<String> = vec![
        "--url".into(),
        format!("{}/", server.url),
        "--expect-blocks".into(),
        "3".into(),
        "--expect-logical".into(),
        logical.to_string(),
        "--screenshot".into(),
        shot.display().to_string(),
    ];
    for id in [&a, &b, &c] {
        args.extend(["--expect-block-id".to_string(), id.clone()]);
    }
    for name in ["vm-disk", "secrets"] {
        args.extend(["--expect-volume".to_string(), name.to_string()]);
    }
    let (ok, output) = browser_test(&args);
    assert!(ok, "{output}");
    assert!(output.contains("dashboard ok"), "{output}");

    // A wrong expectation must fail: the check can tell.
    let (ok, output) = browser_test(&[
        "--url".into(),
        format!("{}/", server.url),
        "--expect-blocks".into(),
        "4".into(),
        "--expect-logical".into(),
        logical.to_string(),
    ]);
    assert!(!ok, "{output}");
    let (ok, output) = browser_test(&[
        "--url".into(),
        format!("{}/", server.url),
        "--expect-blocks".into(),
        "3".into(),
        "--expect-logical".into(),
        logical.to_string(),
        "--expect-volume".into(),
        "no-such-volume".into(),
    ]);
    assert!(!ok, "{output}");
}

#[test]
fn the_dashboard_asks_for_the_token_and_then_works() {
    let server = TestServer::with(|_, c| c.token = Some("dash-token".into()));
    let (status, answer) = json(
        client()
            .post(format!("{}/api/memory/allocate", server.url))
            .header("Authorization", "Bearer dash-token")
            .send_json(json!({"data": b64(b"hello")}))
            .unwrap(),
    );
    assert_eq!(status, 200, "{answer}");
    let args: Vec<String> = [
        "--url",
        &format!("{}/", server.url),
        "--expect-blocks",
        "1",
        "--expect-logical",
        "5",
        "--token",
        "dash-token",
        "--token-via-form",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, output) = browser_test(&args);
    assert!(ok, "{output}");
}
