//! Walking a directory into entries, before any file is read.
//!
//! The walk decides the whole entry table up front (so the table can lead the content): order
//! (pre-order, names sorted bytewise, so parents precede children and output is reproducible),
//! types, modes, times, sizes and hard links. Symlinks are recorded, never followed; sockets,
//! FIFOs and devices are skipped with a warning.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::format::entry_table::{Entry, EntryKind, Mtime};

/// A regular file to read, in table order.
#[derive(Debug, Clone)]
pub(crate) struct FileSource {
    /// Its index in the entry table.
    pub entry: usize,
    /// Where to read it (the walked directory joined with the entry's path).
    pub path: PathBuf,
    /// Size at walk time: exactly this many bytes go into the content.
    pub size: u64,
    /// Fewer blocks than its size needs: read by extents, so that holes stay holes.
    pub sparse: bool,
}

/// Something left out of the archive, or not archived in full.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    /// Path relative to the archived directory.
    #[serde(serialize_with = "crate::archive::serialize_path")]
    pub path: PathBuf,
    pub reason: String,
}

/// The result of a walk.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    pub entries: Vec<Entry>,
    pub files: Vec<FileSource>,
    /// Sockets, FIFOs and devices: not archivable, skipped by design.
    pub skipped: Vec<Issue>,
    /// Directories that could not be listed, entries that could not be examined: the archive
    /// lacks them, and is partial.
    pub unreadable: Vec<Issue>,
}

/// Walks `root`, leaving out relative paths for which `exclude` is true (with all beneath them).
pub(crate) fn walk(root: &Path, exclude: &dyn Fn(&Path) -> bool) -> Result<Walked> {
    // The root itself is followed if it is a symlink: it is what the user named.
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{}: not a directory", root.display()),
        )
        .into());
    }
    let mut walked = Walked::default();
    walked
        .entries
        .push(entry(PathBuf::new(), EntryKind::Directory, &meta));
    let mut links = HashMap::new();
    walk_dir(root, Path::new(""), exclude, &mut walked, &mut links);
    Ok(walked)
}

fn entry(path: PathBuf, kind: EntryKind, meta: &Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: meta.mode() & 0o7777,
        mtime: Mtime {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        },
    }
}

fn walk_dir(
    root: &Path,
    rel: &Path,
    exclude: &dyn Fn(&Path) -> bool,
    walked: &mut Walked,
    links: &mut HashMap<(u64, u64), usize>,
) {
    let dir = root.join(rel);
    let mut children: Vec<(std::ffi::OsString, Metadata)> = Vec::new();
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) => {
            walked.unreadable.push(Issue {
                path: rel.to_path_buf(),
                reason: format!("cannot list the directory: {e}"),
            });
            return;
        }
    };
    for item in listing {
        let examined = item.and_then(|item| Ok((item.file_name(), item.metadata()?)));
        match examined {
            Ok(child) => children.push(child),
            Err(e) => walked.unreadable.push(Issue {
                path: rel.to_path_buf(),
                reason: format!("cannot list the directory in full: {e}"),
            }),
        }
    }
    children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, meta) in children {
        let path = rel.join(&name);
        if exclude(&path) {
            continue;
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            walked
                .entries
                .push(entry(path.clone(), EntryKind::Directory, &meta));
            walk_dir(root, &path, exclude, walked, links);
        } else if kind.is_file() {
            let index = walked.entries.len();
            if meta.nlink() > 1 {
                if let Some(&first) = links.get(&(meta.dev(), meta.ino())) {
                    let target = EntryKind::HardLink {
                        target: first as u64,
                    };
                    walked.entries.push(entry(path, target, &meta));
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), index);
            }
            walked.files.push(FileSource {
                entry: index,
                path: root.join(&path),
                size: meta.len(),
                sparse: meta.blocks().saturating_mul(512) < meta.len(),
            });
            let file = EntryKind::File { size: meta.len() };
            walked.entries.push(entry(path, file, &meta));
        } else if kind.is_symlink() {
            match fs::read_link(root.join(&path)) {
                Ok(target) if !target.as_os_str().is_empty() => {
                    walked
                        .entries
                        .push(entry(path, EntryKind::Symlink { target }, &meta));
                }
                Ok(_) => walked.skipped.push(Issue {
                    path,
                    reason: "symlink with an empty target".into(),
                }),
                Err(e) => walked.unreadable.push(Issue {
                    path,
                    reason: format!("cannot read the link: {e}"),
                }),
            }
        } else {
            let what = if kind.is_socket() {
                "socket"
            } else if kind.is_fifo() {
                "FIFO"
            } else if kind.is_block_device() {
                "block device"
            } else if kind.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            walked.skipped.push(Issue {
                path,
                reason: format!("{what} skipped: only files, folders and symlinks are archived"),
            });
        }
    }
}
