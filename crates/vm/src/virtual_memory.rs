//! [`VirtualMemory`]: the library API of SPEC §4, over any [`BlockStore`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aetherflow_engine::crypto::Seed;
#[cfg(feature = "s3")]
use aetherflow_s3::S3Store;
use aetherflow_store::local::LocalOptions;
use aetherflow_store::{BlockId, BlockStore, LocalStore, SeedBinding};

use crate::cache::BlockCache;
use crate::config::{Backend, VmConfig};
use crate::error::{Error, Result};
use crate::keys::{matches, Domain, Domains};

/// A 100 TiB (by default) virtual address space of blocks, stored compressed and deduplicated.
///
/// Every method takes `&self` and is safe to call from many threads at once: the store
/// serialises only its short index commits, never compression, hashing or I/O.
#[derive(Debug)]
pub struct VirtualMemory {
    pub(crate) store: Arc<dyn BlockStore>,
    pub(crate) config: VmConfig,
    pub(crate) domains: Domains,
    pub(crate) cache: Arc<BlockCache>,
    /// Open volumes, and the keys of unlocked seeded ones.
    pub(crate) volumes: crate::volume::manage_registry::Registry,
    /// Logical bytes promised to allocations still running, so that concurrent allocations
    /// cannot together pass the capacity.
    in_flight: Mutex<u64>,
    accesses: AccessLog,
}

impl VirtualMemory {
    /// Opens the backend `config` names (creating an empty store if there is none).
    pub fn open(config: VmConfig) -> Result<VirtualMemory> {
        let store: Arc<dyn BlockStore> = match &config.backend {
            Backend::Memory => Arc::new(LocalStore::in_memory()?),
            Backend::Local(dir) => Arc::new(LocalStore::open(dir, LocalOptions::default())?),
            #[cfg(feature = "s3")]
            Backend::S3(location, options) => Arc::new(S3Store::open(location, *options)?),
        };
        VirtualMemory::with_store(store, config)
    }

    /// Runs over a store opened by the caller (another backend, or special options).
    pub fn with_store(store: Arc<dyn BlockStore>, config: VmConfig) -> Result<VirtualMemory> {
        config
            .chunking
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(VirtualMemory {
            domains: Domains::new(store.domain_salt())?,
            cache: Arc::new(BlockCache::new(config.cache_size)),
            volumes: Default::default(),
            store,
            config,
            in_flight: Mutex::new(0),
            accesses: AccessLog::default(),
        })
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The store underneath, for figures and checks.
    pub fn store(&self) -> &dyn BlockStore {
        &*self.store
    }

    /// Removes a block; the physical space that no other block shares comes back.
    pub fn free(&self, id: BlockId) -> Result<()> {
        self.store
            .free_block(id)
            .map_err(|e| Error::from_store(id, e))?;
        self.cache.remove(&id);
        self.accesses.forget(id);
        Ok(())
    }

    /// Checks `seed` against a block's binding. Unseeded blocks need no seed (one given is
    /// ignored); seeded blocks need theirs.
    pub(crate) fn authorize(
        &self,
        id: BlockId,
        binding: Option<&SeedBinding>,
        seed: Option<&Seed>,
    ) -> Result<Option<Arc<Domain>>> {
        let Some(binding) = binding else {
            return Ok(None);
        };
        let seed = seed.ok_or(Error::SeedRequired(id))?;
        let domain = self.domains.for_binding(seed, binding)?;
        if matches(&domain, binding) {
            Ok(Some(domain))
        } else {
            Err(Error::WrongSeed(id))
        }
    }

    /// Promises `more` logical bytes to a running allocation, or refuses with
    /// [`Error::CapacityExceeded`].
    pub(crate) fn reserve(&self, more: u64) -> Result<()> {
        let mut in_flight = self.in_flight.lock().expect("capacity lock");
        let used = self.store.totals().logical.saturating_add(*in_flight);
        let available = self.config.capacity.saturating_sub(used);
        if more > available {
            return Err(Error::CapacityExceeded {
                requested: more,
                available,
                capacity: self.config.capacity,
            });
        }
        *in_flight += more;
        Ok(())
    }

    /// Returns a promise made by [`VirtualMemory::reserve`] (the allocation committed or failed).
    pub(crate) fn release(&self, bytes: u64) {
        let mut in_flight = self.in_flight.lock().expect("capacity lock");
        *in_flight = in_flight.saturating_sub(bytes);
    }

    /// Counts one read of `id`; counts reach the store in batches.
    pub(crate) fn count_access(&self, id: BlockId) {
        if let Some(batch) = self.accesses.note(id) {
            // Counts are statistics: a failed flush must not fail the read that triggered it.
            let _ = self.store.add_accesses(&batch);
        }
    }

    /// Counts one read of `id` without ever writing to the store (for paths that must not
    /// block); the next [`VirtualMemory::count_access`] or [`VirtualMemory::flush`] writes it.
    pub(crate) fn count_access_in_memory(&self, id: BlockId) {
        self.accesses.note_in_memory(id);
    }

    /// Reads of `id` not yet written to the store.
    pub(crate) fn pending_accesses(&self, id: BlockId) -> u64 {
        self.accesses.pending(id)
    }

    /// Writes pending read counts to the store now.
    pub fn flush(&self) -> Result<()> {
        let batch = self.accesses.take();
        self.store.add_accesses(&batch)?;
        Ok(())
    }
}

impl Drop for VirtualMemory {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Read counts waiting to be written, flushed every few seconds or every few thousand blocks.
#[derive(Debug)]
struct AccessLog {
    pending: Mutex<(HashMap<BlockId, u64>, Instant)>,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            pending: Mutex::new((HashMap::new(), Instant::now())),
        }
    }
}

impl AccessLog {
    const MAX_PENDING: usize = 4096;
    const MAX_AGE: Duration = Duration::from_secs(2);

    fn note(&self, id: BlockId) -> Option<Vec<(BlockId, u64)>> {
        let mut p = self.pending.lock().expect("access lock");
        *p.0.entry(id).or_default() += 1;
        if p.0.len() >= Self::MAX_PENDING || p.1.elapsed() >= Self::MAX_AGE {
            p.1 = Instant::now();
            return Some(p.0.drain().collect());
        }
        None
    }

    fn note_in_memory(&self, id: BlockId) {
        *self
            .pending
            .lock()
            .expect("access lock")
            .0
            .entry(id)
            .or_default() += 1;
    }

    fn pending(&self, id: BlockId) -> u64 {
        self.pending
            .lock()
            .expect("access lock")
            .0
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    fn forget(&self, id: BlockId) {
        self.pending.lock().expect("access lock").0.remove(&id);
    }

    fn take(&self) -> Vec<(BlockId, u64)> {
        let mut p = self.pending.lock().expect("access lock");
        p.1 = Instant::now();
        p.0.drain().collect()
    }
}
