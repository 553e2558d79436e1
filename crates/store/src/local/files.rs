//! The local store's files behind a small interface, so that tests can put the store on a disk
//! that loses power (see [`crate::local::sim`]).
//!
//! A store has one index database and a folder of pack files. Everything the store relies on
//! for durability goes through here: [`PackFile::sync_data`] makes a file's bytes durable,
//! [`StoreFiles::sync_pack_names`] makes created and removed names durable, and the index is a
//! redb database on a backend whose `sync_data` means the same.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

use crate::error::Result;

/// One pack file.
pub trait PackFile: Send + Sync + Debug {
    /// Fills `buf` from `offset`; [`io::ErrorKind::UnexpectedEof`] past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (not durable until [`PackFile::sync_data`]).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every byte written so far durable.
    fn sync_data(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts the file (durable with the next [`PackFile::sync_data`]).
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// Where a store's files live.
pub trait StoreFiles: Send + Sync + Debug {
    /// Opens the index database, creating it if there is none.
    fn open_index(&self, builder: &redb::Builder) -> Result<Database>;
    /// Creates a pack file that must not exist yet.
    fn create_pack(&self, name: &str) -> io::Result<Arc<dyn PackFile>>;
    /// Opens a pack file; [`io::ErrorKind::NotFound`] if there is none.
    fn open_pack(&self, name: &str) -> io::Result<Arc<dyn PackFile>>;
    /// Removes a pack file (durable with the next [`StoreFiles::sync_pack_names`]).
    fn remove_pack(&self, name: &str) -> io::Result<()>;
    /// Names of every pack file.
    fn pack_names(&self) -> io::Result<Vec<String>>;
    /// Makes the pack files' names durable: those created and those removed so far.
    fn sync_pack_names(&self) -> io::Result<()>;
    /// Whether an index exists already (a store was created here).
    fn has_index(&self) -> bool;
}

/// The store's files on the operating system's filesystem: `DIR/index.redb`, `DIR/packs/*`.
#[derive(Debug)]
pub struct OsFiles {
    dir: PathBuf,
    packs: PathBuf,
}

impl OsFiles {
    /// Files under `dir`, which is created if missing.
    pub fn new(dir: &Path) -> io::Result<OsFiles> {
        let packs = dir.join("packs");
        fs::create_dir_all(&packs)?;
        Ok(OsFiles {
            dir: dir.to_path_buf(),
            packs,
        })
    }
}

#[derive(Debug)]
struct OsPack(File);

impl PackFile for OsPack {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl StoreFiles for OsFiles {
    fn open_index(&self, builder: &redb::Builder) -> Result<Database> {
        Ok(builder.create(self.dir.join("index.redb"))?)
    }

    fn create_pack(&self, name: &str) -> io::Result<Arc<dyn PackFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.packs.join(name))?;
        Ok(Arc::new(OsPack(file)))
    }

    fn open_pack(&self, name: &str) -> io::Result<Arc<dyn PackFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.packs.join(name))?;
        Ok(Arc::new(OsPack(file)))
    }

    fn remove_pack(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.packs.join(name))
    }

    fn pack_names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.packs)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn sync_pack_names(&self) -> io::Result<()> {
        File::open(&self.packs)?.sync_all()
    }

    fn has_index(&self) -> bool {
        self.dir.join("index.redb").exists()
    }
}
