//! `compress-directory` and archive restores, through the real binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::{af, p, stderr, Dir, CORRUPT, SEED};

const USAGE: i32 = 2;
const PARTIAL: i32 = 6;

fn tree(root: &Path) {
    fs::create_dir_all(root.join("src/deep/empty")).unwrap();
    fs::create_dir_all(root.join("target")).unwrap();
    fs::write(root.join("src/main.rs"), b"fn main() {}\n".repeat(100)).unwrap();
    fs::write(root.join("src/deep/data.bin"), super::sample_data()).unwrap();
    fs::write(root.join("src/deep/copy.bin"), super::sample_data()).unwrap();
    fs::write(root.join("debug.log"), b"noise").unwrap();
    fs::write(root.join("target/out"), b"built").unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("main-link")).unwrap();
    fs::hard_link(root.join("src/main.rs"), root.join("main-hard.rs")).unwrap();
    fs::set_permissions(root.join("src/main.rs"), fs::Permissions::from_mode(0o640)).unwrap();
}

/// `find -printf` of type, mode, size, mtime and link target for every entry.
fn listing(root: &Path) -> String {
    let out = Command::new("find")
        .arg(root)
        .args(["-mindepth", "1", "-printf", "%P %y %m %s %T@ %l\\n"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            // Directory sizes depend on the filesystem, not on what the archive holds.
            let f: Vec<&str> = l.split(' ').collect();
            if f[1] == "d" {
                format!("{} d {} {}", f[0], f[2], f[4])
            } else {
                l.to_string()
            }
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn folders_round_trip_with_excludes_listings_and_single_entries() {
    let dir = Dir::new();
    let src = dir.path("tree");
    tree(&src);
    let packed = dir.path("tree.af");
    let out = af(&[
        "compress-directory",
        p(&src),
        p(&packed),
        "--exclude",
        "*.log",
        "--exclude",
        "target",
        "--verbose",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("src/deep/data.bin") && text.contains("✓ Compression successful!"),
        "{text}"
    );
    // The second copy of data.bin is stored once.
    let size = fs::metadata(&packed).unwrap().len();
    let single = af(&[
        "compress",
        p(&src.join("src/deep/data.bin")),
        p(&dir.path("one.af")),
    ]);
    assert!(single.status.success());
    let one = fs::metadata(dir.path("one.af")).unwrap().len();
    assert!(size < one + 4096, "archive {size} vs one copy {one}");

    let dest = dir.path("restored");
    let out = af(&["decompress", p(&packed), p(&dest)]);
    assert!(out.status.success(), "{}", stderr(&out));
    fs::remove_file(src.join("debug.log")).unwrap();
    fs::remove_dir_all(src.join("target")).unwrap();
    // Removing the excluded entries touched the root's time: compare it apart.
    let root_time = |d: &Path| fs::metadata(d).unwrap().modified().unwrap();
    assert_ne!(root_time(&src), root_time(&dest));
    assert_eq!(listing(&src), listing(&dest));
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", p(&src), p(&dest)])
        .status()
        .unwrap();
    assert!(diff.success());

    let out = af(&["stats", p(&packed)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("directory archive") && text.contains("main-link -> src/main.rs"),
        "{text}"
    );
    assert!(
        text.contains("rw-r-----") && !text.contains("debug.log"),
        "{text}"
    );
    let out = af(&["stats", p(&packed), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == "src/deep/copy.bin"));

    let out = af(&[
        "decompress",
        p(&packed),
        p(&dir.path("single")),
        "--path",
        "src/deep/copy.bin",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(dir.path("single/src/deep/copy.bin")).unwrap(),
        super::sample_data()
    );
    assert!(!dir.path("single/src/main.rs").exists());
    let out = af(&[
        "decompress",
        p(&packed),
        p(&dir.path("x")),
        "--path",
        "no/such",
    ]);
    assert_eq!(out.status.code(), Some(USAGE), "{}", stderr(&out));
}

#[test]
fn a_non_empty_destination_is_refused_without_force() {
    let dir = Dir::new();
    let src = dir.path("tree");
    tree(&src);
    let packed = dir.path("tree.af");
    assert!(af(&["compress-directory", p(&src), p(&packed)])
        .status
        .success());
    let dest = dir.path("busy");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("debug.log"), b"mine, keep it").unwrap();
    let out = af(&["decompress", p(&packed), p(&dest)]);
    assert_eq!(out.status.code(), Some(USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(fs::read(dest.join("debug.log")).unwrap(), b"mine, keep it");
    let out = af(&["decompress", p(&packed), p(&dest), "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(dest.join("debug.log")).unwrap(), b"noise");
    assert!(dest.join("src/deep/empty").is_dir());
}

#[test]
fn seeded_archives_hide_their_names_and_need_the_seed() {
    let dir = Dir::new();
    let src = dir.path("tree");
    tree(&src);
    let packed = dir.path("tree.af");
    let out = af(&[
        "compress-directory",
        p(&src),
        p(&packed),
        "--seed",
        "tree seed",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = fs::read(&packed).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"main-lin"));
    let out = af(&["stats", p(&packed)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("give the seed to see them") && !text.contains("main-link"),
        "{text}"
    );
    let out = af(&[
        "decompress",
        p(&packed),
        p(&dir.path("d")),
        "--seed",
        "wrong",
    ]);
    assert_eq!(out.status.code(), Some(SEED));
    assert!(!dir.path("d").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(["decompress", p(&packed), p(&dir.path("d"))])
        .env("AF_SEED", "tree seed")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&src), listing(&dir.path("d")));
}

/// Runs the binary as an unprivileged user when the tests run as root, so that a mode-000 file
/// really cannot be read.
fn af_unprivileged(args: &[&str]) -> std::process::Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_aetherflow"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_aetherflow"))
    };
    command.args(args).env_remove("AF_SEED").output().unwrap()
}

#[test]
fn unreadable_files_make_a_partial_archive_with_its_own_exit_code() {
    let dir = Dir::new();
    fs::set_permissions(dir.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = dir.path("tree");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("readable.txt"), b"fine").unwrap();
    fs::write(src.join("locked.txt"), b"private").unwrap();
    fs::set_permissions(src.join("locked.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let packed = dir.path("tree.af");
    let out = af_unprivileged(&["compress-directory", p(&src), p(&packed)]);
    assert_eq!(out.status.code(), Some(PARTIAL), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("locked.txt") && text.contains("partial"),
        "{text}"
    );
    let out = af(&["stats", p(&packed)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("locked.txt  (not archived: unreadable)"),
        "{text}"
    );
    let dest = dir.path("restored");
    let out = af(&["decompress", p(&packed), p(&dest)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(dest.join("readable.txt")).unwrap(), b"fine");
    assert!(!dest.join("locked.txt").exists());
    let help = af(&["compress-directory", "--help"]);
    assert!(String::from_utf8(help.stdout)
        .unwrap()
        .contains("6  compress-directory"));
}

#[test]
fn damaged_archives_name_the_entry_and_earlier_entries_restore() {
    let dir = Dir::new();
    let src = dir.path("tree");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.txt"), b"first entry, small").unwrap();
    fs::write(src.join("z.bin"), super::sample_data()).unwrap();
    let packed = dir.path("tree.af");
    assert!(af(&["compress-directory", p(&src), p(&packed)])
        .status
        .success());
    let full = fs::read(&packed).unwrap();
    // z.bin's chunks fill the middle of the file; flip a bit there.
    let mut flipped = full.clone();
    flipped[full.len() / 2] ^= 0x04;
    let bad = dir.write("flipped.af", &flipped);
    let out = af(&["decompress", p(&bad), p(&dir.path("d1"))]);
    assert_eq!(out.status.code(), Some(CORRUPT), "{}", stderr(&out));
    assert!(stderr(&out).contains("z.bin"), "{}", stderr(&out));
    assert!(!dir.path("d1").exists());
    let out = af(&["decompress", p(&bad), p(&dir.path("d2")), "--path", "a.txt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(dir.path("d2/a.txt")).unwrap(),
        b"first entry, small"
    );

    let cut = dir.write("cut.af", &full[..full.len() / 2]);
    let out = af(&["decompress", p(&cut), p(&dir.path("d3"))]);
    assert_eq!(out.status.code(), Some(CORRUPT), "{}", stderr(&out));
    let out = af(&["decompress", p(&cut), p(&dir.path("d4")), "--path", "a.txt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert_eq!(
        fs::read(dir.path("d4/a.txt")).unwrap(),
        b"first entry, small"
    );
    let out = af(&["decompress", p(&cut), p(&dir.path("d5")), "--path", "z.bin"]);
    assert_eq!(out.status.code(), Some(CORRUPT), "{}", stderr(&out));
    assert!(stderr(&out).contains("z.bin"), "{}", stderr(&out));
}
