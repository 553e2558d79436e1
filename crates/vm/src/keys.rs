//! Seed domains: a seed (with the store's salt and the Argon2id costs) names one dedup and
//! encryption domain. Deriving its keys is deliberately slow, so derived keys are cached in memory,
//! bounded, under a fingerprint of the seed that is keyed with a per-process random key: neither
//! the seed nor anything that could confirm a guess of it is kept, and nothing reaches the disk.

use std::sync::Arc;

use aetherflow_engine::crypto::{Keys, Seed};
use aetherflow_engine::KdfParams;
use aetherflow_store::SeedBinding;
use quick_cache::sync::Cache;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// How many seed domains keep their keys in memory.
const CACHED_DOMAINS: usize = 64;

/// How many derivations that matched no block are remembered, apart from the domains above, so
/// that a wrong seed met again (an export walking many seeded blocks with it) costs one
/// derivation, not one per block, and guesses never evict real domains.
const CACHED_MISSES: usize = 16;

/// Context of the tag that ties a block to its seed.
const TAG_CONTEXT: &[u8] = b"aetherflow vm block seed tag";

/// The keys of one seed domain and the tag that blocks of that domain carry.
#[derive(Debug)]
pub struct Domain {
    pub keys: Arc<Keys>,
    pub binding: SeedBinding,
}

/// Derives and caches seed domains.
pub struct Domains {
    salt: [u8; 16],
    fingerprint_key: Zeroizing<[u8; 32]>,
    cache: Cache<([u8; 32], [u32; 3]), Arc<Domain>>,
    /// Derivations that did not match the block they were made for; see [`CACHED_MISSES`].
    misses: Cache<([u8; 32], [u32; 3]), Arc<Domain>>,
    derivations: Slots,
    /// Derivations run so far (each one Argon2id's full cost).
    derived: std::sync::atomic::AtomicU64,
}

/// A counting semaphore for blocking threads.
#[derive(Debug)]
struct Slots {
    free: std::sync::Mutex<usize>,
    returned: std::sync::Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: std::sync::Mutex::new(n.max(1)),
            returned: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().expect("slots lock");
        while *free == 0 {
            free = self.returned.wait(free).expect("slots lock");
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("slots lock") += 1;
        self.0.returned.notify_one();
    }
}

impl std::fmt::Debug for Domains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domains")
            .field("cached", &self.cache.len())
            .finish()
    }
}

fn kdf_array(p: KdfParams) -> [u32; 3] {
    [p.m_cost_kib, p.t_cost, p.p_cost]
}

impl Domains {
    pub fn new(salt: [u8; 16]) -> Result<Domains> {
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(
            &[
                aetherflow_store::types::random_salt()?,
                aetherflow_store::types::random_salt()?,
            ]
            .concat(),
        );
        Ok(Domains {
            salt,
            fingerprint_key: key,
            cache: Cache::new(CACHED_DOMAINS),
            misses: Cache::new(CACHED_MISSES),
            derived: Default::default(),
            derivations: Slots::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
        })
    }

    /// The domain of `seed` under Argon2id costs `kdf`: from the cache, or derived (and then
    /// cached only if `keep` accepts it, so that guesses of a seed do not evict real domains).
    fn get(
        &self,
        seed: &Seed,
        kdf: [u32; 3],
        keep: impl Fn(&Domain) -> bool,
    ) -> Result<Arc<Domain>> {
        let params = KdfParams {
            m_cost_kib: kdf[0],
            t_cost: kdf[1],
            p_cost: kdf[2],
        };
        // Costs come from manifests too: refuse ones that would make a read allocate or spin.
        params
            .check(1024 * 1024)
            .map_err(|e| Error::InvalidArgument(format!("seed key derivation: {e}")))?;
        let key = (seed.fingerprint(&self.fingerprint_key), kdf);
        if let Some(domain) = self.cache.get(&key) {
            return Ok(domain);
        }
        if let Some(domain) = self.misses.get(&key) {
            if keep(&domain) {
                self.misses.remove(&key);
                self.cache.insert(key, Arc::clone(&domain));
            }
            return Ok(domain);
        }
        let keys = {
            // Each derivation takes its memory cost (64 MiB by default) for a tenth of a second:
            // at most one per core at a time, however many requests bring seeds.
            let _slot = self.derivations.acquire();
            self.derived
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Keys::derive(seed, &self.salt, params)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?
        };
        let tag = keys.seed_check(TAG_CONTEXT);
        let domain = Arc::new(Domain {
            keys: Arc::new(keys),
            binding: SeedBinding { tag, kdf },
        });
        if keep(&domain) {
            self.cache.insert(key, Arc::clone(&domain));
        } else {
            self.misses.insert(key, Arc::clone(&domain));
        }
        Ok(domain)
    }

    /// The domain `seed` gives under `binding`'s costs; cached only if it is the right one.
    pub fn for_binding(&self, seed: &Seed, binding: &SeedBinding) -> Result<Arc<Domain>> {
        self.get(seed, binding.kdf, |d| matches(d, binding))
    }

    /// The domain of `seed` if it is already derived; never runs the slow derivation.
    pub fn get_cached(&self, seed: &Seed, kdf: [u32; 3]) -> Option<Arc<Domain>> {
        self.cache
            .get(&(seed.fingerprint(&self.fingerprint_key), kdf))
    }

    /// The domain for new blocks of `seed`.
    pub fn for_new_blocks(&self, seed: &Seed, kdf: KdfParams) -> Result<Arc<Domain>> {
        self.get(seed, kdf_array(kdf), |_| true)
    }
}

/// Whether `domain` is the one `binding` was made with (constant time).
pub fn matches(domain: &Domain, binding: &SeedBinding) -> bool {
    domain.binding.tag.ct_eq(&binding.tag).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_seed_met_again_is_not_derived_again() {
        let domains = Domains::new([5; 16]).unwrap();
        let right = Seed::new("right").unwrap();
        let wrong = Seed::new("wrong").unwrap();
        let block = domains
            .for_new_blocks(&right, KdfParams::MINIMUM)
            .unwrap()
            .binding;
        let count = || domains.derived.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count(), 1);
        for _ in 0..5 {
            let d = domains.for_binding(&wrong, &block).unwrap();
            assert!(!matches(&d, &block));
        }
        assert_eq!(count(), 2, "the wrong seed was derived once");
        assert!(matches(
            &domains.for_binding(&right, &block).unwrap(),
            &block
        ));
        assert_eq!(count(), 2, "the right one is cached");
    }
}
