//! The read cache: decompressed, verified blocks and volume chunks, bounded in bytes together,
//! least recently used out.
//!
//! Entries are shared [`Bytes`]: a hit hands out a reference-counted view, no copy and no
//! decompression. Each block entry remembers its block's seed binding, so a hit still demands
//! the seed. A volume chunk is cached by its identity, which is keyed by its seed domain: only
//! a reader that holds the domain's map can name it.

use std::sync::atomic::{AtomicU64, Ordering};

use aetherflow_store::{BlockId, ChunkId, SeedBinding};
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// A verified block as the cache holds it.
#[derive(Debug, Clone)]
pub struct CachedBlock {
    pub data: Bytes,
    pub seed: Option<SeedBinding>,
}

/// What an entry is: a whole block, or one chunk of a volume (by identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Block(BlockId),
    Chunk(ChunkId),
}

#[derive(Debug, Clone)]
struct ByLength;

impl Weighter<Key, CachedBlock> for ByLength {
    fn weight(&self, _: &Key, block: &CachedBlock) -> u64 {
        // Empty blocks still take a slot: weigh them as one byte so that they can be evicted.
        (block.data.len() as u64).max(1)
    }
}

/// Shards of the cache; see [`BlockCache::new`].
const SHARDS: usize = 2;

/// Byte-bounded LRU of decompressed blocks, with hit and miss counts.
#[derive(Debug)]
pub struct BlockCache {
    cache: Cache<Key, CachedBlock, ByLength>,
    limit: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl BlockCache {
    pub fn new(limit: u64) -> BlockCache {
        // quick_cache wants an item estimate to size its tables; assume 64 KiB blocks.
        let items = (limit / (64 << 10)).clamp(16, 1 << 20) as usize;
        // Each shard holds an equal part of the limit and refuses an item heavier than its
        // part: with two shards, any block the cache admits (a quarter of the limit) fits.
        let options = quick_cache::OptionsBuilder::new()
            .shards(SHARDS)
            .estimated_items_capacity(items)
            .weight_capacity(limit.max(1))
            .build()
            .expect("every option is set");
        BlockCache {
            cache: Cache::with_options(options, ByLength, Default::default(), Default::default()),
            limit,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Looks a block up, counting the hit or miss.
    pub fn get(&self, id: &BlockId) -> Option<CachedBlock> {
        self.counted(self.cache.get(&Key::Block(*id)))
    }

    /// A volume chunk's plaintext, counting the hit or miss.
    pub fn chunk(&self, id: &ChunkId) -> Option<Bytes> {
        self.counted(self.cache.get(&Key::Chunk(*id)))
            .map(|c| c.data)
    }

    /// Whether a volume chunk's plaintext is held (not counted as a lookup).
    pub fn holds_chunk(&self, id: &ChunkId) -> bool {
        self.cache.contains_key(&Key::Chunk(*id))
    }

    /// Keeps a volume chunk's verified plaintext.
    pub fn insert_chunk(&self, id: ChunkId, data: Bytes) {
        if self.admits(data.len() as u64) {
            self.cache
                .insert(Key::Chunk(id), CachedBlock { data, seed: None });
        }
    }

    /// Drops a chunk's plaintext from the cache (not counted as a lookup): for a caller about
    /// to supersede it, so that the cache keeps what is still read, and the caller's own copy
    /// of the buffer is the last one if no reader holds it.
    pub fn forget_chunk(&self, id: &ChunkId) {
        self.cache.remove(&Key::Chunk(*id));
    }

    fn counted(&self, found: Option<CachedBlock>) -> Option<CachedBlock> {
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Looks a block up without counting; see [`BlockCache::count_hit`].
    pub fn peek(&self, id: &BlockId) -> Option<CachedBlock> {
        self.cache.get(&Key::Block(*id))
    }

    /// Counts a hit found by [`BlockCache::peek`] and used.
    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a block of `size` bytes is worth keeping: at most a quarter of the cache, so
    /// that one large read does not push out everything else.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.limit / 4
    }

    /// Keeps a block the cache admits ([`BlockCache::admits`]).
    pub fn insert(&self, id: BlockId, block: CachedBlock) {
        if self.admits(block.data.len() as u64) {
            self.cache.insert(Key::Block(id), block);
        }
    }

    pub fn remove(&self, id: &BlockId) {
        self.cache.remove(&Key::Block(*id));
    }

    /// Bytes of blocks held now.
    pub fn used(&self) -> u64 {
        self.cache.weight()
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_limit() {
        let cache = BlockCache::new(1 << 20);
        let ids: Vec<BlockId> = (0..64).map(|_| BlockId::random()).collect();
        for id in &ids {
            cache.insert(
                *id,
                CachedBlock {
                    data: Bytes::from(vec![7u8; 100_000]),
                    seed: None,
                },
            );
            assert!(cache.used() <= 1 << 20, "{} bytes held", cache.used());
        }
        assert!(cache.get(&ids[63]).is_some(), "the newest block is kept");
        assert!(cache.get(&ids[0]).is_none(), "the oldest went");
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        cache.insert(
            BlockId::random(),
            CachedBlock {
                data: Bytes::from(vec![0u8; 2 << 20]),
                seed: None,
            },
        );
        assert!(
            cache.used() <= 1 << 20,
            "a block larger than the cache is not kept"
        );
        // The largest block admitted (a quarter of the limit) is really kept.
        let quarter = BlockId::random();
        cache.insert(
            quarter,
            CachedBlock {
                data: Bytes::from(vec![1u8; 256 << 10]),
                seed: None,
            },
        );
        assert!(cache.peek(&quarter).is_some());
    }
}
