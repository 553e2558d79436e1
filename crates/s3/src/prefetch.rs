//! Read-ahead: the chunks a reader is about to ask for, fetched many at once.
//!
//! A reader decodes a block's chunks a few at a time on a small thread pool; against object
//! storage each of those reads is a round trip, so at most a few would be in flight. Told what
//! comes next ([`aetherflow_store::BlockStore::prefetch`]), the store starts ranged GETs for all
//! of it on its own runtime and hands each chunk over when it is asked for, checked like any
//! other read. Bounded: at most [`BUDGET`] bytes are fetched ahead, and what nobody asked for
//! within [`FORGET_AFTER`] is dropped.
//!
//! Two requests often want the same stored chunk (a volume's group of chunks that both cover a
//! part of, or the same content at two places): a fetch stays listed until it has ended, so
//! that a second reader waits for it too, and a chunk handed over stays among the last
//! [`RECENT_BYTES`] handed over, so that a reader coming a moment later does not fetch it
//! again. (With this and one GET for records near each other, a cold read of an ext4 image
//! went from about 400 GETs to 165: `bench/s3_volume_read.sh`.)

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aetherflow_store::{ChunkId, StoredChunk};
use bytes::Bytes;

use crate::catalog::Home;
use crate::keys;
use crate::pack;
use crate::remote::Remote;
use crate::sync::lock;
use crate::view::View;

/// Stored bytes fetched ahead at most, per store.
pub const BUDGET: u64 = 64 << 20;
/// Bytes of one ranged GET that fetches several records at once.
pub const MAX_SPAN: u64 = 4 << 20;
/// Bytes between two wanted records of a pack that are fetched rather than cost a GET of their
/// own (a request costs far more than the bytes: a round trip, and the server reads at least
/// a part of its object for each).
pub const MAX_GAP: u64 = 1 << 20;
/// A fetched chunk nobody asked for is dropped after this.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Stored bytes of the chunks handed over last that are kept for a second reader, per store.
pub const RECENT_BYTES: u64 = 16 << 20;

/// A fetch under way or ended. `None` when it failed: only whether it failed is used (the
/// reader reads the chunk again the ordinary way, which retries and says why).
#[derive(Debug)]
struct Slot {
    result: Mutex<Option<Option<StoredChunk>>>,
    ready: Condvar,
    started: Instant,
    len: u64,
}

/// The chunks handed over last, oldest first, at most [`RECENT_BYTES`] of stored bytes.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<ChunkId>,
    chunks: HashMap<ChunkId, StoredChunk>,
    bytes: u64,
}

impl Recent {
    fn keep(&mut self, id: ChunkId, chunk: StoredChunk) {
        let len = chunk.payload.len() as u64;
        if len > RECENT_BYTES || self.chunks.contains_key(&id) {
            return;
        }
        while self.bytes + len > RECENT_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(c) = self.chunks.remove(&old) {
                self.bytes -= c.payload.len() as u64;
            }
        }
        self.bytes += len;
        self.order.push_back(id);
        self.chunks.insert(id, chunk);
    }
}

#[derive(Debug, Default)]
struct State {
    /// Chunks being fetched or fetched and not handed over yet, by identity.
    slots: HashMap<ChunkId, Arc<Slot>>,
    /// Stored bytes of `slots`.
    held: u64,
    /// When `slots` was last searched for fetches nobody asked for (a search per read would
    /// cost more than the read when thousands are fetched ahead).
    forgot: Option<Instant>,
    recent: Recent,
}

impl State {
    fn remove_slot(&mut self, id: &ChunkId) {
        if let Some(slot) = self.slots.remove(id) {
            self.held -= slot.len;
        }
    }

    /// Drops the fetches older than [`FORGET_AFTER`], at most once a second.
    fn forget_unwanted(&mut self) {
        if self
            .forgot
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.forgot = Some(Instant::now());
        let held = &mut self.held;
        self.slots.retain(|_, s| {
            let keep = s.started.elapsed() < FORGET_AFTER;
            if !keep {
                *held -= s.len;
            }
            keep
        });
    }
}

/// Chunks being fetched or fetched, by identity.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    remote: Arc<Remote>,
    view: Arc<View>,
    state: Mutex<State>,
}

impl Prefetcher {
    pub fn new(remote: Arc<Remote>, view: Arc<View>) -> Prefetcher {
        Prefetcher {
            remote,
            view,
            state: Mutex::default(),
        }
    }

    /// Starts fetching the chunks of `ids` that are live, known, not being fetched or just
    /// handed over already, and within the budget. Returns at once.
    ///
    /// Records that lie near each other in one pack (the chunks of one write-back, of one
    /// block; at most [`MAX_GAP`] apart) are fetched by one ranged GET of up to [`MAX_SPAN`]
    /// bytes, cut apart and each checked: a sequential read of a volume costs a GET per few
    /// MiB instead of one per chunk.
    pub fn prefetch(&self, ids: &[ChunkId]) {
        let homes: Vec<(ChunkId, Home)> = self.view.read(|c| {
            ids.iter()
                .filter(|id| c.is_live(id))
                .filter_map(|id| Some((*id, c.usable_home(id)?.clone())))
                .collect()
        });
        let mut wanted: Vec<(Arc<Slot>, Home)> = Vec::with_capacity(homes.len());
        {
            let mut state = lock(&self.state);
            state.forget_unwanted();
            for (id, home) in homes {
                if state.slots.contains_key(&id) || state.recent.chunks.contains_key(&id) {
                    continue;
                }
                let len = pack::record_len(&home.info);
                if state.held + len > BUDGET {
                    break;
                }
                state.held += len;
                let slot = Arc::new(Slot {
                    result: Mutex::new(None),
                    ready: Condvar::new(),
                    started: Instant::now(),
                    len,
                });
                state.slots.insert(id, Arc::clone(&slot));
                wanted.push((slot, home));
            }
        }
        wanted.sort_by(|(_, a), (_, b)| (&a.pack, a.offset).cmp(&(&b.pack, b.offset)));
        for span in spans(wanted) {
            self.fetch(span);
        }
    }

    /// One ranged GET for records that lie near each other in one pack; each slot gets its
    /// own record, checked.
    fn fetch(&self, span: Vec<(Arc<Slot>, Home)>) {
        let (first, last) = (&span[0].1, &span[span.len() - 1].1);
        let start = first.offset;
        let end = last.offset + pack::record_len(&last.info);
        let key = keys::pack(&first.pack);
        let shared = span.len() > 1;
        self.remote.spawn_get_range(&key, start..end, move |got| {
            for (slot, home) in span {
                let result = match &got {
                    Ok(bytes) => {
                        // Fewer bytes than asked for (an object cut short) leave this record
                        // short or empty, and its check says so.
                        let from = ((home.offset - start) as usize).min(bytes.len());
                        let to = (from + pack::record_len(&home.info) as usize).min(bytes.len());
                        // A record of a shared GET is copied out: a view would keep the whole
                        // span alive for as long as any one record waits, past the budget.
                        let record = if shared {
                            Bytes::copy_from_slice(&bytes[from..to])
                        } else {
                            bytes.slice(from..to)
                        };
                        pack::check_record(&home.pack, home.offset, record, &home.info)
                            .ok()
                            .map(|payload| StoredChunk {
                                info: home.info,
                                payload,
                            })
                    }
                    Err(_) => None,
                };
                *lock(&slot.result) = Some(result);
                slot.ready.notify_all();
            }
        });
    }

    /// The chunk, if it was prefetched (waiting for its fetch to end) or handed over a moment
    /// ago. A failed fetch gives `None` too: the caller reads the chunk the ordinary way, which
    /// retries and says why.
    pub fn take(&self, id: &ChunkId) -> Option<StoredChunk> {
        let slot = {
            let state = lock(&self.state);
            match state.slots.get(id) {
                Some(slot) => Arc::clone(slot),
                None => return state.recent.chunks.get(id).cloned(),
            }
        };
        // The slot stays listed while its fetch is under way, so that a second reader of the
        // chunk waits for the same fetch instead of starting its own.
        let chunk = {
            let mut result = lock(&slot.result);
            while result.is_none() {
                result = slot
                    .ready
                    .wait(result)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            result.clone().flatten()
        };
        let mut state = lock(&self.state);
        if state.slots.get(id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            state.remove_slot(id);
            if let Some(chunk) = &chunk {
                state.recent.keep(*id, chunk.clone());
            }
        }
        chunk
    }
}

/// Cuts `wanted` (sorted by pack and offset) into runs of records of one pack at most
/// [`MAX_GAP`] apart, each at most [`MAX_SPAN`] bytes (a single record may be larger).
fn spans(wanted: Vec<(Arc<Slot>, Home)>) -> Vec<Vec<(Arc<Slot>, Home)>> {
    let mut out: Vec<Vec<(Arc<Slot>, Home)>> = Vec::new();
    let mut span_start = 0;
    for (slot, home) in wanted {
        let len = pack::record_len(&home.info);
        let joins = out
            .last()
            .and_then(|span| span.last())
            .is_some_and(|(_, prev)| {
                let prev_end = prev.offset + pack::record_len(&prev.info);
                prev.pack == home.pack
                    && (prev_end..=prev_end + MAX_GAP).contains(&home.offset)
                    && home.offset + len - span_start <= MAX_SPAN
            });
        if joins {
            out.last_mut().expect("a span").push((slot, home));
        } else {
            span_start = home.offset;
            out.push(vec![(slot, home)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{ChunkInfo, Codec};

    fn wanted(pack: &str, offset: u64, stored_len: u32) -> (Arc<Slot>, Home) {
        let slot = Arc::new(Slot {
            result: Mutex::new(None),
            ready: Condvar::new(),
            started: Instant::now(),
            len: 0,
        });
        let info = ChunkInfo {
            id: ChunkId([offset as u8; 32]),
            codec: Codec::Raw,
            nonce_stored: false,
            raw_len: stored_len,
            stored_len,
            check: [0; 16],
        };
        let pack = Arc::from(pack);
        (slot, Home { pack, offset, info })
    }

    fn shape(spans: &[Vec<(Arc<Slot>, Home)>]) -> Vec<Vec<(String, u64)>> {
        spans
            .iter()
            .map(|s| {
                s.iter()
                    .map(|(_, h)| (h.pack.to_string(), h.offset))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn records_near_each_other_in_one_pack_share_a_get() {
        let rec = |len: u32| pack::record_len(&wanted("a", 0, len).1.info);
        let r = rec(1000);
        let after_gap = 8 + 4 * r + MAX_GAP + 1;
        let cut = spans(vec![
            wanted("a", 8, 1000),
            wanted("a", 8 + r, 1000),
            // a record not wanted lies between: fetched too
            wanted("a", 8 + 3 * r, 1000),
            // more than MAX_GAP not wanted: a GET of its own
            wanted("a", after_gap, 1000),
            // the next offset in another pack
            wanted("b", after_gap + r, 1000),
        ]);
        assert_eq!(
            shape(&cut),
            vec![
                vec![
                    ("a".into(), 8),
                    ("a".into(), 8 + r),
                    ("a".into(), 8 + 3 * r)
                ],
                vec![("a".into(), after_gap)],
                vec![("b".into(), after_gap + r)],
            ]
        );
    }

    #[test]
    fn a_span_stops_at_its_size_limit() {
        let len = (MAX_SPAN / 3) as u32;
        let r = pack::record_len(&wanted("a", 0, len).1.info);
        let cut = spans((0..7).map(|i| wanted("a", 8 + i * r, len)).collect());
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![2, 2, 2, 1],
            "three records of a third would pass the limit"
        );
        // A record larger than the limit is fetched alone.
        let big = spans(vec![wanted("a", 8, (MAX_SPAN + 1) as u32)]);
        assert_eq!(big.len(), 1);
    }
}
