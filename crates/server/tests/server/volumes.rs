//! Volumes: the REST routes that manage them, and their bytes through real NBD clients (qemu-io,
//! qemu-img, nbdinfo) against the server's own NBD listener. Crash and filesystem tests, which
//! need the server as a process, are in the command line's tests.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client, json, TestServer};

fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    json(
        client()
            .post(format!("{}{path}", server.url))
            .send_json(body)
            .unwrap(),
    )
}

fn get(server: &TestServer, path: &str) -> (u16, Value) {
    json(
        client()
            .get(format!("{}{path}", server.url))
            .call()
            .unwrap(),
    )
}

fn delete(server: &TestServer, path: &str) -> (u16, Value) {
    json(
        client()
            .delete(format!("{}{path}", server.url))
            .call()
            .unwrap(),
    )
}

/// Runs a client tool; its output, whatever the exit status.
fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is not installed ({e}): run scripts/deps.sh"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// qemu-io commands against one export, over one connection; asserts they all succeeded.
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    qemu_io_with(&["-f", "raw"], uri, commands)
}

fn qemu_io_with(options: &[&str], uri: &str, commands: &[&str]) -> String {
    let mut args = options.to_vec();
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = tool("qemu-io", &args);
    let t = text(&out);
    assert!(out.status.success(), "qemu-io {commands:?}: {t}");
    assert!(
        !t.contains("failed") && !t.contains("Pattern verification"),
        "qemu-io {commands:?}: {t}"
    );
    t
}

fn create(server: &TestServer, body: Value) -> Value {
    let (status, answer) = post(server, "/api/volumes", body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    answer["volume"].clone()
}

#[test]
fn volumes_are_created_listed_snapshotted_cloned_and_deleted_over_rest() {
    let server = TestServer::start();
    let v = create(&server, json!({"name": "disk-1", "size": "100TiB"}));
    assert_eq!(v["name"], "disk-1");
    assert_eq!(v["size"], 100u64 << 40);
    assert_eq!(v["seeded"], false);
    assert_eq!(v["readOnly"], false);
    assert_eq!(v["origin"], Value::Null);
    assert_eq!(v["bytes"]["logical"], 100u64 << 40);
    assert_eq!(v["bytes"]["written"], 0);
    assert_eq!(v["bytes"]["physical"], 0);
    assert_eq!(v["bytes"]["unique"], 0);
    assert!(v["ratio"].is_f64());
    // Sizes in bytes too; a second volume of the same name is refused, nothing changed.
    let small = create(&server, json!({"name": "small", "size": 12345}));
    assert_eq!(small["size"], 12345);
    let (status, answer) = post(
        &server,
        "/api/volumes",
        json!({"name": "small", "size": 99}),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("VOLUME_EXISTS"))
    );
    for (body, code) in [
        (json!({"name": "../etc", "size": 1}), "VOLUME_REFUSED"),
        (json!({"name": "", "size": 1}), "VOLUME_REFUSED"),
        (json!({"name": "zero", "size": 0}), "VOLUME_REFUSED"),
        (json!({"name": "huge", "size": "101TiB"}), "VOLUME_REFUSED"),
        (json!({"name": "odd", "size": "12XB"}), "BAD_SIZE"),
        (json!({"name": "odd", "size": -5}), "BAD_JSON"),
        (json!({"name": "odd", "size": 5, "seed": ""}), "BAD_SEED"),
        (
            json!({"name": "odd", "size": 5, "colour": "red"}),
            "BAD_JSON",
        ),
    ] {
        let (status, answer) = post(&server, "/api/volumes", body.clone());
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, list) = get(&server, "/api/volumes");
    assert_eq!(status, 200);
    let names: Vec<&str> = list["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk-1", "small"]);

    let (status, snap) = post(
        &server,
        "/api/volumes/disk-1/snapshot",
        json!({"name": "disk-1.snap"}),
    );
    assert_eq!(status, 200, "{snap}");
    assert_eq!(snap["volume"]["readOnly"], true);
    assert_eq!(snap["volume"]["origin"], "disk-1");
    // Cloning a volume that is not a snapshot conflicts with its state: 409, not 400.
    let (status, answer) = post(&server, "/api/volumes/disk-1/clone", json!({"name": "c"}));
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("NOT_A_SNAPSHOT")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("not a snapshot"),
        "{answer}"
    );
    let (status, clone) = post(
        &server,
        "/api/volumes/disk-1.snap/clone",
        json!({"name": "disk-2"}),
    );
    assert_eq!(status, 200, "{clone}");
    assert_eq!(clone["volume"]["readOnly"], false);
    assert_eq!(clone["volume"]["origin"], "disk-1.snap");
    let (status, answer) = post(&server, "/api/volumes/nope/snapshot", json!({"name": "x"}));
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("VOLUME_NOT_FOUND"))
    );

    let (status, stats) = get(&server, "/api/memory/stats");
    assert_eq!(status, 200);
    assert_eq!(stats["stats"]["totalVolumes"], 4);

    let (status, answer) = delete(&server, "/api/volumes/disk-2");
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = get(&server, "/api/volumes/disk-2");
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("VOLUME_NOT_FOUND"))
    );
    let (status, _) = delete(&server, "/api/volumes/disk-2");
    assert_eq!(status, 404);
}

#[test]
fn nbd_clients_see_a_thin_100_tib_volume_and_exact_figures() {
    let server = TestServer::start();
    create(&server, json!({"name": "big", "size": "100TiB"}));
    let uri = format!("{}/big", server.nbd);
    let size = tool("nbdinfo", &["--size", &uri]);
    assert_eq!(text(&size).trim(), (100u64 << 40).to_string());
    let info = text(&tool("nbdinfo", &[&uri]));
    for line in [
        "can_multi_conn: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_fast_zero: true",
        "is_read_only: false",
        "block_size_minimum: 1",
        "block_size_preferred: 16384",
        "block_size_maximum: 33554432",
    ] {
        assert!(info.contains(line), "{line} missing from: {info}");
    }
    // 1 MiB of one pattern is 16 identical groups of 64 KiB (four 16 KiB chunks each): stored
    // once. Zeros written with NO_HOLE
    // cost no data and read as zero without a hole; the last bytes of the volume work too.
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 0 1M",
            "write -z 8M 2M",
            "write -P 0x11 109951162773504 4096",
            "flush",
        ],
    );
    let map = tool("qemu-img", &["map", "-f", "raw", "--output=json", &uri]);
    let extents: Vec<Value> = serde_json::from_slice(&map.stdout).expect("qemu-img map JSON");
    let simple: Vec<(u64, u64, bool, bool)> = extents
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect();
    let end = 100u64 << 40;
    assert_eq!(
        simple,
        [
            (0, 1 << 20, true, false),
            (1 << 20, 7 << 20, false, true),
            (8 << 20, 2 << 20, true, true),
            (10 << 20, end - 16384 - (10 << 20), false, true),
            (end - 16384, 16384, true, false),
        ],
        "{}",
        text(&map)
    );
    let nbd_map = text(&tool("nbdinfo", &["--map", &uri]));
    assert!(nbd_map.contains("2  zero"), "{nbd_map}");
    assert!(nbd_map.contains("3  hole,zero"), "{nbd_map}");
    let (_, v) = get(&server, "/api/volumes/big");
    let b = &v["volume"]["bytes"];
    // The last chunk holds 4 KiB of 0x11 and 12 KiB of zeros: its whole 16 KiB is data.
    assert_eq!(b["written"], (1 << 20) + 16384, "{v}");
    assert_eq!(b["zeroed"], 2 << 20, "{v}");
    assert_eq!(b["unique"], 65536 + 16384, "{v}");
    assert_eq!(b["buffered"], 0, "{v}");
    let physical = b["physical"].as_u64().unwrap();
    assert!(physical > 0 && physical < 64 * 1024, "{v}");
    let (_, stats) = get(&server, "/api/memory/stats");
    assert_eq!(
        stats["stats"]["bytes"]["volumes"],
        (1u64 << 20) + 16384 + (2 << 20),
        "{stats}"
    );
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 0 1M",
            "read -P 0 1M 9M",
            "read -P 0x11 109951162773504 4096",
        ],
    );
    let metrics = client()
        .get(format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(r#"aetherflow_nbd_requests_total{command="write",result="ok"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("aetherflow_volumes 1"), "{metrics}");
}

#[test]
fn writes_on_one_connection_are_read_on_another_and_snapshots_refuse_writes() {
    let server = TestServer::start();
    create(&server, json!({"name": "v", "size": "64MiB"}));
    let uri = format!("{}/v", server.nbd);
    // Unaligned writes that straddle chunks, each on its own connection.
    qemu_io(&uri, &["write -P 0x21 65000 200000"]);
    qemu_io(&uri, &["write -P 0x42 130000 7"]);
    qemu_io(
        &uri,
        &[
            "read -P 0x21 65000 65000",
            "read -P 0x42 130000 7",
            "read -P 0x21 130007 134993",
            "read -P 0 0 65000",
        ],
    );
    // Write-zeroes and discard from a third connection, read from a fourth: unaligned zeroes
    // read as zeros; discarded whole chunks become holes (what a discard leaves is the
    // server's to choose: here, zeros).
    qemu_io(&uri, &["write -P 0x55 1M 1M"]);
    qemu_io(&uri, &["write -z 1100000 5000", "discard 1179648 131072"]);
    qemu_io(
        &uri,
        &[
            "read -P 0x55 1M 51424",
            "read -P 0 1100000 5000",
            "read -P 0x55 1105000 74648",
            "read -P 0 1179648 131072",
            "read -P 0x55 1310720 786432",
        ],
    );
    let map = text(&tool("nbdinfo", &["--map", &uri]));
    assert!(
        map.contains("1179648      131072    3  hole,zero"),
        "the discarded chunks are not a hole: {map}"
    );
    let (status, _) = post(
        &server,
        "/api/volumes/v/snapshot",
        json!({"name": "v-snap"}),
    );
    assert_eq!(status, 200);
    // After the snapshot, the volume moves on; the snapshot keeps what it had.
    qemu_io(&uri, &["write -P 0x77 65000 10"]);
    let snap = format!("{}/v-snap", server.nbd);
    qemu_io_with(&["-r", "-f", "raw"], &snap, &["read -P 0x21 65000 10"]);
    assert!(text(&tool("nbdinfo", &[&snap])).contains("is_read_only: true"));
    // The export says read-only, so qemu will not even open it for writing (the server's
    // EPERM for a client that writes anyway is pinned down in the protocol layer's tests).
    let out = tool("qemu-io", &["-f", "raw", "-c", "write -P 1 0 512", &snap]);
    assert!(!out.status.success());
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    // Past the end: refused, and the connection still serves.
    let out = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read 67108864 512",
            "-c",
            "read -P 0x77 65000 10",
            &uri,
        ],
    );
    let t = text(&out);
    assert!(t.contains("read failed"), "{t}");
    assert!(t.contains("read 10/10 bytes"), "{t}");
}

#[test]
fn seeded_volumes_are_served_only_once_unlocked_and_in_use_ones_not_deleted() {
    let server = TestServer::start();
    let v = create(
        &server,
        json!({"name": "secret", "size": "16MiB", "seed": "s3cret"}),
    );
    assert_eq!(v["seeded"], true);
    let uri = format!("{}/secret", server.nbd);
    qemu_io(&uri, &["write -P 0x3c 0 100000"]);
    let (status, _) = post(&server, "/api/volumes/secret/lock", json!({}));
    assert_eq!(status, 200);
    // qemu shows the server's message.
    let out = tool("qemu-img", &["info", &uri]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("volume secret is locked"),
        "{}",
        text(&out)
    );
    let (status, answer) = post(
        &server,
        "/api/volumes/secret/unlock",
        json!({"seed": "nope"}),
    );
    assert_eq!((status, answer["code"].as_str()), (401, Some("WRONG_SEED")));
    assert!(
        !tool("nbdinfo", &[&uri]).status.success(),
        "a wrong seed unlocked it"
    );
    let (status, answer) = post(
        &server,
        "/api/volumes/secret/unlock",
        json!({"seed": "s3cret"}),
    );
    assert_eq!(status, 200, "{answer}");
    qemu_io(&uri, &["read -P 0x3c 0 100000"]);
    let out = tool("nbdinfo", &[&format!("{}/missing", server.nbd)]);
    assert!(!out.status.success());

    // A client that holds the volume open: qemu-io sleeping between two reads.
    let mut holder = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512", "-c", "sleep 20000", &uri])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&server, "/api/volumes/secret").1["volume"]["open"] != true {
        assert!(Instant::now() < deadline, "the volume never showed as open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, answer) = delete(&server, "/api/volumes/secret");
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("VOLUME_IN_USE"))
    );
    let (status, answer) = post(&server, "/api/volumes/secret/lock", json!({}));
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("VOLUME_IN_USE"))
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = delete(&server, "/api/volumes/secret");
        if status == 200 {
            break;
        }
        assert_eq!(status, 409);
        assert!(Instant::now() < deadline, "the volume stayed open");
        std::thread::sleep(Duration::from_millis(50));
    }
}
