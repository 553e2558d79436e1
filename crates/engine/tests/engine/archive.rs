//! Directory archives: exact round trips, dedup across files, one-entry restores, hostile
//! archives built with the format's own writer, partial archives and damage.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aetherflow_engine::archive::{
    archive_directory, extract_all, extract_path, list, ArchiveOptions, ExtractOptions,
};
use aetherflow_engine::format::entry_table::{
    encode_amendments, encode_table, Entry, EntryKind, Mtime,
};
use aetherflow_engine::{
    compress, AfFile, AfSource, ChunkParams, CompressOptions, DecompressOptions, Error, KdfParams,
    Limits, NoProgress, Seed, Source,
};

const CHUNKS: ChunkParams = ChunkParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

fn options(seed: Option<&Seed>) -> ArchiveOptions<'_> {
    ArchiveOptions {
        compress: CompressOptions {
            chunking: CHUNKS,
            seed,
            kdf: KdfParams::MINIMUM,
            threads: 2,
            ..CompressOptions::default()
        },
        ..ArchiveOptions::default()
    }
}

fn extract_options(seed: Option<&Seed>, force: bool) -> ExtractOptions<'_> {
    ExtractOptions {
        decompress: DecompressOptions {
            seed,
            threads: 2,
            ..DecompressOptions::default()
        },
        force,
    }
}

fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as u8 % 16 + b'a'
        })
        .collect()
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 123_456_789,
        },
    ];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

/// A tree with every kind of entry the archive keeps.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("docs/empty")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("docs/a.txt"), b"alpha\n").unwrap();
    fs::write(root.join("docs/big.txt"), noise(50_000, 1)).unwrap();
    fs::write(root.join("docs/big-copy.txt"), noise(50_000, 1)).unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::hard_link(root.join("docs/a.txt"), root.join("hard.txt")).unwrap();
    std::os::unix::fs::symlink("docs/a.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 32 << 20).unwrap();
    fs::set_permissions(root.join("docs/empty"), fs::Permissions::from_mode(0o555)).unwrap();
    for (i, path) in [
        "docs/a.txt",
        "docs/big.txt",
        "link",
        "sparse.img",
        "docs/empty",
        "docs",
        "",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(path), 1_000_000_000 + i as i64 * 1000);
    }
}

/// type, mode, size, mtime, link target and content of every entry, by relative path.
fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let extra = if ft.is_symlink() {
            fs::read_link(&path).unwrap().display().to_string()
        } else if ft.is_file() {
            format!("{:x}", blake3_of(&fs::read(&path).unwrap()))
        } else {
            for item in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(item.unwrap().file_name()));
            }
            String::new()
        };
        let mode = if ft.is_symlink() { 0 } else { meta.mode() };
        out.push(format!(
            "{} {:o} {} {}.{} {} {}",
            rel.display(),
            mode,
            if ft.is_dir() { 0 } else { meta.len() },
            meta.mtime(),
            meta.mtime_nsec(),
            if ft.is_file() { meta.nlink() } else { 0 },
            extra
        ));
    }
    out.sort();
    out
}

fn blake3_of(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0u128, |h, &b| {
        h.wrapping_mul(0x100000001b3).wrapping_add(b as u128)
    })
}

fn archive(
    root: &Path,
    seed: Option<&Seed>,
) -> (Vec<u8>, aetherflow_engine::archive::ArchiveSummary) {
    let mut out = Vec::new();
    let summary = archive_directory(root, &mut out, &options(seed), &NoProgress).unwrap();
    (out, summary)
}

fn as_file(bytes: &[u8]) -> fs::File {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    file
}

#[test]
fn trees_round_trip_exactly_plain_and_seeded() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    sample_tree(&src);
    let seed = Seed::new("archive seed").unwrap();
    for (n, seed) in [None, Some(&seed)].into_iter().enumerate() {
        let (af, summary) = archive(&src, seed);
        assert!(!summary.is_partial(), "{summary:?}");
        assert_eq!(
            (summary.files, summary.hard_links, summary.symlinks),
            (6, 1, 2)
        );
        // The copy of big.txt costs references only; the sparse file's holes cost nothing.
        assert!(af.len() < 40_000, "{} bytes", af.len());
        let dest = work.path().join(format!("dest{n}"));
        let restored = extract_all(
            AfSource::File(as_file(&af)),
            &dest,
            &extract_options(seed, false),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(restored.entries, 13);
        assert_eq!(snapshot(&src), snapshot(&dest));
        let sparse = fs::metadata(dest.join("sparse.img")).unwrap();
        assert!(sparse.blocks() < 1024, "holes were filled in");
        assert_eq!(
            fs::metadata(dest.join("hard.txt")).unwrap().ino(),
            fs::metadata(dest.join("docs/a.txt")).unwrap().ino()
        );
        // No staging folder is left behind.
        let names: Vec<_> = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().contains("af-restore")),
            "{names:?}"
        );
    }
}

#[test]
fn file_names_are_secret_under_a_seed() {
    let work = tempfile::tempdir().unwrap();
    fs::create_dir(work.path().join("t")).unwrap();
    fs::write(work.path().join("t/very-private-name.txt"), b"x").unwrap();
    let seed = Seed::new("s").unwrap();
    let (af, _) = archive(&work.path().join("t"), Some(&seed));
    assert!(!af.windows(12).any(|w| w == b"very-private"));
    let (plain, _) = archive(&work.path().join("t"), None);
    let file = AfFile::open(as_file(&plain), None, &Limits::default()).unwrap();
    let listing = list(&file, &Limits::default()).unwrap();
    assert_eq!(
        listing.table.entries[1].path,
        Path::new("very-private-name.txt")
    );
}

#[test]
fn one_entry_restores_read_only_that_entry() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    sample_tree(&src);
    let (af, _) = archive(&src, None);
    let file = AfFile::open(as_file(&af), None, &Limits::default()).unwrap();
    let dest = work.path().join("one");
    extract_path(
        &file,
        Path::new("docs/big.txt"),
        &dest,
        &extract_options(None, false),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        fs::read(dest.join("docs/big.txt")).unwrap(),
        noise(50_000, 1)
    );
    assert!(!dest.join("docs/a.txt").exists());
    // A folder comes with everything beneath it; an existing entry needs --force.
    extract_path(
        &file,
        Path::new("docs"),
        &work.path().join("two"),
        &extract_options(None, false),
        &NoProgress,
    )
    .unwrap();
    assert!(work.path().join("two/docs/empty").is_dir());
    let again = extract_path(
        &file,
        Path::new("docs/big.txt"),
        &dest,
        &extract_options(None, false),
        &NoProgress,
    );
    assert!(matches!(again, Err(Error::InvalidArgument(_))), "{again:?}");
    extract_path(
        &file,
        Path::new("docs/big.txt"),
        &dest,
        &extract_options(None, true),
        &NoProgress,
    )
    .unwrap();
    // A hard link restored alone is a copy of its file.
    extract_path(
        &file,
        Path::new("hard.txt"),
        &dest,
        &extract_options(None, false),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("hard.txt")).unwrap(), b"alpha\n");
    assert!(extract_path(
        &file,
        Path::new("../etc"),
        &dest,
        &extract_options(None, false),
        &NoProgress
    )
    .is_err());
}

#[test]
fn a_non_empty_destination_needs_force_and_then_is_merged() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    sample_tree(&src);
    let (af, _) = archive(&src, None);
    let dest = work.path().join("dest");
    fs::create_dir_all(dest.join("docs")).unwrap();
    fs::write(dest.join("keep.txt"), b"mine").unwrap();
    fs::write(dest.join("docs/a.txt"), b"old").unwrap();
    fs::create_dir(dest.join("link")).unwrap();
    let refused = extract_all(
        AfSource::File(as_file(&af)),
        &dest,
        &extract_options(None, false),
        &NoProgress,
    );
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(fs::read(dest.join("docs/a.txt")).unwrap(), b"old");
    extract_all(
        AfSource::File(as_file(&af)),
        &dest,
        &extract_options(None, true),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("docs/a.txt")).unwrap(), b"alpha\n");
    assert_eq!(fs::read(dest.join("keep.txt")).unwrap(), b"mine");
    assert!(fs::symlink_metadata(dest.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

fn unreadable_secret(path: &Path) -> std::io::Result<fs::File> {
    if path.to_string_lossy().contains("secret") {
        return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
    }
    aetherflow_engine::archive::open_no_follow(path)
}

#[test]
fn unreadable_files_are_reported_and_the_rest_archived() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    sample_tree(&src);
    fs::write(src.join("docs/secret-small"), b"hidden").unwrap();
    fs::write(src.join("secret-large"), noise(20_000, 9)).unwrap();
    let reset_dir_times = || {
        set_mtime(&src.join("docs"), 1_000_005_000);
        set_mtime(&src, 1_000_006_000);
    };
    reset_dir_times();
    let mut af = Vec::new();
    let opts = ArchiveOptions {
        open: unreadable_secret,
        ..options(None)
    };
    let summary = archive_directory(&src, &mut af, &opts, &NoProgress).unwrap();
    assert!(summary.is_partial());
    let mut names: Vec<_> = summary
        .unreadable
        .iter()
        .map(|i| i.path.display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["docs/secret-small", "secret-large"]);
    let dest = work.path().join("dest");
    let restored = extract_all(
        AfSource::File(as_file(&af)),
        &dest,
        &extract_options(None, false),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(restored.not_restored.len(), 2);
    assert!(!dest.join("secret-large").exists() && !dest.join("docs/secret-small").exists());
    fs::remove_file(src.join("docs/secret-small")).unwrap();
    fs::remove_file(src.join("secret-large")).unwrap();
    reset_dir_times();
    assert_eq!(snapshot(&src), snapshot(&dest));
}

// ---- hostile archives, written with the format's own writer ----

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        path: PathBuf::from(path),
        kind,
        mode: 0o644,
        mtime: Mtime::default(),
    }
}

/// An archive holding exactly `entries` (unvalidated) and `data`.
fn crafted(entries: &[Entry], data: &[u8]) -> Vec<u8> {
    let table = encode_table(entries, None);
    let mac: [u8; 32] = table[table.len() - 32..].try_into().unwrap();
    let content = [table, data.to_vec(), encode_amendments(&[], &mac, None)].concat();
    let mut out = Vec::new();
    let opts = CompressOptions {
        chunking: CHUNKS,
        archive: true,
        ..CompressOptions::default()
    };
    compress(Source::from_bytes(&content), &mut out, &opts, &NoProgress).unwrap();
    out
}

#[test]
fn archives_that_try_to_leave_the_destination_are_refused_and_write_nothing() {
    let root = || entry("", EntryKind::Directory);
    let file = |p: &str| entry(p, EntryKind::File { size: 4 });
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("parent", vec![root(), file("../escaped")]),
        (
            "named like the parent",
            vec![
                root(),
                entry("..", EntryKind::Directory),
                file("../escaped"),
            ],
        ),
        ("absolute", vec![root(), file("/tmp/escaped")]),
        (
            "through a symlink",
            vec![
                root(),
                entry(
                    "l",
                    EntryKind::Symlink {
                        target: "..".into(),
                    },
                ),
                file("l/escaped"),
            ],
        ),
        ("duplicate", vec![root(), file("twice"), file("twice")]),
        (
            "dot",
            vec![root(), entry(".", EntryKind::Directory), file("./escaped")],
        ),
    ];
    let work = tempfile::tempdir().unwrap();
    for (name, entries) in cases {
        let data = b"evil".repeat(entries.len() - 1);
        let af = crafted(&entries, &data);
        let dest = work.path().join("inner/dest");
        fs::create_dir_all(work.path().join("inner")).unwrap();
        let result = extract_all(
            AfSource::File(as_file(&af)),
            &dest,
            &extract_options(None, false),
            &NoProgress,
        );
        assert!(
            matches!(result, Err(Error::Corrupt(_))),
            "{name}: {result:?}"
        );
        let left: Vec<_> = fs::read_dir(work.path().join("inner"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{name} left {left:?}");
        assert!(
            !work.path().join("escaped").exists() && !Path::new("/tmp/escaped").exists(),
            "{name}"
        );
        let opened = AfFile::open(as_file(&af), None, &Limits::default()).unwrap();
        assert!(list(&opened, &Limits::default()).is_err(), "{name} listed");
    }
}

#[test]
fn damage_names_the_entry_and_earlier_entries_still_restore() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a-first"), noise(30_000, 3)).unwrap();
    fs::write(src.join("b-second"), noise(30_000, 4)).unwrap();
    fs::write(src.join("c-third"), noise(30_000, 5)).unwrap();
    let (af, _) = archive(&src, None);
    // Flip a byte in the middle of the last file's data: well after the first files' chunks.
    let opened = AfFile::open(as_file(&af), None, &Limits::default()).unwrap();
    let listing = list(&opened, &Limits::default()).unwrap();
    let third = listing.data_start + listing.table.offsets[3] + 15_000;
    let mut flipped = af.clone();
    let at = record_offset_of(&af, third);
    flipped[at + 100] ^= 0x10;
    let result = extract_all(
        AfSource::File(as_file(&flipped)),
        &work.path().join("d1"),
        &extract_options(None, false),
        &NoProgress,
    );
    match result {
        Err(Error::Corrupt(what)) => assert!(what.contains("c-third"), "{what}"),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(!work.path().join("d1").exists());
    let damaged = AfFile::open(as_file(&flipped), None, &Limits::default()).unwrap();
    extract_path(
        &damaged,
        Path::new("a-first"),
        &work.path().join("d2"),
        &extract_options(None, false),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        fs::read(work.path().join("d2/a-first")).unwrap(),
        noise(30_000, 3)
    );
    let third = extract_path(
        &damaged,
        Path::new("c-third"),
        &work.path().join("d3"),
        &extract_options(None, false),
        &NoProgress,
    );
    assert!(
        matches!(&third, Err(Error::Corrupt(w)) if w.contains("c-third")),
        "{third:?}"
    );

    // Truncated in the last file: the trailer is gone, the records before the cut are not.
    let cut = &af[..at + 50];
    assert!(AfFile::open(as_file(cut), None, &Limits::default()).is_err());
    let salvaged = AfFile::salvage(as_file(cut), None, &Limits::default()).unwrap();
    extract_path(
        &salvaged,
        Path::new("b-second"),
        &work.path().join("d4"),
        &extract_options(None, false),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        fs::read(work.path().join("d4/b-second")).unwrap(),
        noise(30_000, 4)
    );
}

/// File offset of the data record that holds content offset `logical`.
fn record_offset_of(af: &[u8], logical: u64) -> usize {
    use aetherflow_engine::format::index::Index;
    use aetherflow_engine::format::trailer::{Trailer, FIXED_END};
    let len = Trailer::len_from_end(af[af.len() - FIXED_END..].try_into().unwrap()).unwrap();
    let trailer = Trailer::decode(&af[af.len() - len..], false).unwrap();
    let start = trailer.index_offset as usize;
    let index = Index::decode(&af[start..start + trailer.index_len as usize], None).unwrap();
    let entry = index.entries[index.entry_at(logical).unwrap()];
    assert!(entry.kind == 2 || entry.kind == 3, "{entry:?}");
    entry.location as usize
}
