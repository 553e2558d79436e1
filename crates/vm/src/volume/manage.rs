//! Volumes by name: create, list, describe, open (one [`Volume`] per name, shared by every
//! connection), unlock and lock seeded ones, snapshot, clone, delete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aetherflow_engine::crypto::Seed;
use aetherflow_store::volume::validate_name;
use aetherflow_store::VolumeRecord;
use serde::Serialize;

use super::buffer::Buffer;
use super::{Volume, STRIPES};
use crate::error::{Error, Result};
use crate::keys::{matches, Domain};
use crate::VirtualMemory;

/// Open volumes and the keys of unlocked seeded ones; both live in memory only.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    open: Arc<Mutex<HashMap<String, Entry>>>,
    unlocked: Mutex<HashMap<String, Arc<Domain>>>,
}

/// An open volume and the handles to it. An entry outlives its last handle only while the
/// write-back of what was buffered fails (a full store): the writes stay readable, and the
/// next flush, open or shutdown retries.
#[derive(Debug)]
struct Entry {
    volume: Arc<Volume>,
    handles: usize,
}

type OpenVolumes = Arc<Mutex<HashMap<String, Entry>>>;

fn lock(open: &OpenVolumes) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    open.lock().expect("registry lock")
}

impl Registry {
    /// The volume if it is open (or kept for its buffered writes), and whether any handle
    /// holds it.
    fn entry(&self, name: &str) -> Option<(Arc<Volume>, bool)> {
        lock(&self.open)
            .get(name)
            .map(|e| (Arc::clone(&e.volume), e.handles > 0))
    }
}

/// A volume opened with [`VirtualMemory::open_volume`]: every handle to one name shares one
/// [`Volume`] (and so one buffer: a flush through any covers the writes of all). Dropping the
/// last handle writes back what is buffered, durably; if that fails the writes are kept in
/// memory, readable, until a write-back succeeds.
#[derive(Debug)]
pub struct VolumeHandle {
    volume: Arc<Volume>,
    open: OpenVolumes,
}

impl std::ops::Deref for VolumeHandle {
    type Target = Volume;

    fn deref(&self) -> &Volume {
        &self.volume
    }
}

impl Clone for VolumeHandle {
    fn clone(&self) -> Self {
        if let Some(e) = lock(&self.open).get_mut(self.volume.name()) {
            e.handles += 1;
        }
        VolumeHandle {
            volume: Arc::clone(&self.volume),
            open: Arc::clone(&self.open),
        }
    }
}

impl Drop for VolumeHandle {
    fn drop(&mut self) {
        let name = self.volume.name().to_string();
        let last = match lock(&self.open).get_mut(&name) {
            Some(e) if Arc::ptr_eq(&e.volume, &self.volume) => {
                e.handles -= 1;
                e.handles == 0
            }
            _ => false,
        };
        if !last {
            return;
        }
        // Outside the registry's lock: a write-back may take a while.
        let written = if self.volume.read_only() {
            Ok(())
        } else {
            self.volume.flush()
        };
        let mut open = lock(&self.open);
        let Some(e) = open.get(&name) else { return };
        if !Arc::ptr_eq(&e.volume, &self.volume) || e.handles > 0 {
            return; // opened again meanwhile
        }
        match written {
            Ok(()) if self.volume.buffered() == 0 => {
                open.remove(&name);
                drop(open);
                if !self.volume.read_only() {
                    self.volume.store().release_volume(&name);
                }
            }
            Ok(()) => {} // written to while closing: kept until the next close
            Err(err) => tracing::error!(
                "volume {name}: writing back on close failed, {} bytes kept in memory until a \
                 write-back succeeds: {err}",
                self.volume.buffered()
            ),
        }
    }
}

/// What `GET /api/volumes/:name` shows of a volume.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeInfo {
    pub name: String,
    /// Bytes the volume holds, as clients see it.
    pub size: u64,
    pub chunk_size: u32,
    pub seeded: bool,
    pub read_only: bool,
    /// The volume a snapshot was taken of, or the snapshot a clone was made from.
    pub origin: Option<String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// An NBD client (or another user of the library) has it open.
    pub open: bool,
    pub bytes: VolumeBytes,
    /// Written bytes over the stored bytes of the chunks the volume reads through.
    pub ratio: f64,
}

/// The figures of a volume, exact.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBytes {
    /// Its size (what it holds logically, written or not).
    pub logical: u64,
    /// Bytes of its chunks that hold data (not holes, not zeros).
    pub written: u64,
    /// Bytes of its chunks written as zeros (no data).
    pub zeroed: u64,
    /// What the store holds for it that nothing else shares, plus its map.
    pub physical: u64,
    /// Plaintext of the distinct chunks it reads through: after dedup, before compression.
    pub unique: u64,
    /// Stored bytes of those chunks (shared ones included).
    pub stored: u64,
    /// Memory holding writes not yet written back (until the next flush or write-back).
    pub buffered: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl VirtualMemory {
    /// Creates an empty volume of `size` bytes (up to the capacity). With a seed, its chunks
    /// are sealed under it and it is served only once unlocked (creating it unlocks it).
    pub fn create_volume(&self, name: &str, size: u64, seed: Option<&Seed>) -> Result<VolumeInfo> {
        validate_name(name).map_err(Error::VolumeRefused)?;
        if size == 0 || size > self.config.capacity {
            return Err(Error::VolumeRefused(format!(
                "a volume holds 1 byte to the capacity ({} bytes); {size} asked",
                self.config.capacity
            )));
        }
        let domain = seed
            .map(|s| self.domains.for_new_blocks(s, self.config.kdf))
            .transpose()?;
        let record = VolumeRecord {
            name: name.to_string(),
            size,
            chunk_size: self.config.volume_chunk_size,
            read_only: false,
            seed: domain.as_ref().map(|d| d.binding),
            origin: None,
            created: now(),
            written: 0,
            zeroed: 0,
        };
        self.store
            .create_volume(&record)
            .map_err(|e| Error::from_volume_store(name, e))?;
        if let Some(domain) = domain {
            self.volumes
                .unlocked
                .lock()
                .expect("registry lock")
                .insert(name.to_string(), domain);
        }
        self.volume_info(name)
    }

    /// Every volume (snapshots and clones included), by name.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let records = self
            .store
            .volumes()
            .map_err(|e| Error::from_volume_store("", e))?;
        records.iter().map(|r| self.describe(r)).collect()
    }

    /// A volume's description and exact figures (O(its written chunks)).
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let record = self
            .store
            .volume(name)
            .map_err(|e| Error::from_volume_store(name, e))?;
        self.describe(&record)
    }

    fn describe(&self, r: &VolumeRecord) -> Result<VolumeInfo> {
        let usage = self
            .store
            .volume_usage(&r.name)
            .map_err(|e| Error::from_volume_store(&r.name, e))?;
        let handle = self.volumes.entry(&r.name);
        let created = UNIX_EPOCH + std::time::Duration::from_secs(r.created);
        Ok(VolumeInfo {
            name: r.name.clone(),
            size: r.size,
            chunk_size: r.chunk_size,
            seeded: r.seed.is_some(),
            read_only: r.read_only,
            origin: r.origin.clone(),
            created: humantime::format_rfc3339_seconds(created).to_string(),
            open: handle.as_ref().is_some_and(|(_, held)| *held),
            bytes: VolumeBytes {
                logical: r.size,
                written: r.written,
                zeroed: r.zeroed,
                physical: usage.exclusive,
                unique: usage.unique,
                stored: usage.stored,
                buffered: handle.map_or(0, |(v, _)| v.buffered()),
            },
            ratio: if usage.stored == 0 {
                1.0
            } else {
                r.written as f64 / usage.stored as f64
            },
        })
    }

    /// Unlocks a seeded volume with its seed: its keys are derived and kept in memory until
    /// [`VirtualMemory::lock_volume`] or the process ends. A wrong seed unlocks nothing.
    pub fn unlock_volume(&self, name: &str, seed: &Seed) -> Result<()> {
        let record = self
            .store
            .volume(name)
            .map_err(|e| Error::from_volume_store(name, e))?;
        let Some(binding) = record.seed else {
            return Ok(()); // an unseeded volume needs no key
        };
        let domain = self.domains.for_binding(seed, &binding)?;
        if !matches(&domain, &binding) {
            return Err(Error::VolumeWrongSeed(name.to_string()));
        }
        self.volumes
            .unlocked
            .lock()
            .expect("registry lock")
            .insert(name.to_string(), domain);
        Ok(())
    }

    /// Forgets a seeded volume's keys. Refused while it is open: its keys would stay in use
    /// (and while writes kept after a failed write-back still need them).
    pub fn lock_volume(&self, name: &str) -> Result<()> {
        self.store
            .volume(name)
            .map_err(|e| Error::from_volume_store(name, e))?;
        let mut open = lock(&self.volumes.open);
        match open.get(name) {
            Some(e) if e.handles > 0 => return Err(Error::VolumeInUse(name.to_string())),
            Some(e) => {
                e.volume.flush()?;
                let read_only = e.volume.read_only();
                open.remove(name);
                if !read_only {
                    self.store.release_volume(name);
                }
            }
            None => {}
        }
        self.volumes
            .unlocked
            .lock()
            .expect("registry lock")
            .remove(name);
        Ok(())
    }

    /// Opens a volume for reading and writing. Every caller gets a handle to the same
    /// [`Volume`] while one is open, so flushes on any connection cover writes from all of
    /// them.
    pub fn open_volume(&self, name: &str) -> Result<VolumeHandle> {
        let mut open = lock(&self.volumes.open);
        if let Some(e) = open.get_mut(name) {
            e.handles += 1;
            return Ok(VolumeHandle {
                volume: Arc::clone(&e.volume),
                open: Arc::clone(&self.volumes.open),
            });
        }
        let record = self
            .store
            .volume(name)
            .map_err(|e| Error::from_volume_store(name, e))?;
        let keys = match &record.seed {
            None => None,
            Some(_) => Some(
                self.volumes
                    .unlocked
                    .lock()
                    .expect("registry lock")
                    .get(name)
                    .map(|d| Arc::clone(&d.keys))
                    .ok_or_else(|| Error::VolumeLocked(name.to_string()))?,
            ),
        };
        if !record.read_only {
            // Where servers share the store, the right to write it (another's is refused).
            self.store
                .acquire_volume(name)
                .map_err(|e| Error::from_volume_store(name, e))?;
        }
        let volume = Arc::new(Volume {
            name: record.name.clone(),
            size: record.size,
            chunk_size: record.chunk_size,
            group: u64::from((super::GROUP_BYTES / record.chunk_size).max(1)),
            read_only: record.read_only,
            store: Arc::clone(&self.store),
            cache: Arc::clone(&self.cache),
            keys,
            level: self.config.level,
            buffer: Buffer::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            writeback: Mutex::new(()),
            limit: self.config.volume_buffer,
            read_ahead: self.store.remote_requests().is_some().then(|| {
                Mutex::new(super::readahead::ReadAhead::new(
                    (super::READ_AHEAD_BYTES / u64::from(record.chunk_size)).max(1),
                ))
            }),
        });
        open.insert(
            name.to_string(),
            Entry {
                volume: Arc::clone(&volume),
                handles: 1,
            },
        );
        Ok(VolumeHandle {
            volume,
            open: Arc::clone(&self.volumes.open),
        })
    }

    /// A read-only snapshot of a volume as it is now (what is buffered is written back first).
    /// O(1) whatever the size.
    pub fn snapshot_volume(&self, name: &str, snapshot: &str) -> Result<VolumeInfo> {
        validate_name(snapshot).map_err(Error::VolumeRefused)?;
        if let Some((v, _)) = self.volumes.entry(name) {
            v.flush()?;
        }
        self.store
            .snapshot_volume(name, snapshot, false)
            .map_err(|e| Error::from_volume_store(name, e))?;
        self.inherit_keys(name, snapshot);
        self.volume_info(snapshot)
    }

    /// A writable volume made from a snapshot, sharing all its chunks until it diverges.
    pub fn clone_volume(&self, snapshot: &str, clone: &str) -> Result<VolumeInfo> {
        validate_name(clone).map_err(Error::VolumeRefused)?;
        let source = self
            .store
            .volume(snapshot)
            .map_err(|e| Error::from_volume_store(snapshot, e))?;
        // A volume is a snapshot for life (or never), so this answer cannot go stale.
        if !source.read_only {
            return Err(Error::NotASnapshot(snapshot.to_string()));
        }
        self.store
            .snapshot_volume(snapshot, clone, true)
            .map_err(|e| Error::from_volume_store(snapshot, e))?;
        self.inherit_keys(snapshot, clone);
        self.volume_info(clone)
    }

    /// A snapshot or clone of an unlocked volume starts unlocked (same seed, same keys).
    fn inherit_keys(&self, from: &str, to: &str) {
        let mut unlocked = self.volumes.unlocked.lock().expect("registry lock");
        if let Some(d) = unlocked.get(from).cloned() {
            unlocked.insert(to.to_string(), d);
        }
    }

    /// Deletes a volume; what no block, volume or snapshot shares is reclaimed. Refused while
    /// it is open; writes kept after a failed write-back are dropped with it.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        // Under the registry's lock, so that nobody opens it between the check and the delete.
        let mut open = lock(&self.volumes.open);
        let kept = match open.get(name) {
            Some(e) if e.handles > 0 => return Err(Error::VolumeInUse(name.to_string())),
            Some(e) => Some(Arc::clone(&e.volume)),
            None => None,
        };
        self.store
            .delete_volume(name)
            .map_err(|e| Error::from_volume_store(name, e))?;
        if let Some(volume) = kept {
            volume.discard();
            open.remove(name);
        }
        drop(open);
        self.volumes
            .unlocked
            .lock()
            .expect("registry lock")
            .remove(name);
        Ok(())
    }
}
