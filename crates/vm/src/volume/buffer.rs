//! The write-back buffer: chunks written since they were last committed, newest content only.
//!
//! Writes land here (whole chunks: a partial write was merged with the chunk's content first;
//! range operations go to the map directly); reads look here first; a write-back commits a snapshot of it and then
//! drops each entry it committed, unless a newer write replaced it meanwhile (generations tell).
//! Bounded in bytes by its owner, which writes back when it grows past its limit.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// What a buffered chunk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// New bytes (the whole chunk).
    Data(Bytes),
    /// Zeros: a chunk whose new content is all zeros (it costs no data, buffered or stored).
    Zero,
}

#[derive(Debug, Clone)]
struct Entry {
    content: Pending,
    generation: u64,
    rewrite: bool,
}

/// One entry as a write-back takes it.
#[derive(Debug, Clone)]
pub struct Taken {
    pub index: u64,
    pub content: Pending,
    pub generation: u64,
    /// Whether the chunk's new content patches content the store held (see [`Buffer::put`]).
    pub rewrite: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Buffer {
    chunks: Mutex<BTreeMap<u64, Entry>>,
    /// Bytes of data held (zeros and holes cost none).
    bytes: AtomicU64,
    generations: AtomicU64,
}

/// What one buffered entry costs besides its bytes (its place in the map): counted, so that
/// zero chunks, which hold no bytes, cannot grow the buffer without bound.
const ENTRY_COST: u64 = 64;

/// Memory an entry holds, as the buffer's limit counts it.
fn data_len(p: &Pending) -> u64 {
    match p {
        Pending::Data(b) => b.len() as u64 + ENTRY_COST,
        Pending::Zero => ENTRY_COST,
    }
}

impl Buffer {
    /// The buffered content of chunk `index` and whether it is a rewrite, if any.
    pub fn get(&self, index: u64) -> Option<(Pending, bool)> {
        self.chunks
            .lock()
            .expect("buffer lock")
            .get(&index)
            .map(|e| (e.content.clone(), e.rewrite))
    }

    /// The buffered chunks in `range`, in order.
    pub fn range(&self, range: Range<u64>) -> Vec<(u64, Pending)> {
        self.chunks
            .lock()
            .expect("buffer lock")
            .range(range)
            .map(|(i, e)| (*i, e.content.clone()))
            .collect()
    }

    /// Makes `content` the newest content of chunk `index`. `rewrite` says that it patches
    /// content the store held, a chunk written piecemeal after it was written back: such a
    /// chunk is likely to be patched again (random writes), and its write-back is the cost of
    /// each patch.
    pub fn put(&self, index: u64, content: Pending, rewrite: bool) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let added = data_len(&content);
        let old = self.chunks.lock().expect("buffer lock").insert(
            index,
            Entry {
                content,
                generation,
                rewrite,
            },
        );
        self.bytes.fetch_add(added, Ordering::Relaxed);
        if let Some(old) = old {
            self.bytes
                .fetch_sub(data_len(&old.content), Ordering::Relaxed);
        }
    }

    /// Forgets every buffered chunk in `range` (a range operation that goes to the map at once).
    pub fn drop_range(&self, range: Range<u64>) {
        let mut chunks = self.chunks.lock().expect("buffer lock");
        let keys: Vec<u64> = chunks.range(range).map(|(i, _)| *i).collect();
        for k in keys {
            if let Some(e) = chunks.remove(&k) {
                self.bytes
                    .fetch_sub(data_len(&e.content), Ordering::Relaxed);
            }
        }
    }

    /// Everything buffered now, with generations, for a write-back.
    pub fn snapshot(&self) -> Vec<Taken> {
        self.chunks
            .lock()
            .expect("buffer lock")
            .iter()
            .map(|(i, e)| Taken {
                index: *i,
                content: e.content.clone(),
                generation: e.generation,
                rewrite: e.rewrite,
            })
            .collect()
    }

    /// After a write-back committed `done`: drops each entry still at the committed generation.
    pub fn committed(&self, done: &[(u64, u64)]) {
        let mut chunks = self.chunks.lock().expect("buffer lock");
        for &(index, generation) in done {
            if chunks
                .get(&index)
                .is_some_and(|e| e.generation == generation)
            {
                if let Some(e) = chunks.remove(&index) {
                    self.bytes
                        .fetch_sub(data_len(&e.content), Ordering::Relaxed);
                }
            }
        }
    }

    /// Memory held: the bytes of the chunks, and a little for each entry.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.chunks.lock().expect("buffer lock").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(snap: &[Taken]) -> Vec<(u64, u64)> {
        snap.iter().map(|t| (t.index, t.generation)).collect()
    }

    #[test]
    fn a_newer_write_survives_the_write_back_of_an_older_one() {
        let b = Buffer::default();
        b.put(3, Pending::Data(Bytes::from_static(b"old")), false);
        let snap = b.snapshot();
        b.put(3, Pending::Data(Bytes::from_static(b"newer")), true);
        b.put(4, Pending::Zero, false);
        b.committed(&done(&snap));
        assert_eq!(
            b.get(3),
            Some((Pending::Data(Bytes::from_static(b"newer")), true))
        );
        assert_eq!(b.bytes(), 5 + 2 * ENTRY_COST);
        let snap = b.snapshot();
        assert_eq!(
            snap.iter()
                .map(|t| (t.index, t.rewrite))
                .collect::<Vec<_>>(),
            [(3, true), (4, false)]
        );
        b.committed(&done(&snap));
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        b.put(1, Pending::Data(Bytes::from_static(b"x")), false);
        b.put(9, Pending::Zero, false);
        b.drop_range(0..5);
        assert_eq!(b.range(0..100), vec![(9, Pending::Zero)]);
        assert_eq!(b.bytes(), ENTRY_COST);
    }
}
