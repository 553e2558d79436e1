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
        })
    }

    /// The domain of `seed` under Argon2id costs `kdf`, derived once and then cached.
    pub fn get(&self, seed: &Seed, kdf: [u32; 3]) -> Result<Arc<Domain>> {
        let params = KdfParams {
            m_cost_kib: kdf[0],
            t_cost: kdf[1],
            p_cost: kdf[2],
        };
        // Costs come from manifests too: refuse ones that would make a read allocate or spin.
        params
            .check(1024 * 1024)
            .map_err(|e| Error::InvalidArgument(format!("seed key derivation: {e}")))?;
        let fingerprint = seed.fingerprint(&self.fingerprint_key);
        self.cache.get_or_insert_with(&(fingerprint, kdf), || {
            let keys = Keys::derive(seed, &self.salt, params)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let tag = keys.seed_check(TAG_CONTEXT);
            Ok(Arc::new(Domain {
                keys: Arc::new(keys),
                binding: SeedBinding { tag, kdf },
            }))
        })
    }

    /// The domain of `seed` if it is already derived; never runs the slow derivation.
    pub fn get_cached(&self, seed: &Seed, kdf: [u32; 3]) -> Option<Arc<Domain>> {
        self.cache
            .get(&(seed.fingerprint(&self.fingerprint_key), kdf))
    }

    /// The domain for new blocks of `seed`.
    pub fn for_new_blocks(&self, seed: &Seed, kdf: KdfParams) -> Result<Arc<Domain>> {
        self.get(seed, kdf_array(kdf))
    }
}

/// Whether `domain` is the one `binding` was made with (constant time).
pub fn matches(domain: &Domain, binding: &SeedBinding) -> bool {
    domain.binding.tag.ct_eq(&binding.tag).into()
}
