//! Directory archives: a whole tree in one `.af` file, deduplicated across files, restored
//! exactly (contents, modes, times, symlinks, hard links, holes).
//!
//! | module | idea |
//! |---|---|
//! | [`walk`] | the tree to entries, decided before any file is read |
//! | [`reader`] | the files' bytes as stretches for the compression pipeline |
//! | [`create`] | [`archive_directory`]: walk, table, pipeline |
//! | [`restore`] | putting entries on disk through a staging folder, never outside it |
//! | [`extract`] | listing, whole restores through the pipeline, one-entry restores by index |
//!
//! The byte layout of the entry table is in [`crate::format::entry_table`].

pub mod create;
pub mod extract;
pub mod reader;
mod restore;
pub mod walk;

pub use create::{archive_directory, ArchiveOptions, ArchiveSummary};
pub use extract::{
    extract_all, extract_path, list, ArchiveListing, ExtractOptions, ExtractSummary,
};
pub use reader::{open_no_follow, OpenFile};
pub use walk::Issue;

pub(crate) fn serialize_path<S: serde::Serializer>(
    path: &std::path::Path,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}
