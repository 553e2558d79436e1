//! A disk in memory. For crash tests it keeps, for every file, what was written and what was
//! made durable, and [`SimDisk::power_loss`] gives a disk with only the durable part; as the
//! store of `--memory` ([`SimDisk::volatile`]) it keeps only what was written.
//!
//! A killed process keeps the page cache, so killing one cannot catch a missing `fsync`; losing
//! power does. The model is pessimistic: a write is lost unless its file was synced after it,
//! a new or removed pack name is undone unless the pack folder was synced after it. A disk can
//! also be made full, so that writes fail as a full disk's do.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::{Database, StorageBackend};

use super::files::{PackFile, StoreFiles};
use crate::error::Result;

const INDEX: &str = "index.redb";

#[derive(Debug, Clone, Default)]
struct Contents {
    written: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// Every file ever created, by name (the index and packs), with both views of its bytes.
    files: BTreeMap<String, Contents>,
    /// Pack names as the running process sees them, and as they would survive a power loss.
    names: BTreeSet<String>,
    durable_names: BTreeSet<String>,
    /// Writes that grow a file fail with a full disk's error.
    full: bool,
    /// Nothing survives anyway: syncs keep no copy.
    volatile: bool,
}

/// A disk in memory, shared by clones. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn full() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "simulated disk is full")
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A disk whose contents are lost with the process (syncs cost nothing).
    pub fn volatile() -> SimDisk {
        let disk = SimDisk::default();
        lock(&disk.state).volatile = true;
        disk
    }

    /// What a restart after a power cut at this instant finds: a separate disk holding only
    /// what was durable. The process running on `self` may go on; nothing it does reaches it.
    pub fn power_loss(&self) -> SimDisk {
        let s = lock(&self.state);
        let mut files = BTreeMap::new();
        for (name, c) in &s.files {
            if name == INDEX || s.durable_names.contains(name) {
                files.insert(
                    name.clone(),
                    Contents {
                        written: c.durable.clone(),
                        durable: c.durable.clone(),
                    },
                );
            }
        }
        SimDisk {
            state: Arc::new(Mutex::new(State {
                files,
                names: s.durable_names.clone(),
                durable_names: s.durable_names.clone(),
                full: false,
                volatile: false,
            })),
        }
    }

    /// Makes writes that need more space fail (or succeed again).
    pub fn set_full(&self, full: bool) {
        lock(&self.state).full = full;
    }

    /// Bytes written to all files, as the running process sees them.
    pub fn bytes(&self) -> u64 {
        lock(&self.state)
            .files
            .values()
            .map(|c| c.written.len() as u64)
            .sum()
    }

    fn file(&self, name: &str) -> SimFile {
        SimFile {
            disk: self.clone(),
            name: name.to_string(),
        }
    }
}

/// One file of a [`SimDisk`]: a pack, or the index (as redb's storage backend).
#[derive(Debug, Clone)]
struct SimFile {
    disk: SimDisk,
    name: String,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut Contents, bool) -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.disk.state);
        let is_full = s.full;
        let contents = s
            .files
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file removed"))?;
        f(contents, is_full)
    }
}

fn read_at(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let end = start
        .checked_add(buf.len())
        .filter(|&e| e <= data.len())
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    buf.copy_from_slice(&data[start..end]);
    Ok(())
}

fn write_at(c: &mut Contents, is_full: bool, data: &[u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| full())?;
    let end = start + data.len();
    if end > c.written.len() {
        if is_full {
            return Err(full());
        }
        c.written.resize(end, 0);
    }
    c.written[start..end].copy_from_slice(data);
    Ok(())
}

impl PackFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|c, _| read_at(&c.written, buf, offset))
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|c, is_full| write_at(c, is_full, buf, offset))
    }
    fn sync_data(&self) -> io::Result<()> {
        if lock(&self.disk.state).volatile {
            return Ok(());
        }
        self.with(|c, _| {
            c.durable = c.written.clone();
            Ok(())
        })
    }
    fn len(&self) -> io::Result<u64> {
        self.with(|c, _| Ok(c.written.len() as u64))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|c, is_full| {
            let len = usize::try_from(len).map_err(|_| full())?;
            if len > c.written.len() && is_full {
                return Err(full());
            }
            c.written.resize(len, 0);
            Ok(())
        })
    }
}

impl StorageBackend for SimFile {
    fn len(&self) -> io::Result<u64> {
        PackFile::len(self)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(out, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        PackFile::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        PackFile::sync_data(self)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_all_at(data, offset)
    }
}

impl StoreFiles for SimDisk {
    fn open_index(&self, builder: &redb::Builder) -> Result<Database> {
        lock(&self.state).files.entry(INDEX.into()).or_default();
        Ok(builder.create_with_backend(self.file(INDEX))?)
    }

    fn create_pack(&self, name: &str) -> io::Result<Arc<dyn PackFile>> {
        let mut s = lock(&self.state);
        if s.names.contains(name) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        if s.full {
            return Err(full());
        }
        s.names.insert(name.to_string());
        s.files.insert(name.to_string(), Contents::default());
        drop(s);
        Ok(Arc::new(self.file(name)))
    }

    fn open_pack(&self, name: &str) -> io::Result<Arc<dyn PackFile>> {
        if !lock(&self.state).names.contains(name) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Arc::new(self.file(name)))
    }

    fn remove_pack(&self, name: &str) -> io::Result<()> {
        let mut s = lock(&self.state);
        if !s.names.remove(name) {
            return Err(io::ErrorKind::NotFound.into());
        }
        // The bytes stay until the removal is durable: a power cut before that brings the
        // file back whole.
        Ok(())
    }

    fn pack_names(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.state).names.iter().cloned().collect())
    }

    fn sync_pack_names(&self) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.durable_names = s.names.clone();
        let State { files, names, .. } = &mut *s;
        files.retain(|name, _| name == INDEX || names.contains(name));
        Ok(())
    }

    fn has_index(&self) -> bool {
        lock(&self.state).files.contains_key(INDEX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_bytes_and_names_survive() {
        let disk = SimDisk::new();
        let a = disk.create_pack("a").unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        assert!(
            disk.power_loss().pack_names().unwrap().is_empty(),
            "name not synced"
        );
        disk.sync_pack_names().unwrap();
        let after = disk.power_loss();
        assert_eq!(
            after.open_pack("a").unwrap().len().unwrap(),
            0,
            "data not synced"
        );
        a.sync_data().unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let after = disk.power_loss();
        let mut buf = [0u8; 5];
        after
            .open_pack("a")
            .unwrap()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(after.open_pack("a").unwrap().len().unwrap(), 5);
        disk.remove_pack("a").unwrap();
        assert!(
            disk.power_loss().open_pack("a").is_ok(),
            "removal not synced"
        );
        disk.sync_pack_names().unwrap();
        assert!(disk.power_loss().open_pack("a").is_err());
    }

    #[test]
    fn a_full_disk_refuses_growth() {
        let disk = SimDisk::new();
        let a = disk.create_pack("a").unwrap();
        a.write_all_at(b"12345", 0).unwrap();
        disk.set_full(true);
        assert_eq!(
            a.write_all_at(b"6", 5).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        a.write_all_at(b"x", 0).unwrap();
        disk.set_full(false);
        a.write_all_at(b"6", 5).unwrap();
    }
}
