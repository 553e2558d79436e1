//! Putting entries on disk, and nowhere else.
//!
//! Everything is built inside a fresh staging directory (mode 0700, made by us beside the
//! target), through descriptors and `*at` calls: files are created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, so nothing existing is ever opened or followed, and the validated table (no
//! `..`, nothing beneath a symlink) keeps every path inside the staging directory. Only when all
//! content is written and verified is the staged tree renamed to the target (or, with `force`,
//! merged into an existing one). A failure removes the staging directory: nothing half-written
//! appears under the target's name. Modes and times are set after contents, directories' last.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};

use crate::error::{Error, Result};
use crate::format::entry_table::Mtime;

/// Name of the staged tree inside the staging directory.
pub(crate) const TOP: &str = "top";

/// A staged restore into `target`.
#[derive(Debug)]
pub(crate) struct Restorer {
    /// The directory that receives the target.
    parent: OwnedFd,
    target_name: OsString,
    target_display: PathBuf,
    staging: OwnedFd,
    /// For removal on failure.
    staging_path: PathBuf,
    force: bool,
    placed: bool,
}

fn io_err(e: rustix::io::Errno, what: impl std::fmt::Display) -> Error {
    let e = io::Error::from(e);
    Error::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn open_dir(at: impl AsFd, name: &OsStr, display: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => Error::InvalidArgument(format!(
            "{}: exists and is not a directory (symlinks are not followed)",
            display.display()
        )),
        e => io_err(e, display.display()),
    })
}

/// True when the directory `name` in `at` has entries.
fn is_non_empty_dir(at: impl AsFd, name: &OsStr, display: &Path) -> Result<bool> {
    let fd = open_dir(at, name, display)?;
    Ok(!names_in(&fd, display)?.is_empty())
}

/// The names in a directory, `.` and `..` left out.
fn names_in(dir: &OwnedFd, display: &Path) -> Result<Vec<OsString>> {
    let listing = rustix::fs::Dir::read_from(dir).map_err(|e| io_err(e, display.display()))?;
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|e| io_err(e, display.display()))?;
        let name = item.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// What is at `name` in `at`, without following a symlink.
fn kind_at(at: impl AsFd, name: &OsStr) -> Option<rustix::fs::FileType> {
    rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
}

pub(crate) fn timestamps(mtime: Mtime) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.secs,
            tv_nsec: mtime.nanos.into(),
        },
    }
}

impl Restorer {
    /// Prepares a restore to `target` whose parent is the directory `parent` (already open).
    /// Refuses up front a target that exists and is not empty, unless `force`.
    pub(crate) fn new(
        parent: OwnedFd,
        target_name: OsString,
        target_display: PathBuf,
        target_is_dir: bool,
        force: bool,
    ) -> Result<Restorer> {
        match kind_at(&parent, &target_name) {
            None => {}
            Some(rustix::fs::FileType::Directory)
                if target_is_dir
                    && !force
                    && is_non_empty_dir(&parent, &target_name, &target_display)? =>
            {
                return Err(Error::InvalidArgument(format!(
                    "{}: not empty; restore into an empty or new folder, or give --force \
                     to overwrite what the archive holds",
                    target_display.display()
                )));
            }
            Some(rustix::fs::FileType::Directory) if target_is_dir => {}
            Some(_) if force && !target_is_dir => {}
            Some(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: already exists; give --force to overwrite it",
                    target_display.display()
                )))
            }
        }
        let mut suffix = [0u8; 6];
        getrandom::getrandom(&mut suffix)
            .map_err(|e| Error::Io(io::Error::other(format!("no system randomness: {e}"))))?;
        let staging_name = OsString::from(format!(
            ".{}.af-restore-{}",
            target_name.to_string_lossy(),
            crate::hex::encode(&suffix)
        ));
        rustix::fs::mkdirat(&parent, &staging_name, Mode::from_raw_mode(0o700)).map_err(|e| {
            io_err(
                e,
                format!("{}: cannot stage the restore", target_display.display()),
            )
        })?;
        let staging_path = target_display
            .parent()
            .unwrap_or(Path::new(""))
            .join(&staging_name);
        let staging = open_dir(&parent, &staging_name, &staging_path)?;
        Ok(Restorer {
            parent,
            target_name,
            target_display,
            staging,
            staging_path,
            force,
            placed: false,
        })
    }

    pub(crate) fn mkdir(&self, rel: &Path) -> Result<()> {
        rustix::fs::mkdirat(&self.staging, rel, Mode::from_raw_mode(0o700))
            .map_err(|e| io_err(e, self.shown(rel)))
    }

    pub(crate) fn symlink(&self, rel: &Path, target: &Path, mtime: Mtime) -> Result<()> {
        rustix::fs::symlinkat(target, &self.staging, rel)
            .map_err(|e| io_err(e, self.shown(rel)))?;
        rustix::fs::utimensat(
            &self.staging,
            rel,
            &timestamps(mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(e, self.shown(rel)))
    }

    pub(crate) fn create_file(&self, rel: &Path) -> Result<File> {
        let fd = rustix::fs::openat(
            &self.staging,
            rel,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err(e, self.shown(rel)))?;
        Ok(File::from(fd))
    }

    /// Completes a file: its length (trailing holes included), then mode and time.
    pub(crate) fn finish_file(
        &self,
        file: &File,
        rel: &Path,
        size: u64,
        mode: u32,
        mtime: Mtime,
    ) -> Result<()> {
        let shown = || self.shown(rel);
        file.set_len(size)
            .map_err(|e| Error::Io(io::Error::new(e.kind(), format!("{}: {e}", shown()))))?;
        rustix::fs::fchmod(file, Mode::from_raw_mode(mode)).map_err(|e| io_err(e, shown()))?;
        rustix::fs::futimens(file, &timestamps(mtime)).map_err(|e| io_err(e, shown()))
    }

    pub(crate) fn hard_link(&self, existing: &Path, rel: &Path) -> Result<()> {
        rustix::fs::linkat(
            &self.staging,
            existing,
            &self.staging,
            rel,
            AtFlags::empty(),
        )
        .map_err(|e| io_err(e, self.shown(rel)))
    }

    pub(crate) fn remove_file(&self, rel: &Path) -> Result<()> {
        rustix::fs::unlinkat(&self.staging, rel, AtFlags::empty())
            .map_err(|e| io_err(e, self.shown(rel)))
    }

    pub(crate) fn set_dir_meta(&self, rel: &Path, mode: u32, mtime: Mtime) -> Result<()> {
        rustix::fs::chmodat(
            &self.staging,
            rel,
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(|e| io_err(e, self.shown(rel)))?;
        rustix::fs::utimensat(
            &self.staging,
            rel,
            &timestamps(mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(e, self.shown(rel)))
    }

    /// The path a person knows for a staged `rel`: the target's.
    fn shown(&self, rel: &Path) -> String {
        let inner = rel.strip_prefix(TOP).unwrap_or(rel);
        self.target_display.join(inner).display().to_string()
    }

    /// Moves the staged tree to the target: a rename when the target is absent (or an empty
    /// folder), a merge with `force` otherwise. `dir_meta` gives the mode and time of each
    /// staged directory, for the merged ones.
    pub(crate) fn place(mut self, dir_meta: &dyn Fn(&Path) -> Option<(u32, Mtime)>) -> Result<()> {
        let top = OsStr::new(TOP);
        let renamed = rustix::fs::renameat(&self.staging, top, &self.parent, &self.target_name);
        match renamed {
            Ok(()) => {}
            Err(
                rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST | rustix::io::Errno::ISDIR,
            ) if self.force => {
                let from = open_dir(&self.staging, top, &self.staging_path)?;
                let into = open_dir(&self.parent, &self.target_name, &self.target_display)?;
                merge(&from, &into, Path::new(""), &self.target_display, dir_meta)?;
                if let Some((mode, mtime)) = dir_meta(Path::new("")) {
                    rustix::fs::fchmod(&into, Mode::from_raw_mode(mode))
                        .map_err(|e| io_err(e, self.target_display.display()))?;
                    rustix::fs::futimens(&into, &timestamps(mtime))
                        .map_err(|e| io_err(e, self.target_display.display()))?;
                }
            }
            Err(e) => return Err(io_err(e, self.target_display.display())),
        }
        self.placed = true;
        let _ = std::fs::remove_dir_all(&self.staging_path);
        Ok(())
    }
}

impl Drop for Restorer {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_dir_all(&self.staging_path);
        }
    }
}

/// Moves every entry of `from` into `into`, replacing what is there; directories present on both
/// sides are merged recursively and take the staged mode and time.
fn merge(
    from: &OwnedFd,
    into: &OwnedFd,
    rel: &Path,
    display: &Path,
    dir_meta: &dyn Fn(&Path) -> Option<(u32, Mtime)>,
) -> Result<()> {
    for name in names_in(from, display)? {
        let shown = display.join(&name);
        let staged_dir = kind_at(from, &name) == Some(rustix::fs::FileType::Directory);
        match kind_at(into, &name) {
            Some(rustix::fs::FileType::Directory) if staged_dir => {
                let sub_from = open_dir(from, &name, &shown)?;
                let sub_into = open_dir(into, &name, &shown)?;
                merge(&sub_from, &sub_into, &rel.join(&name), &shown, dir_meta)?;
                if let Some((mode, mtime)) = dir_meta(&rel.join(&name)) {
                    rustix::fs::fchmod(&sub_into, Mode::from_raw_mode(mode))
                        .map_err(|e| io_err(e, shown.display()))?;
                    rustix::fs::futimens(&sub_into, &timestamps(mtime))
                        .map_err(|e| io_err(e, shown.display()))?;
                }
                continue;
            }
            Some(rustix::fs::FileType::Directory) => {
                // A folder where the archive has a file or link: it goes, contents and all.
                let sub = open_dir(into, &name, &shown)?;
                remove_tree(&sub, &shown)?;
                drop(sub);
                rustix::fs::unlinkat(into, &name, AtFlags::REMOVEDIR)
                    .map_err(|e| io_err(e, shown.display()))?;
            }
            Some(_) if staged_dir => {
                rustix::fs::unlinkat(into, &name, AtFlags::empty())
                    .map_err(|e| io_err(e, shown.display()))?;
            }
            _ => {}
        }
        rustix::fs::renameat(from, &name, into, &name).map_err(|e| io_err(e, shown.display()))?;
    }
    Ok(())
}

/// Empties the directory `dir` without following any symlink in it.
fn remove_tree(dir: &OwnedFd, display: &Path) -> Result<()> {
    for name in names_in(dir, display)? {
        let shown = display.join(&name);
        if kind_at(dir, &name) == Some(rustix::fs::FileType::Directory) {
            let sub = open_dir(dir, &name, &shown)?;
            remove_tree(&sub, &shown)?;
            rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR)
                .map_err(|e| io_err(e, shown.display()))?;
        } else {
            rustix::fs::unlinkat(dir, &name, AtFlags::empty())
                .map_err(|e| io_err(e, shown.display()))?;
        }
    }
    Ok(())
}

/// Opens (creating as needed, mode 0755) each directory of `rel` beneath `base`, one component
/// at a time and never through a symlink, so that `--path a/b/c` cannot be steered outside the
/// destination by a link already there. Returns the innermost one.
pub(crate) fn open_dirs_beneath(base: OwnedFd, rel: &Path, display: &Path) -> Result<OwnedFd> {
    let mut dir = base;
    let mut shown = display.to_path_buf();
    for part in rel.components() {
        let name = part.as_os_str();
        shown.push(name);
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err(e, shown.display())),
        }
        dir = open_dir(&dir, name, &shown)?;
    }
    Ok(dir)
}

/// Opens the directory at `path` (following symlinks: it is the user's own argument).
pub(crate) fn open_user_dir(path: &Path) -> Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e, path.display()))
}
