//! Reading a directory archive back: listing it, restoring it whole, restoring one entry.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::restore::{open_dirs_beneath, open_user_dir, Restorer, TOP};
use super::walk::Issue;
use crate::afile::{AfFile, RangePiece};
use crate::crypto::Keys;
use crate::decompress::{
    decompress, AfSource, ContentSink, DecompressOptions, DecompressSummary, Sink,
};
use crate::error::{Error, Result};
use crate::format::entry_table::{
    decode_amendments, decode_table, table_len, Amendment, EntryKind, EntryTable, TABLE_PREFIX_LEN,
};
use crate::format::Limits;
use crate::progress::Progress;

mod sink;

use sink::RestoreSink;

/// How to restore.
#[derive(Debug, Default)]
pub struct ExtractOptions<'a> {
    pub decompress: DecompressOptions<'a>,
    /// Overwrite what is in the way in a non-empty destination (merging folders).
    pub force: bool,
}

/// What was restored.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractSummary {
    pub entries: u64,
    pub file_bytes: u64,
    /// Entries the archive could not read when it was made: not restored.
    pub not_restored: Vec<Issue>,
    /// Entries that changed while archived: restored as they were read.
    pub changed: Vec<Issue>,
    /// The whole-content check of a full restore (`None` for `--path`).
    pub decompress: Option<DecompressSummary>,
}

/// A directory archive's table and amendments, read through the index.
#[derive(Debug, Clone)]
pub struct ArchiveListing {
    pub table: EntryTable,
    /// Where file data starts in the content (the table's length).
    pub data_start: u64,
    pub amendments: Vec<(u64, Amendment)>,
}

/// Reads the entry table and the amendments of an archive opened with its seed: the first and
/// last chunks of the content, nothing else.
pub fn list(af: &AfFile, limits: &Limits) -> Result<ArchiveListing> {
    if !af.header().archive {
        return Err(Error::InvalidArgument("not a directory archive".into()));
    }
    let prefix = af.read_range(0, TABLE_PREFIX_LEN)?;
    let len = table_len(&prefix, limits.max_table_bytes)?;
    let bytes = af.read_range(0, len as usize)?;
    if bytes.len() as u64 != len {
        return Err(Error::corrupt("content ends inside the entry table"));
    }
    let table = decode_table(&bytes, af.keys())?;
    let data_end = data_end(&table, len)?;
    let amendments = match af.logical_bytes().checked_sub(data_end) {
        Some(n) if n <= limits.max_table_bytes => {
            let bytes = af.read_range(data_end, n as usize)?;
            decode_amendments(&bytes, &table, af.keys())?
        }
        Some(_) => {
            return Err(Error::LimitExceeded(
                "amendments over the reader's limit".into(),
            ))
        }
        // Only a salvaged (truncated) file ends before its last entry: the entries before the
        // cut can still be restored, and the amendments are lost with the rest.
        None => Vec::new(),
    };
    Ok(ArchiveListing {
        table,
        data_start: len,
        amendments,
    })
}

fn data_end(table: &EntryTable, start: u64) -> Result<u64> {
    let last = table.entries.len() - 1;
    table.offsets[last]
        .checked_add(table.entries[last].data_len())
        .and_then(|n| n.checked_add(start))
        .ok_or_else(|| Error::corrupt("file sizes overflow"))
}

/// Which entries a restore writes, and where under the staging directory.
struct Plan {
    /// (entry index, staged path), in table order.
    items: Vec<(usize, PathBuf)>,
}

impl Plan {
    fn whole(table: &EntryTable) -> Plan {
        let items = table
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, Path::new(TOP).join(&e.path)))
            .collect();
        Plan { items }
    }

    /// Entry `root` at the top, and everything beneath it when it is a directory.
    fn subtree(table: &EntryTable, root: usize) -> Plan {
        let base = table.entries[root].path.as_os_str().as_bytes();
        let mut items = vec![(root, PathBuf::from(TOP))];
        if matches!(table.entries[root].kind, EntryKind::Directory) {
            for (i, e) in table.entries.iter().enumerate().skip(root + 1) {
                let path = e.path.as_os_str().as_bytes();
                if let Some(rest) = path.strip_prefix(base).and_then(|r| r.strip_prefix(b"/")) {
                    items.push((i, Path::new(TOP).join(std::ffi::OsStr::from_bytes(rest))));
                }
            }
        }
        Plan { items }
    }

    /// Directories and symlinks, before any content.
    fn prepare(&self, table: &EntryTable, restorer: &Restorer) -> Result<()> {
        for (i, staged) in &self.items {
            let e = &table.entries[*i];
            match &e.kind {
                EntryKind::Directory => restorer.mkdir(staged)?,
                EntryKind::Symlink { target } => restorer.symlink(staged, target, e.mtime)?,
                EntryKind::File { .. } | EntryKind::HardLink { .. } => {}
            }
        }
        Ok(())
    }

    /// After the content: drop unreadable files, make hard links, set folders' modes and times
    /// (deepest first, so that a read-only folder is finished last), and move into place.
    fn finish(
        &self,
        table: &EntryTable,
        amendments: &[(u64, Amendment)],
        restorer: Restorer,
        progress: &dyn Progress,
    ) -> Result<ExtractSummary> {
        let staged: HashMap<usize, &Path> =
            self.items.iter().map(|(i, p)| (*i, p.as_path())).collect();
        let mut summary = ExtractSummary {
            entries: 0,
            file_bytes: 0,
            not_restored: Vec::new(),
            changed: Vec::new(),
            decompress: None,
        };
        let mut unreadable = std::collections::HashSet::new();
        for &(entry, why) in amendments {
            let Some(path) = staged.get(&(entry as usize)) else {
                continue;
            };
            let issue = Issue {
                path: table.entries[entry as usize].path.clone(),
                reason: match why {
                    Amendment::Unreadable => "could not be read when archived".into(),
                    Amendment::Changed => "changed while it was archived".into(),
                },
            };
            progress.warn(&format!("{}: {}", issue.path.display(), issue.reason));
            if why == Amendment::Unreadable {
                restorer.remove_file(path)?;
                unreadable.insert(entry as usize);
                summary.not_restored.push(issue);
            } else {
                summary.changed.push(issue);
            }
        }
        for (i, path) in &self.items {
            let e = &table.entries[*i];
            match e.kind {
                EntryKind::HardLink { target } if !unreadable.contains(&(target as usize)) => {
                    if let Some(existing) = staged.get(&(target as usize)) {
                        restorer.hard_link(existing, path)?;
                    }
                    progress.entry(&e.path, 0);
                }
                EntryKind::Directory | EntryKind::Symlink { .. } => progress.entry(&e.path, 0),
                _ => {}
            }
            if !unreadable.contains(i) {
                summary.entries += 1;
                summary.file_bytes += e.data_len();
            }
        }
        let mut dirs: Vec<(usize, &Path)> = self
            .items
            .iter()
            .filter(|(i, _)| matches!(table.entries[*i].kind, EntryKind::Directory))
            .map(|(i, p)| (*i, p.as_path()))
            .collect();
        dirs.reverse();
        for (i, path) in &dirs {
            let e = &table.entries[*i];
            restorer.set_dir_meta(path, e.mode, e.mtime)?;
        }
        let meta: HashMap<&Path, (u32, crate::format::entry_table::Mtime)> = dirs
            .iter()
            .map(|(i, p)| {
                let rel = p.strip_prefix(TOP).unwrap_or(p);
                (rel, (table.entries[*i].mode, table.entries[*i].mtime))
            })
            .collect();
        restorer.place(&|rel| meta.get(rel).copied())?;
        Ok(summary)
    }
}

/// Where a whole restore goes: the parent of `dest` and its name.
fn whole_target(dest: &Path, force: bool) -> Result<Restorer> {
    let resolved = if dest.exists() {
        dest.canonicalize()?
    } else {
        dest.to_path_buf()
    };
    let name = resolved
        .file_name()
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{}: cannot restore into this path", dest.display()))
        })?
        .to_os_string();
    let parent = open_user_dir(resolved.parent().unwrap_or(Path::new(".")))?;
    Restorer::new(parent, name, dest.to_path_buf(), true, force)
}

/// Restores a whole archive into `dest` (created; if it exists it must be an empty folder,
/// unless `force`). The content streams through the decompression pipeline once; the table
/// at its start is validated before anything is created, and the staged tree takes `dest`'s
/// name only after the whole content's SHA-256 has been verified.
pub fn extract_all(
    source: AfSource,
    dest: &Path,
    options: &ExtractOptions<'_>,
    progress: &dyn Progress,
) -> Result<ExtractSummary> {
    let restorer = whole_target(dest, options.force)?;
    let mut sink = RestoreSink {
        restorer: &restorer,
        limits: options.decompress.limits,
        keys: None,
        buffer: Vec::new(),
        table: None,
        plan: None,
        data_start: 0,
        files: Vec::new(),
        next: 0,
        open: None,
        progress,
    };
    let summary = decompress(
        source,
        Sink::Content(&mut sink),
        &options.decompress,
        progress,
    )?;
    let (table, plan, amendments) = sink.close()?;
    let mut result = plan.finish(&table, &amendments, restorer, progress)?;
    result.decompress = Some(summary);
    Ok(result)
}

/// Restores the entry at `rel` (and, for a folder, everything beneath it) to `dest/rel`,
/// reading only the table and that entry's chunks.
pub fn extract_path(
    af: &AfFile,
    rel: &Path,
    dest: &Path,
    options: &ExtractOptions<'_>,
    progress: &dyn Progress,
) -> Result<ExtractSummary> {
    let wanted: PathBuf = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if wanted.as_os_str().is_empty()
        || wanted
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidArgument(format!(
            "--path {}: give a path inside the archive, as `stats` lists it",
            rel.display()
        )));
    }
    let listing = list(af, &options.decompress.limits)?;
    let table = &listing.table;
    let root = table
        .entries
        .iter()
        .position(|e| e.path == wanted)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: no such entry in the archive",
                wanted.display()
            ))
        })?;
    std::fs::create_dir_all(dest)?;
    let parent = open_dirs_beneath(
        open_user_dir(dest)?,
        wanted.parent().unwrap_or(Path::new("")),
        dest,
    )?;
    let name = wanted
        .file_name()
        .expect("a normal last component")
        .to_os_string();
    let is_dir = matches!(table.entries[root].kind, EntryKind::Directory);
    let restorer = Restorer::new(parent, name, dest.join(&wanted), is_dir, options.force)?;
    let plan = Plan::subtree(table, root);
    plan.prepare(table, &restorer)?;
    let staged: std::collections::HashSet<usize> = plan.items.iter().map(|(i, _)| *i).collect();
    for (i, path) in &plan.items {
        let e = &table.entries[*i];
        // A hard link whose file is not restored with it becomes a copy of that file.
        let data_entry = match e.kind {
            EntryKind::File { .. } => *i,
            EntryKind::HardLink { target } if !staged.contains(&(target as usize)) => {
                target as usize
            }
            _ => continue,
        };
        let size = table.entries[data_entry].data_len();
        let file = restorer.create_file(path)?;
        let mut at = 0u64;
        af.visit_range(
            listing.data_start + table.offsets[data_entry],
            size,
            &mut |piece| {
                match piece {
                    RangePiece::Bytes(bytes) => {
                        file.write_all_at(bytes, at)?;
                        at += bytes.len() as u64;
                    }
                    RangePiece::Zeros(n) => at += n,
                }
                Ok(())
            },
        )
        .map_err(|err| match err {
            Error::Corrupt(what) => {
                Error::Corrupt(format!("{what}, in entry {}", e.path.display()))
            }
            other => other,
        })?;
        if at != size {
            return Err(Error::corrupt(format!(
                "content ends inside entry {}",
                e.path.display()
            )));
        }
        restorer.finish_file(&file, path, size, e.mode, e.mtime)?;
        progress.entry(&e.path, size);
    }
    plan.finish(table, &listing.amendments, restorer, progress)
}
