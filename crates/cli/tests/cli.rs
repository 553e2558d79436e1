//! Drives the real `aetherflow` binary: round trips, output shapes, and every kind of bad input.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

#[path = "cli/archive.rs"]
mod archive;

const CORRUPT: i32 = 4;
const SEED: i32 = 5;
const IO: i32 = 3;

fn af(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(args)
        .env_remove("AF_SEED")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn af_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(args)
        .env_remove("AF_SEED")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A few chunks of mixed content: text, noise, zeros and a repeat.
fn sample_data() -> Vec<u8> {
    let mut state = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..3_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let text = b"AetherFlow keeps every byte, verified. ".repeat(30_000);
    [text.clone(), noise.clone(), vec![0; 3 << 20], noise, text].concat()
}

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, data).unwrap();
        path
    }
    /// Names in the directory, to prove that failures leave no partial files behind.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }
}

fn compressed_sample(dir: &Dir, seed: Option<&str>) -> (Vec<u8>, PathBuf) {
    let data = sample_data();
    let input = dir.write("input.bin", &data);
    let output = dir.path("input.af");
    let mut args = vec!["compress", p(&input), p(&output)];
    if let Some(seed) = seed {
        args.extend(["--seed", seed]);
    }
    let out = af(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    (data, output)
}

#[test]
fn files_round_trip_and_report_in_the_documented_shape() {
    let dir = Dir::new();
    let (data, packed) = compressed_sample(&dir, None);
    let restored = dir.path("restored.bin");
    let out = af(&["decompress", p(&packed), p(&restored), "--verbose"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&restored).unwrap(), data);
    let text = stderr(&out);
    assert!(text.contains("[AetherFlow] Reading"), "{text}");
    assert!(text.contains("SHA-256 verified"), "{text}");

    let out = af(&[
        "compress",
        p(&dir.path("input.bin")),
        p(&dir.path("v.af")),
        "--verbose",
    ]);
    let text = stderr(&out);
    for line in [
        "[AetherFlow] Reading",
        "[AetherFlow] Compressing",
        "✓ Compression successful!",
        "  Original size: ",
        "  Compressed size: ",
        "  Compression ratio: ",
        "  Size reduction: ",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // No progress bar or chatter when stderr is not a terminal and --verbose is off.
    let out = af(&["compress", p(&dir.path("input.bin")), p(&dir.path("q.af"))]);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn pipes_round_trip() {
    let data = sample_data();
    let packed = af_stdin(&["compress", "-", "-"], &data);
    assert!(packed.status.success(), "{}", stderr(&packed));
    let restored = af_stdin(&["decompress", "-", "-"], &packed.stdout);
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert_eq!(restored.stdout, data);
}

#[test]
fn json_and_stats_give_exact_figures() {
    let dir = Dir::new();
    let data = sample_data();
    let input = dir.write("in.bin", &data);
    let out = af(&["compress", p(&input), p(&dir.path("o.af")), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["originalBytes"], data.len() as u64);
    assert_eq!(
        json["compressedBytes"],
        fs::metadata(dir.path("o.af")).unwrap().len()
    );
    let sha = format!("{:x}", Sha256::digest(&data));
    assert_eq!(json["sha256"], sha.as_str());

    let out = af(&["stats", p(&dir.path("o.af")), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["sha256"], sha.as_str());
    assert_eq!(stats["totals"]["logicalBytes"], data.len() as u64);
    let totals = &stats["totals"];
    let parts = ["uniqueBytes", "referenceBytes", "zeroBytes", "holeBytes"];
    let sum: u64 = parts.iter().map(|k| totals[k].as_u64().unwrap()).sum();
    assert_eq!(sum, data.len() as u64, "{stats}");

    let out = af(&["stats", p(&dir.path("o.af"))]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&sha) && text.contains("Compression ratio:"),
        "{text}"
    );
}

#[test]
fn seeds_from_flag_environment_and_file_and_wrong_seeds_write_nothing() {
    let dir = Dir::new();
    let (data, packed) = compressed_sample(&dir, Some("correct horse"));
    let seed_file = dir.write("seed.txt", b"correct horse\n");

    let out = af(&[
        "decompress",
        p(&packed),
        p(&dir.path("a.bin")),
        "--seed-file",
        p(&seed_file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(dir.path("a.bin")).unwrap(), data);

    let out = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(["decompress", p(&packed), p(&dir.path("b.bin"))])
        .env("AF_SEED", "correct horse")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let before = dir.names();
    let out = af(&[
        "decompress",
        p(&packed),
        p(&dir.path("c.bin")),
        "--seed",
        "battery staple",
    ]);
    assert_eq!(out.status.code(), Some(SEED));
    assert!(stderr(&out).contains("wrong seed"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("battery"), "the seed was echoed");
    let out = af(&["decompress", p(&packed), p(&dir.path("c.bin"))]);
    assert_eq!(out.status.code(), Some(SEED));
    assert!(
        stderr(&out).contains("seed is required"),
        "{}",
        stderr(&out)
    );
    let out = af_stdin(
        &["decompress", "-", "-", "--seed", "battery staple"],
        &fs::read(&packed).unwrap(),
    );
    assert_eq!(out.status.code(), Some(SEED));
    assert!(
        out.stdout.is_empty(),
        "output was written before the seed was checked"
    );
    assert_eq!(dir.names(), before);
}

#[test]
fn a_file_that_is_not_af_is_refused_by_name() {
    let dir = Dir::new();
    let bogus = dir.write("notes.txt", b"just some text, not compressed at all");
    let before = dir.names();
    let out = af(&["decompress", p(&bogus), p(&dir.path("out.bin"))]);
    assert_eq!(out.status.code(), Some(CORRUPT));
    let text = stderr(&out);
    assert!(
        text.contains("notes.txt") && text.contains("Invalid AetherFlow magic"),
        "{text}"
    );
    assert_eq!(dir.names(), before);
    let out = af(&["stats", p(&bogus)]);
    assert_eq!(out.status.code(), Some(CORRUPT));
    assert!(stderr(&out).contains("Invalid AetherFlow magic"));
}

#[test]
fn truncated_files_are_corrupt_and_leave_nothing() {
    let dir = Dir::new();
    let (_, packed) = compressed_sample(&dir, None);
    let full = fs::read(&packed).unwrap();
    for len in [
        9,
        60,
        full.len() / 3,
        full.len() / 2,
        full.len() - 200,
        full.len() - 30,
        full.len() - 1,
    ] {
        let cut = dir.write("cut.af", &full[..len]);
        let before = dir.names();
        let out = af(&["decompress", p(&cut), p(&dir.path("out.bin"))]);
        assert_eq!(
            out.status.code(),
            Some(CORRUPT),
            "length {len}: {}",
            stderr(&out)
        );
        assert_eq!(dir.names(), before, "length {len}");
        let out = af_stdin(&["decompress", "-", "-"], &full[..len]);
        assert_eq!(
            out.status.code(),
            Some(CORRUPT),
            "piped length {len}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn flipped_bits_anywhere_are_corruption_never_output() {
    let dir = Dir::new();
    for seed in [None, Some("flip seed")] {
        let (_, packed) = compressed_sample(&dir, seed);
        let full = fs::read(&packed).unwrap();
        // Header, first records, payloads throughout, the index and the trailer.
        let mut positions: Vec<usize> = (0..48).step_by(5).collect();
        positions.extend((0..full.len()).step_by(full.len() / 40));
        positions.extend((full.len() - 400..full.len()).step_by(9));
        for &at in &positions {
            let mut bad = full.clone();
            bad[at] ^= 1 << (at % 8);
            let flipped = dir.write("flipped.af", &bad);
            let target = dir.path("restored.bin");
            let mut args = vec!["decompress", p(&flipped), p(&target)];
            if let Some(seed) = seed {
                args.extend(["--seed", seed]);
            }
            let out = af(&args);
            assert_eq!(
                out.status.code(),
                Some(CORRUPT),
                "flip at {at}: {}",
                stderr(&out)
            );
            assert!(!target.exists(), "flip at {at} left an output file");
        }
    }
}

#[test]
fn an_unwritable_output_is_a_clear_io_error() {
    let dir = Dir::new();
    let input = dir.write("in.bin", b"some content");
    let out = af(&["compress", p(&input), p(&dir.path("missing/dir/out.af"))]);
    assert_eq!(out.status.code(), Some(IO));
    assert!(
        stderr(&out).contains("missing/dir/out.af"),
        "{}",
        stderr(&out)
    );
    let out = af(&[
        "compress",
        p(&dir.path("absent.bin")),
        p(&dir.path("out.af")),
    ]);
    assert_eq!(out.status.code(), Some(IO));
    assert!(stderr(&out).contains("absent.bin"), "{}", stderr(&out));
}

#[test]
fn stdout_that_is_full_is_an_io_error() {
    let dir = Dir::new();
    let input = dir.write("in.bin", &sample_data());
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(["compress", p(&input), "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(out, std::time::Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(IO), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
}

fn wait_with_timeout(child: std::process::Child, limit: std::time::Duration) -> Output {
    let id = child.id();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = Command::new("kill").arg(id.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    drop(guard);
    out
}

/// A 2 MiB tmpfs, mounted for the test and unmounted after it, even on failure.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs", p(dir.path())])
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root: the test suite runs as root in CI"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_no_partial_file() {
    let disk = SmallDisk::mount();
    let work = Dir::new();
    let data = sample_data(); // ~10 MiB of content, 3 MiB of it incompressible, twice.
    let input = work.write("in.bin", &data);
    let packed = work.path("in.af");
    assert!(af(&["compress", p(&input), p(&packed)]).status.success());

    // Fill most of the disk so that the compressed file cannot fit either.
    fs::write(disk.dir.path().join("ballast"), vec![1u8; 1 << 20]).unwrap();
    let target = disk.dir.path().join("out.af");
    let out = af(&["compress", p(&input), p(&target)]);
    assert_eq!(out.status.code(), Some(IO), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    let target = disk.dir.path().join("restored.bin");
    let out = af(&["decompress", p(&packed), p(&target)]);
    assert_eq!(out.status.code(), Some(IO), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    let names: Vec<_> = fs::read_dir(disk.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ballast")]);
}

#[test]
fn help_documents_exit_codes_and_memory_info_is_framed() {
    let out = af(&["--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Exit codes") && text.contains("wrong"),
        "{text}"
    );
    let out = af(&["memory-info"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Virtual capacity") && text.contains("100.00 TB") && text.contains('╔'),
        "{text}"
    );
    let out = af(&["memory-info", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["virtualCapacity"], 100u64 << 40);
    let out = af(&["compress"]);
    assert_eq!(out.status.code(), Some(2));
}

#[path = "cli/store_commands.rs"]
mod store_commands;

#[path = "cli/serve.rs"]
mod serve;

#[path = "cli/s3.rs"]
mod s3;

#[path = "cli/nbd.rs"]
mod nbd;
