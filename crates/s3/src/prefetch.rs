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

use aetherflow_store::{ChunkId, Error, Result, StoredChunk};
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
    ///
    /// Records that lie back to back in one pack (the chunks of one write-back, of one block)
    /// are fetched by one ranged GET of up to [`MAX_SPAN`] bytes, cut apart and each checked:
    /// a sequential read of a volume costs a GET per few MiB instead of one per chunk.
    pub fn prefetch(&self, ids: &[ChunkId]) {
        let homes: Vec<(ChunkId, Home)> = self.view.read(|c| {
            ids.iter()
                .filter(|id| c.is_live(id))
                .filter_map(|id| Some((*id, c.usable_home(id)?.clone())))
                .collect()
        });
        let mut wanted: Vec<(Arc<Slot>, Home)> = Vec::with_capacity(homes.len());
        {
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
                wanted.push((slot, home));
            }
        }
        wanted.sort_by(|(_, a), (_, b)| (&a.pack, a.offset).cmp(&(&b.pack, b.offset)));
        for span in spans(wanted) {
            self.fetch(span);
        }
    }

    /// One ranged GET for records that lie back to back in one pack; each slot gets its own
    /// record, checked.
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
                        pack::check_record(&home.pack, home.offset, record, &home.info).map(
                            |payload| StoredChunk {
                                info: home.info,
                                payload,
                            },
                        )
                    }
                    // Only whether it failed is used: the reader reads the chunk again the
                    // ordinary way, which says why.
                    Err(e) => Err(Error::Unavailable(e.to_string())),
                };
                *lock(&slot.result) = Some(result);
                slot.ready.notify_all();
            }
        });
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

/// Cuts `wanted` (sorted by pack and offset) into runs of records that lie back to back in one
/// pack, each at most [`MAX_SPAN`] bytes (a single record may be larger).
fn spans(wanted: Vec<(Arc<Slot>, Home)>) -> Vec<Vec<(Arc<Slot>, Home)>> {
    let mut out: Vec<Vec<(Arc<Slot>, Home)>> = Vec::new();
    let mut span_start = 0;
    for (slot, home) in wanted {
        let len = pack::record_len(&home.info);
        let joins = out
            .last()
            .and_then(|span| span.last())
            .is_some_and(|(_, prev)| {
                prev.pack == home.pack
                    && prev.offset + pack::record_len(&prev.info) == home.offset
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
    fn records_back_to_back_in_one_pack_share_a_get() {
        let rec = |len: u32| pack::record_len(&wanted("a", 0, len).1.info);
        let r = rec(1000);
        let cut = spans(vec![
            wanted("a", 8, 1000),
            wanted("a", 8 + r, 1000),
            wanted("a", 8 + 2 * r, 1000),
            // a gap: another record lies between
            wanted("a", 8 + 4 * r, 1000),
            // the same offset in another pack
            wanted("b", 8 + 5 * r, 1000),
        ]);
        assert_eq!(
            shape(&cut),
            vec![
                vec![
                    ("a".into(), 8),
                    ("a".into(), 8 + r),
                    ("a".into(), 8 + 2 * r)
                ],
                vec![("a".into(), 8 + 4 * r)],
                vec![("b".into(), 8 + 5 * r)],
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
