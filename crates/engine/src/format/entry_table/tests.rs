//! The entry table's round trips, flips and hostile tables.

use super::*;

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        path: PathBuf::from(path),
        kind,
        mode: 0o644,
        mtime: Mtime {
            secs: -5,
            nanos: 999_999_999,
        },
    }
}

fn sample() -> Vec<Entry> {
    vec![
        entry("", EntryKind::Directory),
        entry("a", EntryKind::Directory),
        entry("a/f", EntryKind::File { size: 10 }),
        entry("a/g", EntryKind::HardLink { target: 2 }),
        entry(
            "l",
            EntryKind::Symlink {
                target: PathBuf::from("../outside"),
            },
        ),
        entry("z", EntryKind::File { size: 0 }),
        entry("y", EntryKind::File { size: 7 }),
    ]
}

#[test]
fn round_trip_with_offsets_and_every_flip_caught() {
    let bytes = encode_table(&sample(), None);
    let len = table_len(&bytes[..TABLE_PREFIX_LEN], 1 << 20).unwrap();
    assert_eq!(len, bytes.len() as u64);
    let table = decode_table(&bytes, None).unwrap();
    assert_eq!(table.entries, sample());
    assert_eq!(table.offsets, vec![0, 0, 0, 10, 10, 10, 10]);
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_table(&bad, None).is_err(), "bit {bit}");
    }
    assert!(table_len(&bytes[..TABLE_PREFIX_LEN], 10).is_err());
}

#[test]
fn seeded_tables_need_their_key() {
    let keys = Keys::derive(
        &crate::Seed::new("t").unwrap(),
        &[1; 16],
        crate::KdfParams::MINIMUM,
    )
    .unwrap();
    let bytes = encode_table(&sample(), Some(&keys));
    assert!(decode_table(&bytes, Some(&keys)).is_ok());
    assert!(decode_table(&bytes, None).is_err());
    let table = decode_table(&bytes, Some(&keys)).unwrap();
    let notes = [(2, Amendment::Unreadable), (6, Amendment::Changed)];
    let am = encode_amendments(&notes, &table.mac, Some(&keys));
    assert_eq!(
        decode_amendments(&am, &table, Some(&keys)).unwrap(),
        notes.to_vec()
    );
    assert!(decode_amendments(&am, &table, None).is_err());
    let not_a_file = encode_amendments(&[(1, Amendment::Changed)], &table.mac, None);
    assert!(decode_amendments(
        &not_a_file,
        &decode_table(&encode_table(&sample(), None), None).unwrap(),
        None
    )
    .is_err());
}

#[test]
fn hostile_paths_are_refused() {
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "dotdot",
            vec![
                entry("", EntryKind::Directory),
                entry("..", EntryKind::Directory),
            ],
        ),
        (
            "dotdot inside",
            vec![
                entry("", EntryKind::Directory),
                entry("a/../b", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "absolute",
            vec![
                entry("", EntryKind::Directory),
                entry("/etc", EntryKind::Directory),
            ],
        ),
        (
            "dot",
            vec![
                entry("", EntryKind::Directory),
                entry(".", EntryKind::Directory),
            ],
        ),
        (
            "double slash",
            vec![
                entry("", EntryKind::Directory),
                entry("a", EntryKind::Directory),
                entry("a//b", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "trailing slash",
            vec![
                entry("", EntryKind::Directory),
                entry("a/", EntryKind::Directory),
            ],
        ),
        (
            "duplicate",
            vec![
                entry("", EntryKind::Directory),
                entry("a", EntryKind::File { size: 0 }),
                entry("a", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "through symlink",
            vec![
                entry("", EntryKind::Directory),
                entry(
                    "l",
                    EntryKind::Symlink {
                        target: "/etc".into(),
                    },
                ),
                entry("l/passwd", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "through file",
            vec![
                entry("", EntryKind::Directory),
                entry("f", EntryKind::File { size: 0 }),
                entry("f/x", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "missing parent",
            vec![
                entry("", EntryKind::Directory),
                entry("a/b", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "second root",
            vec![
                entry("", EntryKind::Directory),
                entry("", EntryKind::Directory),
            ],
        ),
        ("no root", vec![entry("a", EntryKind::Directory)]),
        (
            "root is a link",
            vec![entry("", EntryKind::Symlink { target: "/".into() })],
        ),
        (
            "link forward",
            vec![
                entry("", EntryKind::Directory),
                entry("h", EntryKind::HardLink { target: 2 }),
                entry("f", EntryKind::File { size: 0 }),
            ],
        ),
        (
            "link to dir",
            vec![
                entry("", EntryKind::Directory),
                entry("h", EntryKind::HardLink { target: 0 }),
            ],
        ),
        (
            "nul",
            vec![
                entry("", EntryKind::Directory),
                entry("a\0b", EntryKind::File { size: 0 }),
            ],
        ),
    ];
    for (name, entries) in cases {
        assert!(validate(&entries).is_err(), "{name} was accepted");
        // The decoder validates too: a writer cannot smuggle these past a reader.
        let bytes = encode_table(&entries, None);
        assert!(decode_table(&bytes, None).is_err(), "{name} decoded");
    }
    assert!(validate(&sample()).is_ok());
}

#[test]
fn zigzag_round_trips() {
    for v in [0i64, 1, -1, i64::MAX, i64::MIN, 1_700_000_000] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
}
