//! `memory-info --data-dir` and `check` on a real store.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use aetherflow_vm::{Backend, BlockId, VirtualMemory, VmConfig};

use super::{af, p, stderr, CORRUPT, IO};

/// A store with three unseeded blocks of incompressible data (one raw chunk each) and one zero
/// block; returns the ids in allocation order.
fn populate(dir: &Path) -> Vec<BlockId> {
    let vm = VirtualMemory::open(VmConfig::new(Backend::Local(dir.to_path_buf()))).unwrap();
    let mut ids: Vec<BlockId> = (0..3u64)
        .map(|i| {
            let mut state = 0x9e3779b97f4a7c15u64.wrapping_mul(i + 1) | 1;
            let data: Vec<u8> = (0..50_000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 32) as u8
                })
                .collect();
            vm.allocate(&data, None).unwrap()
        })
        .collect();
    ids.push(vm.allocate(&vec![0u8; 1 << 20], None).unwrap());
    ids
}

#[test]
fn memory_info_shows_a_stores_live_figures() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let out = af(&["memory-info", "--data-dir", p(dir.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("in 4 blocks"), "{text}");
    assert!(text.contains("1.14 MB logical"), "{text}");
    let out = af(&["memory-info", "--data-dir", p(dir.path()), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["store"]["blocks"], 4);
    assert_eq!(json["store"]["bytes"]["logical"], 150_000 + (1 << 20));
    assert_eq!(json["store"]["bytes"]["zero"], 1 << 20);
    let physical = json["physicalUsed"].as_u64().unwrap();
    assert!(physical > 150_000 && physical < 160_000, "{physical}");
}

/// `memory-info` run in `cwd` with no flags.
fn memory_info_in(cwd: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .arg("memory-info")
        .current_dir(cwd)
        .env_remove("AF_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn memory_info_without_flags_finds_the_default_store() {
    // The data directory `serve` uses by default, where it is run.
    let here = tempfile::tempdir().unwrap();
    populate(&here.path().join("aetherflow-data"));
    let text = memory_info_in(here.path());
    assert!(
        text.contains("in 4 blocks") && text.contains("aetherflow-data (local"),
        "{text}"
    );
    // Nowhere: it says where it looked (or, if a server answers on the default port, shows
    // that one).
    let empty = tempfile::tempdir().unwrap();
    let text = memory_info_in(empty.path());
    let server_there = std::net::TcpStream::connect("127.0.0.1:5000").is_ok();
    if server_there {
        assert!(text.contains("http://127.0.0.1:5000"), "{text}");
    } else {
        assert!(
            text.contains(
                "no store found (no aetherflow-data here, no server at http://127.0.0.1:5000)"
            ),
            "{text}"
        );
    }
}

#[test]
fn check_is_clean_then_names_exactly_the_damaged_block() {
    let dir = tempfile::tempdir().unwrap();
    let ids = populate(dir.path());
    let out = af(&["check", "--data-dir", p(dir.path()), "--read-data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Result:           clean"));

    // Flip one bit inside the second block's payload.
    let pack = fs::read_dir(dir.path().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let at = 16 + (61 + 50_000) + 61 + 1000;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(pack)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();

    let out = af(&["check", "--data-dir", p(dir.path())]);
    assert!(
        out.status.success(),
        "the index alone is intact: {}",
        stderr(&out)
    );
    let out = af(&[
        "check",
        "--data-dir",
        p(dir.path()),
        "--read-data",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(CORRUPT), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let named: Vec<&str> = report["damagedBlocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(named, vec![ids[1].to_string()]);
    assert_eq!(report["blocksVerified"], 3);
}

#[test]
fn check_refuses_a_missing_or_busy_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = af(&["check", "--data-dir", p(&dir.path().join("nowhere"))]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no AetherFlow store here"),
        "{}",
        stderr(&out)
    );
    populate(dir.path());
    let _open =
        VirtualMemory::open(VmConfig::new(Backend::Local(dir.path().to_path_buf()))).unwrap();
    let out = af(&["check", "--data-dir", p(dir.path())]);
    assert_eq!(out.status.code(), Some(IO), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use by another process"),
        "{}",
        stderr(&out)
    );
}
