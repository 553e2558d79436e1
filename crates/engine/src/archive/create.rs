//! `archive_directory`: walk, table, then the compression pipeline over the files' bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::reader::{open_no_follow, ArchiveReader, OpenFile, ReadReport};
use super::walk::{walk, Issue};
use crate::compress::{compress_keyed, CompressOptions, CompressSummary, Source};
use crate::error::Result;
use crate::format::entry_table::{encode_table, Amendment, EntryKind};
use crate::progress::Progress;

/// How to archive a directory.
pub struct ArchiveOptions<'a> {
    /// Level, threads, seed, chunking: as for a single file (the archive flag is set here).
    pub compress: CompressOptions<'a>,
    /// Relative paths to leave out, with everything beneath them.
    pub exclude: &'a (dyn Fn(&Path) -> bool + Sync),
    /// How files are opened; see [`OpenFile`].
    pub open: OpenFile,
}

impl std::fmt::Debug for ArchiveOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveOptions")
            .field("compress", &self.compress)
            .finish_non_exhaustive()
    }
}

impl Default for ArchiveOptions<'_> {
    fn default() -> Self {
        ArchiveOptions {
            compress: CompressOptions::default(),
            exclude: &|_| false,
            open: open_no_follow,
        }
    }
}

/// What was archived, and what was not.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSummary {
    #[serde(flatten)]
    pub compress: CompressSummary,
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Bytes of the regular files (each hard-linked file once).
    pub file_bytes: u64,
    /// Sockets, FIFOs and devices, left out by design.
    pub skipped: Vec<Issue>,
    /// Entries that could not be read (or listed) and are missing from the archive.
    pub unreadable: Vec<Issue>,
    /// Files that changed size while being read: archived as read.
    pub changed: Vec<Issue>,
}

impl ArchiveSummary {
    /// True when something that should be in the archive is not, or not as it was listed.
    pub fn is_partial(&self) -> bool {
        !self.unreadable.is_empty() || !self.changed.is_empty()
    }
}

/// Archives the tree at `dir` into `out` as one `.af` directory archive.
///
/// Unreadable entries are reported (through `progress.warn` and the summary) and the rest is
/// archived; only failures to write `out`, or to read `dir` itself, are errors.
pub fn archive_directory(
    dir: &Path,
    out: &mut impl Write,
    options: &ArchiveOptions<'_>,
    progress: &dyn Progress,
) -> Result<ArchiveSummary> {
    let walked = walk(dir, options.exclude)?;
    for issue in walked.skipped.iter().chain(&walked.unreadable) {
        progress.warn(&format!("{}: {}", issue.path.display(), issue.reason));
    }
    let file_bytes: u64 = walked.files.iter().map(|f| f.size).sum();
    progress.set_entries(walked.entries.len() as u64);
    progress.set_total(file_bytes);
    let report = Mutex::new(ReadReport::default());
    let o = &options.compress;
    let compress = CompressOptions {
        level: o.level,
        threads: o.threads,
        chunking: o.chunking,
        seed: o.seed,
        kdf: o.kdf,
        salt: o.salt,
        archive: true,
    };
    let own_threshold = u64::from(compress.chunking.min);
    let summary = compress_keyed(
        |keys| {
            let table = encode_table(&walked.entries, keys.as_deref());
            Ok(Source::Stretches(Box::new(ArchiveReader::new(
                &walked.entries,
                &walked.files,
                table,
                keys,
                options.open,
                own_threshold,
                progress,
                &report,
            ))))
        },
        out,
        &compress,
        progress,
    )?;
    let count = |f: fn(&EntryKind) -> bool| walked.entries.iter().filter(|e| f(&e.kind)).count();
    let report = report.into_inner().expect("report lock");
    let (mut unreadable, mut changed) = (walked.unreadable, Vec::new());
    for (entry, why, detail) in report.amendments {
        let issue = Issue {
            path: PathBuf::from(&walked.entries[entry as usize].path),
            reason: detail,
        };
        match why {
            Amendment::Unreadable => unreadable.push(issue),
            Amendment::Changed => changed.push(issue),
        }
    }
    Ok(ArchiveSummary {
        compress: summary,
        directories: count(|k| matches!(k, EntryKind::Directory)) as u64,
        files: count(|k| matches!(k, EntryKind::File { .. })) as u64,
        symlinks: count(|k| matches!(k, EntryKind::Symlink { .. })) as u64,
        hard_links: count(|k| matches!(k, EntryKind::HardLink { .. })) as u64,
        file_bytes,
        skipped: walked.skipped,
        unreadable,
        changed,
    })
}
