//! Volumes: the virtual memory as thin, writable block devices of any size up to the capacity.
//!
//! A volume is cut into fixed-size aligned chunks ([`crate::VmConfig::volume_chunk_size`]), the
//! unit of its map and of a read-modify-write. Chunks written whole together are stored
//! together: an aligned group of them (up to [`GROUP_BYTES`]) that a write-back finds all
//! freshly written becomes one stored chunk, which each of their map rows names (see
//! [`Volume::unit_of`]); a chunk patched later is stored on its own. So a stream compresses in
//! large pieces while a small random write re-encodes one small chunk. A
//! write of any size and alignment lands in the write-back buffer ([`buffer`]) as whole chunks:
//! a partial one is read, patched and kept under a lock of its own (a stripe), so that
//! concurrent writers of one chunk never lose each other's bytes. The buffer is written back
//! (chunks identified, deduplicated, compressed, sealed, staged, and the map committed in one
//! transaction) when it passes its size limit, and durably at every flush. Reads see the
//! buffer first, then the map, then the chunk through the shared cache.
//!
//! Durability is a disk's: a flush makes every write answered before it durable; after a crash
//! the volume reads as of the last flush or later, each chunk old or new, never torn.

pub(crate) mod buffer;
mod coders;
mod manage;
mod readahead;
mod writeback;

/// The registry of open and unlocked volumes, as the manager keeps it.
pub(crate) mod manage_registry {
    pub(crate) use super::manage::Registry;
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aetherflow_engine::codec::is_zero;
use aetherflow_engine::crypto::{ChunkId, Keys};
use aetherflow_store::{BlockStore, MapEntry};
use bytes::Bytes;
use rayon::prelude::*;

pub use manage::{VolumeBytes, VolumeHandle, VolumeInfo};

use crate::cache::BlockCache;
use crate::error::{Error, Result};
use buffer::{Buffer, Pending};

/// One piece of a read, in order: bytes, or zeros the caller may keep sparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    Data(Bytes),
    Zeros(u64),
}

impl Span {
    pub fn len(&self) -> u64 {
        match self {
            Span::Data(b) => b.len() as u64,
            Span::Zeros(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a range of a volume is allocated: `hole` (never written, or trimmed) and `zero` (reads
/// as zeros). Data is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub len: u64,
    pub hole: bool,
    pub zero: bool,
}

/// Where a read may take stored chunks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// The buffer and the cache only: the read answers nothing if it would need the store.
    MemoryOnly,
    /// The store too; a scan's chunks stay out of the cache (see [`SCAN_CHUNKS`]).
    Read,
    /// The store too, every chunk fetched kept in the cache.
    Warm,
}

/// Part of one chunk, as (offset, length) in the volume.
type Partial = Option<(u64, u64)>;

/// Stripes of chunk locks: a chunk's read-modify-write holds its stripe.
const STRIPES: usize = 256;

/// A read that fetches more chunks than this from the store is a scan (a copy, a backup, a
/// conversion: each byte read once) and leaves them out of the cache, where they would only push
/// out what random readers and writers use again; it decodes into memory it then frees, which
/// the allocator hands to the next request warm.
const SCAN_CHUNKS: usize = 2;

/// Map rows one [`Volume::extents`] call reads at most; the answer then covers less, and the
/// caller asks again from where it ends.
const EXTENT_ROWS: usize = 64 * 1024;

/// The most bytes one stored chunk covers: an aligned group of a volume's chunks written whole
/// together is stored as one (see the module documentation). 64 KiB compresses as well as the
/// larger sizes measured, about as well as qcow2's zstd clusters (docs/design.md).
pub const GROUP_BYTES: u32 = 64 * 1024;

/// Bytes of a volume fetched ahead of a sequential reader on a remote store (see `readahead`).
const READ_AHEAD_BYTES: u64 = 8 << 20;

/// Chunks of zeros written with `NO_HOLE` in one request that are kept as zero entries. A larger
/// request (over 16 Mi chunks: 256 GiB at 16 KiB) deallocates instead: it still reads as
/// zeros, but is reported as a hole, so that a request's cost stays bounded.
pub const ZERO_ROWS_MAX: u64 = 16 << 20;

/// An open volume. Shared by every connection that serves it (see the module documentation).
pub struct Volume {
    name: String,
    size: u64,
    chunk_size: u32,
    /// Chunks per group (see [`GROUP_BYTES`]); 1 for chunks of that size or larger.
    group: u64,
    read_only: bool,
    store: Arc<dyn BlockStore>,
    cache: Arc<BlockCache>,
    keys: Option<Arc<Keys>>,
    level: i32,
    buffer: Buffer,
    stripes: Vec<Mutex<()>>,
    /// One write-back (or range change) at a time, so that they reach the map in order.
    writeback: Mutex<()>,
    /// The buffer is written back past this many bytes.
    limit: u64,
    /// For a store that fetches ahead when told (a remote one): sequential readers' streams.
    read_ahead: Option<Mutex<readahead::ReadAhead>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("buffered", &self.buffer.bytes())
            .finish()
    }
}

impl Volume {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn store(&self) -> &dyn BlockStore {
        &*self.store
    }

    /// Memory the write-back buffer holds: what was written and not yet written back.
    pub fn buffered(&self) -> u64 {
        self.buffer.bytes()
    }

    fn chunk_len(&self, index: u64) -> usize {
        aetherflow_store::volume::Geometry {
            size: self.size,
            chunk_size: self.chunk_size,
        }
        .chunk_len(index) as usize
    }

    /// The chunks of the group of chunk `index`: from its first to past its last.
    fn group_of(&self, index: u64) -> std::ops::Range<u64> {
        let first = index - index % self.group;
        let chunks = self.size.div_ceil(u64::from(self.chunk_size));
        first..(first + self.group).min(chunks)
    }

    /// Bytes of the group of chunk `index`.
    fn group_len(&self, index: u64) -> usize {
        self.group_of(index).map(|i| self.chunk_len(i)).sum()
    }

    /// Chunk `index`'s bytes out of the plaintext of the stored chunk its map row names: all of
    /// it when the chunk was stored on its own, its part when its whole group was stored as one
    /// (the lengths tell: a group of several chunks is longer than any one of them).
    fn unit_of(&self, index: u64, plain: &Bytes) -> Result<Bytes> {
        Ok(plain.slice(self.unit_range(index, plain.len())?))
    }

    /// Where chunk `index`'s bytes lie in a stored plaintext of `plain_len` bytes (see
    /// [`Volume::unit_of`]).
    fn unit_range(&self, index: u64, plain_len: usize) -> Result<std::ops::Range<usize>> {
        let len = self.chunk_len(index);
        if plain_len == len {
            return Ok(0..len);
        }
        let group = self.group_of(index);
        if group.end - group.start > 1 && plain_len == self.group_len(index) {
            let at = ((index - group.start) * u64::from(self.chunk_size)) as usize;
            return Ok(at..at + len);
        }
        Err(self.corrupt(format!(
            "chunk {index} names stored content of {plain_len} bytes, neither its own {len} \
             nor its group's"
        )))
    }

    fn check(&self, offset: u64, len: u64, writing: bool) -> Result<()> {
        if writing && self.read_only {
            return Err(Error::VolumeRefused(
                aetherflow_store::volume::snapshot_refusal(&self.name),
            ));
        }
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes at {offset} run past the end of volume {} ({} bytes)",
                self.name, self.size
            )));
        }
        Ok(())
    }

    fn store_error(&self, e: aetherflow_store::Error) -> Error {
        Error::from_volume_store(&self.name, e)
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> Error {
        Error::VolumeCorrupt {
            volume: self.name.clone(),
            what: what.to_string(),
        }
    }

    /// The map entries of `chunks` (holes left out).
    fn entries(&self, chunks: std::ops::Range<u64>) -> Result<BTreeMap<u64, MapEntry>> {
        let mut out = BTreeMap::new();
        self.store
            .volume_map(&self.name, chunks, &mut |i, e| {
                out.insert(i, e);
                true
            })
            .map_err(|e| self.store_error(e))?;
        Ok(out)
    }

    /// The plaintext of stored chunks, from the cache or decoded (several at once) and
    /// verified; decoded ones enter the cache if `keep`.
    fn chunks(&self, ids: &[ChunkId], keep: bool) -> Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = ids.iter().map(|id| self.cache.chunk(id)).collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out.into_iter().map(|b| b.expect("all cached")).collect());
        }
        self.store
            .prefetch(&missing.iter().map(|&i| ids[i]).collect::<Vec<_>>());
        let keys = self.keys.as_ref();
        let decode = |&i: &usize| -> Result<(usize, Bytes)> {
            let stored = self
                .store
                .chunk(&ids[i])
                .map_err(|e| self.store_error(e.missing_is_corrupt()))?;
            let plain = coders::with_decoder(keys, |decoder| {
                crate::read::open_stored(&stored, &ids[i], decoder, keys.map(|k| &**k))
            })
            .map_err(|e| match e {
                aetherflow_engine::Error::Io(io) => Error::Internal(format!("chunk codec: {io}")),
                other => self.corrupt(other),
            })?;
            Ok((i, Bytes::from(plain)))
        };
        // One chunk (a read-modify-write, a small read) is decoded here: handing it to the
        // pool would cost more than it saves.
        let decoded: Vec<(usize, Bytes)> = if missing.len() == 1 {
            vec![decode(&missing[0])?]
        } else {
            missing.par_iter().map(decode).collect::<Result<_>>()?
        };
        for (i, plain) in decoded {
            if keep {
                self.cache.insert_chunk(ids[i], plain.clone());
            }
            out[i] = Some(plain);
        }
        Ok(out.into_iter().map(|b| b.expect("all filled")).collect())
    }

    /// The whole current content of chunk `index`, for a read-modify-write, and whether it
    /// is (or patches) content the store held: the new content is then a rewrite (see
    /// [`buffer::Buffer::put`]).
    ///
    /// With `memory_only`, `None` if the content is stored and not in the cache.
    fn current(&self, index: u64, memory_only: bool) -> Result<Option<(Vec<u8>, bool)>> {
        let len = self.chunk_len(index);
        match self.buffer.get(index) {
            Some((Pending::Data(b), rewrite)) => return Ok(Some((b.to_vec(), rewrite))),
            Some((Pending::Zero, rewrite)) => return Ok(Some((vec![0; len], rewrite))),
            None => {}
        }
        match self.entries(index..index + 1)?.remove(&index) {
            Some(MapEntry::Chunk { id, .. }) => {
                let (plain, cached) = match self.cache.chunk(&id) {
                    Some(plain) => (plain, true),
                    None if memory_only => return Ok(None),
                    None => (self.chunks(&[id], false)?.remove(0), false),
                };
                if plain.len() == len {
                    // The chunk's own content is about to be superseded, so it leaves the
                    // cache (another copy of it, in a snapshot or a duplicate, is decoded
                    // again when read): random writes would otherwise fill the cache with dead
                    // versions and push out the live ones. The patch reuses its buffer if no
                    // reader holds it.
                    self.cache.forget_chunk(&id);
                    return Ok(Some((Vec::from(plain), true)));
                }
                // A group's content stays cached: the rest of the group still reads it, and
                // random writes patch its other chunks next.
                let unit = self.unit_of(index, &plain)?;
                if !cached {
                    self.cache.insert_chunk(id, plain);
                }
                Ok(Some((unit.to_vec(), true)))
            }
            _ => Ok(Some((vec![0; len], false))),
        }
    }

    /// Chunk `index`'s new content once `piece` is written `within` it, and whether it is a
    /// rewrite: the piece itself if it covers the chunk, else the chunk's current content
    /// patched (`None` with `memory_only` if that content is not in memory).
    fn patched(
        &self,
        index: u64,
        within: usize,
        piece: &[u8],
        memory_only: bool,
    ) -> Result<Option<(Vec<u8>, bool)>> {
        if within == 0 && piece.len() == self.chunk_len(index) {
            return Ok(Some((piece.to_vec(), false)));
        }
        let Some((mut current, rewrite)) = self.current(index, memory_only)? else {
            return Ok(None);
        };
        current[within..within + piece.len()].copy_from_slice(piece);
        Ok(Some((current, rewrite)))
    }

    /// Buffers `content` as chunk `index`'s newest; the caller holds the chunk's stripe. A
    /// chunk left all zeros waits as a zero chunk: no data, and block status says zero before
    /// the write-back as after it.
    fn buffer_chunk(&self, index: u64, content: Vec<u8>, rewrite: bool) {
        let pending = if is_zero(&content) {
            Pending::Zero
        } else {
            Pending::Data(Bytes::from(content))
        };
        self.buffer.put(index, pending, rewrite);
    }

    fn stripe(&self, index: u64) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[(index as usize) % STRIPES]
            .lock()
            .expect("stripe lock")
    }

    /// `len` bytes from `offset`, as data and zero spans that cover the range exactly.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<Span>> {
        let spans = self.read_spans(offset, len, Fetch::Read)?;
        Ok(spans.expect("a read that may fetch always answers"))
    }

    /// Reads `len` bytes from `offset` into the cache, scan or not (`NBD_CMD_CACHE`).
    pub fn warm(&self, offset: u64, len: usize) -> Result<()> {
        self.read_spans(offset, len, Fetch::Warm)?;
        Ok(())
    }

    /// [`Volume::read_at`] if every chunk the read needs is buffered or in the cache, so that
    /// no chunk is fetched or decoded: cheap enough for a caller that must not block for long
    /// (the map lookup reads the store's index, whose pages are usually in memory). `None`
    /// otherwise.
    pub fn read_cached(&self, offset: u64, len: usize) -> Result<Option<Vec<Span>>> {
        self.read_spans(offset, len, Fetch::MemoryOnly)
    }

    fn read_spans(&self, offset: u64, len: usize, fetch: Fetch) -> Result<Option<Vec<Span>>> {
        self.check(offset, len as u64, false)?;
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        let cs = u64::from(self.chunk_size);
        let (first, last) = (offset / cs, (offset + len as u64 - 1) / cs);
        let buffered: BTreeMap<u64, Pending> =
            self.buffer.range(first..last + 1).into_iter().collect();
        let mapped = self.entries(first..last + 1)?;
        // The stored chunks the read needs, fetched together.
        let mut wanted: Vec<ChunkId> = (first..=last)
            .filter(|i| !buffered.contains_key(i))
            .filter_map(|i| mapped.get(&i).and_then(|e| e.chunk()))
            .collect();
        // The chunks of a group name one stored chunk.
        wanted.dedup();
        let fetched: BTreeMap<ChunkId, Bytes> = if fetch == Fetch::MemoryOnly {
            let mut cached = BTreeMap::new();
            for id in wanted {
                match self.cache.chunk(&id) {
                    Some(plain) => cached.insert(id, plain),
                    None => return Ok(None),
                };
            }
            cached
        } else {
            if fetch == Fetch::Read {
                self.read_ahead(first, last);
            }
            let keep = fetch == Fetch::Warm || wanted.len() <= SCAN_CHUNKS;
            wanted
                .iter()
                .copied()
                .zip(self.chunks(&wanted, keep)?)
                .collect()
        };
        let mut spans: Vec<Span> = Vec::new();
        let mut push = |span: Span| match (spans.last_mut(), &span) {
            (Some(Span::Zeros(n)), Span::Zeros(m)) => *n += m,
            _ => spans.push(span),
        };
        // Consecutive parts of one stored plaintext (a group's chunks) go out as one span:
        // (its identity, from, to).
        let mut run: Option<(ChunkId, usize, usize)> = None;
        for index in first..=last {
            let start = index * cs;
            let lo = (offset.max(start) - start) as usize;
            let hi = ((offset + len as u64).min(start + cs) - start) as usize;
            let stored = match (buffered.get(&index), mapped.get(&index)) {
                (None, Some(MapEntry::Chunk { id, .. })) => Some(*id),
                _ => None,
            };
            if let Some(id) = stored {
                let at = self.unit_range(index, fetched[&id].len())?.start;
                match &mut run {
                    Some((run_id, _, to)) if *run_id == id && *to == at + lo => *to = at + hi,
                    _ => {
                        if let Some((id, from, to)) = run.take() {
                            push(Span::Data(fetched[&id].slice(from..to)));
                        }
                        run = Some((id, at + lo, at + hi));
                    }
                }
                continue;
            }
            if let Some((id, from, to)) = run.take() {
                push(Span::Data(fetched[&id].slice(from..to)));
            }
            push(match buffered.get(&index) {
                Some(Pending::Data(b)) => Span::Data(b.slice(lo..hi)),
                _ => Span::Zeros((hi - lo) as u64),
            });
        }
        if let Some((id, from, to)) = run.take() {
            push(Span::Data(fetched[&id].slice(from..to)));
        }
        Ok(Some(spans))
    }

    /// As a read of chunks `first..=last` begins: tells the store which stored chunks a
    /// sequential reader needs now and next, if this read continues one (see `readahead`).
    fn read_ahead(&self, first: u64, last: u64) {
        let Some(streams) = &self.read_ahead else {
            return;
        };
        let Some(ahead) = streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .on_read(first, last)
        else {
            return;
        };
        let chunks = self.size.div_ceil(u64::from(self.chunk_size));
        let ahead = ahead.start.min(chunks)..ahead.end.min(chunks);
        // Chunks waiting in the write buffer are read from there, not from the store.
        let buffered: std::collections::HashSet<u64> = self
            .buffer
            .range(ahead.clone())
            .into_iter()
            .map(|(index, _)| index)
            .collect();
        let mut ids: Vec<ChunkId> = Vec::new();
        let mapped = self
            .store
            .volume_map(&self.name, ahead, &mut |index, entry| {
                // The chunks of a group name one stored chunk.
                if let Some(id) = entry
                    .chunk()
                    .filter(|id| ids.last() != Some(id) && !buffered.contains(&index))
                {
                    ids.push(id);
                }
                true
            });
        if let Err(e) = mapped {
            // Only a hint: the reads themselves say what is wrong.
            tracing::debug!("volume {}: no read-ahead: {e}", self.name);
            return;
        }
        ids.retain(|id| !self.cache.holds_chunk(id));
        self.store.prefetch(&ids);
    }

    /// Writes `data` at `offset` (any size and alignment); with `durable`, flushed before this
    /// returns (FUA).
    pub fn write_at(&self, offset: u64, data: &[u8], durable: bool) -> Result<()> {
        self.check(offset, data.len() as u64, true)?;
        self.make_room()?;
        let cs = u64::from(self.chunk_size);
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let index = pos / cs;
            let within = (pos % cs) as usize;
            let len = self.chunk_len(index);
            let n = (len - within).min(data.len() - at);
            let piece = &data[at..at + n];
            let _stripe = self.stripe(index);
            let (content, rewrite) = self
                .patched(index, within, piece, false)?
                .expect("may fetch");
            self.buffer_chunk(index, content, rewrite);
            at += n;
        }
        self.after_write(durable)
    }

    /// [`Volume::write_at`] of a write inside one chunk, not durable, if it can be done at
    /// once: the chunk's current content is buffered, cached or never written, its stripe is
    /// free, and the buffer has room without a write-back (below its limit, or past it while
    /// another writer writes back). `Ok(false)`, with nothing written, otherwise: the caller
    /// then calls [`Volume::write_at`], which may wait. Cheap enough for a caller that must not
    /// block for long (as [`Volume::read_cached`]).
    pub fn write_in_memory(&self, offset: u64, data: &[u8]) -> Result<bool> {
        self.check(offset, data.len() as u64, true)?;
        let cs = u64::from(self.chunk_size);
        let index = offset / cs;
        let within = (offset % cs) as usize;
        let len = self.chunk_len(index);
        if data.is_empty() || within + data.len() > len {
            return Ok(false);
        }
        let held = self.buffer.bytes();
        // Past the limit with no write-back under way, this write is the one to start it.
        if held > 2 * self.limit || (held > self.limit && self.writeback.try_lock().is_ok()) {
            return Ok(false);
        }
        let Ok(_stripe) = self.stripes[(index as usize) % STRIPES].try_lock() else {
            return Ok(false);
        };
        let Some((content, rewrite)) = self.patched(index, within, data, true)? else {
            return Ok(false);
        };
        self.buffer_chunk(index, content, rewrite);
        Ok(true)
    }

    /// Makes `len` bytes from `offset` read as zeros. With `punch`, whole chunks are
    /// deallocated (holes); without, they are kept as zero chunks (no data either way).
    pub fn write_zeroes(&self, offset: u64, len: u64, punch: bool, durable: bool) -> Result<()> {
        self.check(offset, len, true)?;
        self.make_room()?;
        let (head, whole, tail) = self.split(offset, len);
        for (at, n) in head.into_iter().chain(tail) {
            self.write_at(at, &vec![0u8; n as usize], false)?;
        }
        if !whole.is_empty() {
            if punch || whole.end - whole.start > ZERO_ROWS_MAX {
                self.clear(whole)?;
            } else {
                self.zero(whole)?;
            }
        }
        self.after_write(durable)
    }

    /// The client no longer needs `len` bytes from `offset`: whole chunks become holes, the
    /// parts of chunks at either end are left as they are.
    pub fn trim(&self, offset: u64, len: u64, durable: bool) -> Result<()> {
        self.check(offset, len, true)?;
        let (_, whole, _) = self.split(offset, len);
        if !whole.is_empty() {
            self.clear(whole)?;
        }
        self.after_write(durable)
    }

    /// A range as (the partial chunk at its start, the whole chunks, the partial one at its
    /// end), partial parts as (offset, length).
    fn split(&self, offset: u64, len: u64) -> (Partial, std::ops::Range<u64>, Partial) {
        let cs = u64::from(self.chunk_size);
        let end = offset + len;
        if len == 0 {
            return (None, 0..0, None);
        }
        let first_whole = offset.div_ceil(cs);
        // The last chunk may be short: it is whole if the range reaches the volume's end.
        let last_whole = if end == self.size {
            self.size.div_ceil(cs)
        } else {
            end / cs
        };
        if first_whole >= last_whole {
            return (Some((offset, len)), 0..0, None);
        }
        let head = (offset < first_whole * cs).then(|| (offset, first_whole * cs - offset));
        let tail_start = last_whole * cs;
        let tail = (end > tail_start && end != self.size).then(|| (tail_start, end - tail_start));
        (head, first_whole..last_whole, tail)
    }

    /// Writes back (durably) every write answered so far, on every connection.
    pub fn flush(&self) -> Result<()> {
        let guard = self.writeback.lock().expect("write-back lock");
        self.write_back(&guard, true)
    }

    /// Before a write is buffered: far past the limit, the writer waits for a write-back; if
    /// that fails (the store is full, say), the write is refused unbuffered, so that the buffer
    /// stays bounded whatever the store does.
    fn make_room(&self) -> Result<()> {
        if self.buffer.bytes() <= 2 * self.limit {
            return Ok(());
        }
        let guard = self.writeback.lock().expect("write-back lock");
        if self.buffer.bytes() <= 2 * self.limit {
            return Ok(());
        }
        self.write_back(&guard, false)?;
        drop(guard);
        self.housekeep();
        Ok(())
    }

    /// The store's deferred work after a write-back, with no lock of the volume held: other
    /// writers go on meanwhile, and other write-backs too. Its failure is the store's to retry
    /// (the next pass); the write-back it follows is committed.
    fn housekeep(&self) {
        if let Err(e) = self.store.housekeep() {
            tracing::warn!("volume {}: housekeeping after a write-back: {e}", self.name);
        }
    }

    fn after_write(&self, durable: bool) -> Result<()> {
        if durable {
            return self.flush();
        }
        if self.buffer.bytes() <= self.limit {
            return Ok(());
        }
        // Past the limit: one writer writes back while the others go on. This write is
        // buffered already, and reads see it: a failure here is the next flush's to report (as
        // a disk reports a failed write-back of its cache), and the next writes' once the
        // buffer is far past the limit.
        if let Ok(guard) = self.writeback.try_lock() {
            let written = self.write_back(&guard, false);
            drop(guard);
            match written {
                Ok(()) => self.housekeep(),
                Err(e) => tracing::warn!(
                    "volume {}: write-back failed, kept buffered: {e}",
                    self.name
                ),
            }
        }
        Ok(())
    }

    /// Allocation of `len` bytes from `offset`, in order, from the first byte; it may cover
    /// less than asked (the caller asks again from where it ends).
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Allocation>> {
        self.check(offset, len, false)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let cs = u64::from(self.chunk_size);
        let end = offset + len;
        let (first, stop) = (offset / cs, end.div_ceil(cs));
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Data,
            Zero,
            Hole,
        }
        let mut states: BTreeMap<u64, State> = BTreeMap::new();
        let mut rows = 0usize;
        let mut covered = stop;
        self.store
            .volume_map(&self.name, first..stop, &mut |i, e| {
                if rows == EXTENT_ROWS {
                    covered = i;
                    return false;
                }
                rows += 1;
                states.insert(
                    i,
                    match e {
                        MapEntry::Zero => State::Zero,
                        MapEntry::Chunk { .. } => State::Data,
                        MapEntry::Hole => State::Hole,
                    },
                );
                true
            })
            .map_err(|e| self.store_error(e))?;
        for (i, p) in self.buffer.range(first..covered) {
            states.insert(
                i,
                match p {
                    Pending::Data(_) => State::Data,
                    Pending::Zero => State::Zero,
                },
            );
        }
        let until = (covered * cs).min(end);
        let mut out: Vec<Allocation> = Vec::new();
        let mut push = |from: u64, to: u64, state: State| {
            if to <= from {
                return;
            }
            let (hole, zero) = match state {
                State::Data => (false, false),
                State::Zero => (false, true),
                State::Hole => (true, true),
            };
            match out.last_mut() {
                Some(last) if last.hole == hole && last.zero == zero => last.len += to - from,
                _ => out.push(Allocation {
                    len: to - from,
                    hole,
                    zero,
                }),
            }
        };
        let mut cursor = offset;
        for (index, state) in states.range(first..covered) {
            let start = (index * cs).max(offset);
            let stop = ((index + 1) * cs).min(until);
            push(cursor, start, State::Hole);
            push(start, stop, *state);
            cursor = stop;
        }
        push(cursor, until, State::Hole);
        Ok(out)
    }
}

impl Volume {
    /// Drops what is buffered, unwritten: for a volume being deleted.
    fn discard(&self) {
        let _guard = self.writeback.lock().expect("write-back lock");
        self.buffer.drop_range(0..u64::MAX);
    }
}

impl Drop for Volume {
    /// The last handle writes back what is buffered, durably: a server that stops cleanly keeps
    /// every write, flushed or not.
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        if let Err(e) = self.flush() {
            tracing::error!("volume {}: writing back on close failed: {e}", self.name);
        }
    }
}
