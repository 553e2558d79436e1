//! Crash consistency: a process allocating and freeing in a loop is killed with SIGKILL at
//! random moments; after each restart, everything it acknowledged is there and verified, nothing
//! it freed comes back, and `check` is clean.
//!
//! The same test function is both sides: run normally it is the parent; it starts itself as
//! the child (this test binary, this one test) with the data directory in the environment.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aetherflow_store::local::LocalOptions;
use aetherflow_store::LocalStore;
use aetherflow_vm::{BlockId, Error, VirtualMemory};

use super::{config, noise, text};

const CHILD_DIR: &str = "AF_TEST_CRASH_CHILD_DIR";
const CHILD_START: &str = "AF_TEST_CRASH_CHILD_START";
const ROUNDS: u64 = 50;

/// The content of allocation `i`: sizes and kinds vary, and some content repeats so that dedup
/// and shared chunks are part of every crash.
fn content(i: u64) -> Vec<u8> {
    let len = 4_000 + (i * 7919 % 90_000) as usize;
    match i % 4 {
        0 => text(len, i),
        1 => noise(len, i),
        2 => text(len, i % 7), // repeats of earlier content
        _ => {
            let mut d = vec![0u8; len / 2];
            d.extend(noise(len / 2, i % 5));
            d
        }
    }
}

/// Small packs so that rotation and compaction happen while the process may die.
fn open(dir: &Path) -> VirtualMemory {
    let options = LocalOptions {
        pack_size: 1 << 20,
        ..LocalOptions::default()
    };
    let store = LocalStore::open(dir, options).unwrap();
    VirtualMemory::with_store(Arc::new(store), config(aetherflow_vm::Backend::Memory)).unwrap()
}

fn child(dir: &str, start: u64) {
    let vm = open(Path::new(dir));
    let mut out = std::io::stdout().lock();
    let mut live = Vec::new();
    // "begin"/"freeing" announce an operation; "alloc"/"free" acknowledge it once it returned.
    for i in start.. {
        writeln!(out, "begin {i}").unwrap();
        out.flush().unwrap();
        let id = vm.allocate(&content(i), None).unwrap();
        writeln!(out, "alloc {id} {i}").unwrap();
        out.flush().unwrap();
        live.push(id);
        if i % 3 == 0 && live.len() > 2 {
            let id = live.remove(i as usize % live.len());
            writeln!(out, "freeing {id}").unwrap();
            out.flush().unwrap();
            vm.free(id).unwrap();
            writeln!(out, "free {id}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn a_killed_process_loses_nothing_it_acknowledged() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let start = std::env::var(CHILD_START).unwrap().parse().unwrap();
        return child(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: HashMap<BlockId, u64> = HashMap::new();
    let mut next = 0u64;
    let mut rng = 0x2545F4914F6CDD1Du64;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::a_killed_process_loses_nothing_it_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_START, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(40 + rng % 260));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The operation under way when the kill came may or may not have happened.
        let mut pending_alloc = None;
        let mut pending_free = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["begin", i] => {
                    let i: u64 = i.parse().unwrap();
                    pending_alloc = Some(i);
                    next = next.max(i + 1);
                }
                ["alloc", id, i] => {
                    acknowledged.insert(id.parse().unwrap(), i.parse().unwrap());
                    pending_alloc = None;
                }
                ["freeing", id] => pending_free = Some(id.parse::<BlockId>().unwrap()),
                ["free", id] => {
                    acknowledged.remove(&id.parse().unwrap());
                    pending_free = None;
                }
                _ => {} // the test harness's own lines
            }
        }
        let vm = open(dir.path());
        if let Some(id) = pending_free {
            if matches!(vm.read(id, None), Err(Error::NotFound(_))) {
                acknowledged.remove(&id);
            }
        }
        for (id, i) in &acknowledged {
            let data = vm
                .read(*id, None)
                .unwrap_or_else(|e| panic!("round {round}: block {id} ({i}): {e}"));
            assert!(
                data[..] == content(*i)[..],
                "round {round}: block {id} came back different"
            );
        }
        let mut unacknowledged = Vec::new();
        vm.store()
            .blocks(&mut |b| {
                if !acknowledged.contains_key(&b.id) {
                    unacknowledged.push(b.id);
                }
                true
            })
            .unwrap();
        // Only the allocation cut short by the kill may have landed without its acknowledgement,
        // and then whole.
        assert!(
            unacknowledged.len() <= 1,
            "round {round}: {unacknowledged:?}"
        );
        if let Some(id) = unacknowledged.pop() {
            let i = pending_alloc
                .unwrap_or_else(|| panic!("round {round}: block {id} appeared from nowhere"));
            assert!(
                vm.read(id, None).unwrap()[..] == content(i)[..],
                "round {round}: half an allocation"
            );
            acknowledged.insert(id, i);
        }
        assert_eq!(
            vm.summary().total_blocks,
            acknowledged.len() as u64,
            "round {round}"
        );
        let report = vm.check(true, None).unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");
    }
    assert!(
        next > ROUNDS * 3,
        "the child made progress: {next} allocations"
    );
    let vm = open(dir.path());
    assert!(matches!(
        vm.read(BlockId::random(), None),
        Err(Error::NotFound(_))
    ));
}
