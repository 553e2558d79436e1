//! Read-ahead: the chunks a reader is about to ask for, fetched many at once.
//!
//! A reader decodes a block's chunks a few at a time on a small thread pool; against object
//! storage each of those reads is a round trip, so at most a few would be in flight. Told what
//! comes next ([`aetherflow_store::BlockStore::prefetch`]), the store starts ranged GETs for all
//! of it on its own runtime and hands each chunk over when it is asked for, checked like any
//! other read. Bounded: at most [`BUDGET`] bytes are fetched ahead, and what nobody asked for
//! within [`FORGET_AFTER`] is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aetherflow_store::{ChunkId, Result, StoredChunk};

use crate::catalog::Home;
use crate::keys;
use crate::pack;
use crate::remote::Remote;
use crate::sync::lock;
use crate::view::View;

/// Stored bytes fetched ahead at most, per store.
pub const BUDGET: u64 = 64 << 20;
/// A fetched chunk nobody asked for is dropped after this.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Slot {
    result: Mutex<Option<Result<StoredChunk>>>,
    ready: Condvar,
    started: Instant,
    len: u64,
}

/// Chunks being fetched or fetched, by identity.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    remote: Arc<Remote>,
    view: Arc<View>,
    slots: Mutex<HashMap<ChunkId, Arc<Slot>>>,
}

impl Prefetcher {
    pub fn new(remote: Arc<Remote>, view: Arc<View>) -> Prefetcher {
        Prefetcher {
            remote,
            view,
            slots: Mutex::default(),
        }
    }

    /// Starts fetching the chunks of `ids` that are live, known, not being fetched already,
    /// and within the budget. Returns at once.
    pub fn prefetch(&self, ids: &[ChunkId]) {
        let homes: Vec<(ChunkId, Home)> = self.view.read(|c| {
            ids.iter()
                .filter(|id| c.is_live(id))
                .filter_map(|id| Some((*id, c.usable_home(id)?.clone())))
                .collect()
        });
        let mut slots = lock(&self.slots);
        slots.retain(|_, s| s.started.elapsed() < FORGET_AFTER);
        let mut held: u64 = slots.values().map(|s| s.len).sum();
        for (id, home) in homes {
            if slots.contains_key(&id) {
                continue;
            }
            let len = pack::record_len(&home.info);
            if held + len > BUDGET {
                break;
            }
            held += len;
            let slot = Arc::new(Slot {
                result: Mutex::new(None),
                ready: Condvar::new(),
                started: Instant::now(),
                len,
            });
            slots.insert(id, Arc::clone(&slot));
            let key = keys::pack(&home.pack);
            self.remote
                .spawn_get_range(&key, home.offset..home.offset + len, move |got| {
                    let result = got.and_then(|bytes| {
                        let payload =
                            pack::check_record(&home.pack, home.offset, bytes, &home.info)?;
                        Ok(StoredChunk {
                            info: home.info,
                            payload,
                        })
                    });
                    *lock(&slot.result) = Some(result);
                    slot.ready.notify_all();
                });
        }
    }

    /// The chunk, if it was prefetched (waiting for its fetch to end). A failed fetch gives
    /// `None` too: the caller reads the chunk the ordinary way, which retries and says why.
    pub fn take(&self, id: &ChunkId) -> Option<StoredChunk> {
        let slot = lock(&self.slots).remove(id)?;
        let mut result = lock(&slot.result);
        while result.is_none() {
            result = slot
                .ready
                .wait(result)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        result.take().and_then(|r| r.ok())
    }
}
