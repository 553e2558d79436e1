//! What one server knows of the bucket: blocks and their manifests, packs and their chunks, which
//! packs are condemned, and from those the reference count of every chunk.
//!
//! The bucket is the truth; the catalog is a cache of it: blocks as the log says, packs, marks
//! and volumes as listings and the log say. This server's own changes enter at once, other
//! servers' at the next refresh. Every listed entry remembers the refresh generation that last
//! saw it, so a listing that started before an entry was added never removes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use aetherflow_store::{BlockId, ChunkId, ChunkInfo, Extent, Manifest, Totals};

use crate::log_record::Origin;

mod volumes;
pub use volumes::{KnownVolume, LayerState, VolumeTotals};

/// One copy of a chunk: a record in a pack.
#[derive(Debug, Clone)]
pub struct Home {
    pub pack: Arc<str>,
    pub offset: u64,
    pub info: ChunkInfo,
}

/// A pack that exists in the bucket.
#[derive(Debug, Clone)]
pub struct PackEntry {
    pub size: u64,
    /// Last modified in the bucket's clock; unknown for a pack this server just wrote, until
    /// the next listing.
    pub modified_ms: Option<i64>,
    pub chunks: Vec<(u64, ChunkInfo)>,
    /// For packs this process wrote: the epoch stamp of the upload (see `aetherflow_store::epoch`).
    pub sealed: Option<u64>,
    pub condemned: Option<Condemned>,
    /// Named by a record of the log (or written by this server, whose record names it before
    /// any commit that needs it): a server that starts from the log knows it. A pack known
    /// only from a listing (its record was never written) never keeps a chunk's live copy.
    pub logged: bool,
    seen: u64,
}

/// A pack marked for deletion once the grace period has passed and nothing needs it.
#[derive(Debug, Clone, Copy)]
pub struct Condemned {
    /// When the mark was written, in the bucket's clock; unknown until listed.
    pub at_ms: Option<i64>,
    /// For marks this process wrote: the epoch stamp of the condemnation.
    pub stamp: Option<u64>,
    seen: u64,
}

/// A block as a record of the log added it.
#[derive(Debug, Clone)]
pub struct KnownBlock {
    pub manifest: Arc<Manifest>,
    /// The record that added it: a free names it, so that the free of an earlier block under
    /// the same id (an import may reuse a freed id) never removes this one.
    pub origin: Origin,
    /// Its id was chosen by the caller and is held by a `blocks/ID` object.
    pub imported: bool,
}

/// The references to one chunk, and the lengths it was counted with in the live figures.
#[derive(Debug, Clone, Copy)]
struct Refs {
    count: u32,
    raw: u32,
    stored: u32,
}

/// The catalog itself; the store keeps it behind one lock (`crate::view`).
#[derive(Debug, Default)]
pub struct Catalog {
    generation: u64,
    blocks: BTreeMap<BlockId, KnownBlock>,
    /// Blocks added under an id that is live under another record: an import that reused the
    /// id of a block whose free has not been read yet. One takes the id when that free comes.
    waiting: HashMap<BlockId, Vec<KnownBlock>>,
    /// Number of blocks referring to each chunk (each block counted once).
    refs: HashMap<ChunkId, Refs>,
    homes: HashMap<ChunkId, Vec<Home>>,
    packs: BTreeMap<Arc<str>, PackEntry>,
    /// Packs whose index could not be read, with why.
    bad_packs: BTreeMap<String, String>,
    live: Totals,
    manifest_bytes: u64,
    pack_bytes: u64,
    /// Volume heads and the layers of their maps (`volumes`).
    volumes: volumes::Volumes,
    /// Chunks that lost their last reference, ever: a sweep is worth it when this moved.
    released: u64,
}

/// Distinct chunks of a manifest with their lengths.
fn distinct_chunks(m: &Manifest) -> impl Iterator<Item = (ChunkId, u32, u32)> + '_ {
    let mut seen = HashSet::new();
    m.extents.iter().filter_map(move |e| match e {
        Extent::Chunk {
            id,
            raw_len,
            stored_len,
        } if seen.insert(*id) => Some((*id, *raw_len, *stored_len)),
        _ => None,
    })
}

impl Catalog {
    /// Starts a refresh: entries seen from now on carry a newer generation.
    pub fn begin_refresh(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    // ----- blocks -----

    pub fn block(&self, id: BlockId) -> Option<Arc<Manifest>> {
        self.blocks.get(&id).map(|b| Arc::clone(&b.manifest))
    }

    pub fn has_block(&self, id: BlockId) -> bool {
        self.blocks.contains_key(&id)
    }

    pub fn block_ids(&self) -> Vec<BlockId> {
        self.blocks.keys().copied().collect()
    }

    /// The record that added block `id`, and whether it was imported.
    pub fn block_origin(&self, id: BlockId) -> Option<(Origin, bool)> {
        self.blocks.get(&id).map(|b| (b.origin.clone(), b.imported))
    }

    /// Records a block; `false` if it was already known (or waits for the free of another
    /// block under its id: see `waiting`).
    pub fn add_block(&mut self, id: BlockId, block: KnownBlock) -> bool {
        if let Some(live) = self.blocks.get(&id) {
            let waiting = self.waiting.entry(id).or_default();
            if live.origin != block.origin && !waiting.iter().any(|w| w.origin == block.origin) {
                waiting.push(block);
            }
            return false;
        }
        let m = &block.manifest;
        for (chunk, raw, stored) in distinct_chunks(m) {
            self.add_ref(chunk, raw, stored);
        }
        self.live.blocks += 1;
        self.live.logical += m.size;
        self.live.zero += m.zero_bytes();
        self.manifest_bytes += m.encoded_len();
        self.blocks.insert(id, block);
        true
    }

    /// Removes block `id` as added by record `origin` (nothing if another record added the
    /// block this server knows under that id); returns its manifest.
    pub fn remove_block(&mut self, id: BlockId, origin: &Origin) -> Option<Arc<Manifest>> {
        if self.blocks.get(&id)?.origin != *origin {
            if let Some(waiting) = self.waiting.get_mut(&id) {
                waiting.retain(|w| w.origin != *origin);
            }
            return None;
        }
        let b = self.blocks.remove(&id).expect("present");
        for (chunk, _, _) in distinct_chunks(&b.manifest) {
            self.drop_ref(chunk);
        }
        self.live.blocks -= 1;
        self.live.logical -= b.manifest.size;
        self.live.zero -= b.manifest.zero_bytes();
        self.manifest_bytes -= b.manifest.encoded_len();
        let next = self.waiting.get_mut(&id).and_then(Vec::pop);
        if self.waiting.get(&id).is_some_and(Vec::is_empty) {
            self.waiting.remove(&id);
        }
        if let Some(next) = next {
            self.add_block(id, next);
        }
        Some(b.manifest)
    }

    // ----- chunks -----

    /// One more reference to a chunk (from a block, or a row of a volume layer). The first one
    /// counts the chunk in the live figures with the lengths it gives.
    fn add_ref(&mut self, chunk: ChunkId, raw: u32, stored: u32) {
        let r = self.refs.entry(chunk).or_insert(Refs {
            count: 0,
            raw,
            stored,
        });
        r.count += 1;
        if r.count == 1 {
            self.live.chunks += 1;
            self.live.unique += u64::from(r.raw);
            self.live.stored += u64::from(r.stored);
        }
    }

    /// One reference fewer; the last one takes the chunk out of the live figures, with the
    /// lengths it was counted with.
    fn drop_ref(&mut self, chunk: ChunkId) {
        if let Some(r) = self.refs.get_mut(&chunk) {
            r.count -= 1;
            if r.count == 0 {
                let r = self.refs.remove(&chunk).expect("present");
                self.released += 1;
                self.live.chunks -= 1;
                self.live.unique -= u64::from(r.raw);
                self.live.stored -= u64::from(r.stored);
            }
        }
    }

    /// The plaintext length of a chunk a pack the catalog knows holds.
    fn raw_len_of(&self, id: &ChunkId) -> Option<u32> {
        self.homes.get(id)?.first().map(|h| h.info.raw_len)
    }

    /// How many chunks lost their last reference so far (see [`Catalog`]'s field).
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Whether some block refers to the chunk.
    pub fn is_live(&self, id: &ChunkId) -> bool {
        self.refs.contains_key(id)
    }

    /// The chunk's description if a block refers to it and a pack that is not condemned
    /// holds it: what dedup may rely on.
    pub fn find(&self, id: &ChunkId) -> Option<ChunkInfo> {
        if !self.is_live(id) {
            return None;
        }
        self.usable_home(id).map(|h| h.info)
    }

    /// A copy of the chunk in a pack that is not condemned.
    pub fn usable_home(&self, id: &ChunkId) -> Option<&Home> {
        self.homes.get(id)?.iter().find(|h| {
            self.packs
                .get(&h.pack)
                .is_some_and(|p| p.condemned.is_none())
        })
    }

    /// Every known copy, those in packs that are not condemned first.
    pub fn homes(&self, id: &ChunkId) -> Vec<Home> {
        let mut homes = self.homes.get(id).cloned().unwrap_or_default();
        homes.sort_by_key(|h| self.packs.get(&h.pack).map(|p| p.condemned.is_some()));
        homes
    }

    pub fn has_home(&self, id: &ChunkId) -> bool {
        self.homes.get(id).is_some_and(|h| !h.is_empty())
    }

    /// The copy that counts as live for compaction: in the first pack (by name) that is not
    /// condemned, among those the log names if any does. Other copies are dead weight in their
    /// packs. (Were a copy only a listing shows kept, a compaction could drop the copy the log
    /// names, and a server that starts from the log would find the chunk nowhere.)
    pub fn keeper(&self, id: &ChunkId) -> Option<Arc<str>> {
        self.homes
            .get(id)?
            .iter()
            .filter_map(|h| {
                let p = self.packs.get(&h.pack)?;
                p.condemned
                    .is_none()
                    .then(|| (!p.logged, Arc::clone(&h.pack)))
            })
            .min()
            .map(|(_, name)| name)
    }

    // ----- packs -----

    /// Notes a pack whose index cannot be read, so that it is not fetched again and again.
    pub fn note_bad_pack(&mut self, name: &str, why: String) {
        self.bad_packs.insert(name.to_string(), why);
    }

    pub fn is_bad_pack(&self, name: &str) -> bool {
        self.bad_packs.contains_key(name)
    }

    /// Packs whose index cannot be read, with why.
    pub fn bad_packs(&self) -> impl Iterator<Item = (&String, &String)> {
        self.bad_packs.iter()
    }

    pub fn pack(&self, name: &str) -> Option<&PackEntry> {
        self.packs.get(name)
    }

    pub fn pack_names(&self) -> Vec<Arc<str>> {
        self.packs.keys().cloned().collect()
    }

    /// Records a pack and its chunks (or, if known, that it was listed again); `logged`: see
    /// [`PackEntry::logged`].
    pub fn add_pack(
        &mut self,
        name: &str,
        size: u64,
        modified_ms: Option<i64>,
        chunks: Vec<(u64, ChunkInfo)>,
        sealed: Option<u64>,
        logged: bool,
    ) {
        if let Some(p) = self.packs.get_mut(name) {
            p.seen = self.generation;
            p.logged |= logged;
            if modified_ms.is_some() {
                p.modified_ms = modified_ms;
            }
            return;
        }
        let name: Arc<str> = Arc::from(name);
        for (offset, info) in &chunks {
            self.homes.entry(info.id).or_default().push(Home {
                pack: Arc::clone(&name),
                offset: *offset,
                info: *info,
            });
        }
        self.pack_bytes += size;
        self.bad_packs.remove(&*name);
        self.packs.insert(
            name,
            PackEntry {
                size,
                modified_ms,
                chunks,
                sealed,
                condemned: None,
                logged,
                seen: self.generation,
            },
        );
    }

    /// Marks a listed pack as still there; `false` if it is not known yet.
    pub fn saw_pack(&mut self, name: &str, modified_ms: i64) -> bool {
        match self.packs.get_mut(name) {
            Some(p) => {
                p.seen = self.generation;
                p.modified_ms = Some(modified_ms);
                true
            }
            None => false,
        }
    }

    pub fn remove_pack(&mut self, name: &str) {
        let Some((name, p)) = self.packs.remove_entry(name) else {
            return;
        };
        for (_, info) in &p.chunks {
            if let Some(homes) = self.homes.get_mut(&info.id) {
                homes.retain(|h| h.pack != name);
                if homes.is_empty() {
                    self.homes.remove(&info.id);
                }
            }
        }
        self.pack_bytes -= p.size;
    }

    /// After a complete listing of packs started at `generation`: forgets packs that are gone.
    pub fn confirm_packs(&mut self, listed: &HashSet<String>, generation: u64) {
        let gone: Vec<Arc<str>> = self
            .packs
            .iter()
            .filter(|(n, p)| p.seen < generation && !listed.contains(&***n))
            .map(|(n, _)| Arc::clone(n))
            .collect();
        for name in gone {
            self.remove_pack(&name);
        }
        self.bad_packs.retain(|n, _| listed.contains(n));
    }

    pub fn condemn(&mut self, name: &str, at_ms: Option<i64>, stamp: Option<u64>) {
        let generation = self.generation;
        if let Some(p) = self.packs.get_mut(name) {
            match &mut p.condemned {
                Some(c) => {
                    c.seen = generation;
                    if at_ms.is_some() {
                        c.at_ms = at_ms;
                    }
                }
                None => {
                    p.condemned = Some(Condemned {
                        at_ms,
                        stamp,
                        seen: generation,
                    })
                }
            }
        }
    }

    pub fn pardon(&mut self, name: &str) {
        if let Some(p) = self.packs.get_mut(name) {
            p.condemned = None;
        }
    }

    /// After a complete listing of condemnation marks started at `generation`.
    pub fn confirm_condemned(&mut self, listed: &HashSet<String>, generation: u64) {
        for (name, p) in self.packs.iter_mut() {
            if p.condemned.is_some_and(|c| c.seen < generation) && !listed.contains(&**name) {
                p.condemned = None;
            }
        }
    }

    // ----- figures -----

    /// Live figures, with `physical` = packs + manifests + volume objects + `other_bytes`.
    pub fn totals(&mut self, other_bytes: u64) -> Totals {
        let v = self.volume_totals();
        Totals {
            physical: self.pack_bytes + self.manifest_bytes + v.object_bytes + other_bytes,
            volumes: v.volumes,
            volume_bytes: v.written + v.zeroed,
            volume_zeroed: v.zeroed,
            ..self.live
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherflow_store::{Checksum, Codec};

    fn info(n: u8) -> ChunkInfo {
        ChunkInfo {
            id: ChunkId::plain(&[n]),
            codec: Codec::Raw,
            nonce_stored: false,
            raw_len: 100,
            stored_len: 100,
            check: [0; 16],
        }
    }

    fn manifest(chunks: &[u8]) -> Arc<Manifest> {
        Arc::new(Manifest {
            size: 100 * chunks.len() as u64,
            created: 0,
            checksum: Checksum::Plain([0; 32]),
            seed: None,
            extents: chunks
                .iter()
                .map(|n| Extent::Chunk {
                    id: info(*n).id,
                    raw_len: 100,
                    stored_len: 100,
                })
                .collect(),
        })
    }

    fn origin(seq: u64) -> Origin {
        Origin {
            writer: Arc::from("w"),
            seq,
        }
    }

    fn block(manifest: Arc<Manifest>, seq: u64) -> KnownBlock {
        KnownBlock {
            manifest,
            origin: origin(seq),
            imported: false,
        }
    }

    #[test]
    fn an_id_reused_after_a_free_is_the_new_block_whatever_order_the_records_come_in() {
        let id = BlockId::random();
        let (old, new) = (manifest(&[1]), manifest(&[2]));
        // Read in the order written: the old block, its free, the new one.
        let mut c = Catalog::default();
        c.add_block(id, block(Arc::clone(&old), 1));
        c.remove_block(id, &origin(1));
        c.add_block(id, block(Arc::clone(&new), 2));
        assert_eq!(c.block(id), Some(Arc::clone(&new)));
        // The new block read before the old one's free.
        let mut c = Catalog::default();
        c.add_block(id, block(Arc::clone(&old), 1));
        c.add_block(id, block(Arc::clone(&new), 2));
        assert_eq!(c.block(id), Some(Arc::clone(&old)), "not freed yet");
        c.remove_block(id, &origin(1));
        assert_eq!(c.block(id), Some(Arc::clone(&new)));
        assert!(c.is_live(&info(2).id) && !c.is_live(&info(1).id));
        assert_eq!(c.live.blocks, 1);
        // A free of the old block read again changes nothing.
        assert!(c.remove_block(id, &origin(1)).is_none());
        assert_eq!(c.block(id), Some(new));
    }

    #[test]
    fn references_follow_blocks() {
        let mut c = Catalog::default();
        let (a, b) = (BlockId::random(), BlockId::random());
        c.add_block(a, block(manifest(&[1, 2, 2]), 1));
        c.add_block(b, block(manifest(&[2]), 2));
        assert_eq!((c.live.chunks, c.live.unique, c.live.blocks), (2, 200, 2));
        c.remove_block(a, &origin(1));
        assert!(!c.is_live(&info(1).id) && c.is_live(&info(2).id));
        assert_eq!(c.totals(0).chunks, 1);
    }

    #[test]
    fn a_listing_older_than_an_entry_does_not_remove_it() {
        let mut c = Catalog::default();
        let generation = c.begin_refresh();
        c.add_pack("old", 10, Some(1), vec![(8, info(1))], None, true);
        let listing = c.begin_refresh(); // a listing starts, then this server writes a pack
        c.add_pack("mine", 10, None, vec![(8, info(2))], Some(0), true);
        c.confirm_packs(&HashSet::new(), listing);
        assert!(c.pack("mine").is_some(), "written after the listing began");
        assert!(
            c.pack("old").is_none(),
            "gone from a listing that began after it"
        );
        assert!(generation < listing);
    }

    #[test]
    fn condemned_copies_are_not_found_and_not_kept() {
        let mut c = Catalog::default();
        c.add_block(BlockId::random(), block(manifest(&[1]), 1));
        c.add_pack("p0", 10, Some(1), vec![(8, info(1))], None, false);
        c.add_pack("p1", 10, Some(1), vec![(8, info(1))], None, true);
        c.add_pack("p2", 10, Some(1), vec![(8, info(1))], None, true);
        assert_eq!(
            c.keeper(&info(1).id).as_deref(),
            Some("p1"),
            "a copy the log names is kept before one only a listing shows"
        );
        c.condemn("p0", None, None);
        c.condemn("p1", None, None);
        assert_eq!(c.keeper(&info(1).id).as_deref(), Some("p2"));
        c.condemn("p2", None, None);
        assert_eq!(c.find(&info(1).id), None);
        assert!(c.has_home(&info(1).id), "the bytes are still there");
    }
}
