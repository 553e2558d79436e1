//! The in-memory backend: everything in RAM, like zram; lost when the process exits.
//!
//! One `RwLock` guards the maps: every operation here is a few map updates, while compression and
//! hashing happen outside the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::epoch::{EpochGate, Pin};
use crate::error::{Error, Result, What};
use crate::types::{payload_check, BlockId, BlockSummary, ChunkId, ChunkInfo, Damage, StagedAt};
use crate::{BlockStore, Manifest, NewChunk, StagedChunk, StoredChunk, Totals};

#[derive(Debug)]
struct Chunk {
    info: ChunkInfo,
    payload: Bytes,
    refs: u64,
}

#[derive(Debug, Default)]
struct State {
    chunks: HashMap<ChunkId, Chunk>,
    /// Chunks whose last reference went, with the epoch of their death.
    zombies: HashMap<ChunkId, u64>,
    blocks: BTreeMap<BlockId, (Manifest, u64)>,
    manifest_bytes: u64,
    totals: Totals,
}

/// RAM-only store. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<RwLock<State>>,
    gate: Arc<EpochGate>,
    salt: [u8; 16],
}

impl MemoryStore {
    pub fn new() -> Result<MemoryStore> {
        let salt = crate::types::random_salt()?;
        Ok(MemoryStore {
            state: Arc::default(),
            gate: EpochGate::starting_at(0),
            salt,
        })
    }

    /// Removes a block and drops its references; chunks left without one become zombies
    /// stamped `death`.
    fn release(&self, id: BlockId, death: u64) -> Result<Manifest> {
        let mut s = self.state.write().expect("store lock");
        let (manifest, _) = s
            .blocks
            .remove(&id)
            .ok_or(Error::NotFound(What::Block(id)))?;
        for chunk_id in manifest.chunk_refs() {
            if let Some(c) = s.chunks.get_mut(chunk_id) {
                c.refs -= 1;
                if c.refs == 0 {
                    s.zombies.insert(*chunk_id, death);
                }
            }
        }
        s.totals.blocks -= 1;
        s.totals.logical -= manifest.size;
        s.totals.zero -= manifest.zero_bytes();
        s.manifest_bytes -= manifest.encoded_len();
        Ok(manifest)
    }

    fn reclaim(&self) {
        let mut s = self.state.write().expect("store lock");
        let settled: Vec<ChunkId> = s
            .zombies
            .iter()
            .filter(|(_, &death)| self.gate.is_settled(death))
            .map(|(id, _)| *id)
            .collect();
        for id in settled {
            s.zombies.remove(&id);
            if let Some(c) = s.chunks.remove(&id) {
                s.totals.chunks -= 1;
                s.totals.unique -= u64::from(c.info.raw_len);
                s.totals.stored -= u64::from(c.info.stored_len);
            }
        }
    }
}

impl State {
    fn refresh_physical(&mut self) {
        self.totals.physical = self.totals.stored
            + self.totals.chunks * crate::types::INDEX_BYTES_PER_CHUNK
            + self.manifest_bytes;
    }
}

impl BlockStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn domain_salt(&self) -> [u8; 16] {
        self.salt
    }

    fn pin(&self) -> Pin {
        self.gate.pin()
    }

    fn find_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkInfo>>> {
        let s = self.state.read().expect("store lock");
        Ok(ids
            .iter()
            .map(|id| s.chunks.get(id).filter(|c| c.refs > 0).map(|c| c.info))
            .collect())
    }

    fn stage_chunks(&self, chunks: &[NewChunk]) -> Result<Vec<StagedChunk>> {
        Ok(chunks
            .iter()
            .map(|c| StagedChunk {
                info: c.info(),
                at: StagedAt::Memory(c.payload.clone()),
            })
            .collect())
    }

    fn commit_block(
        &self,
        id: BlockId,
        manifest: &Manifest,
        staged: Vec<StagedChunk>,
    ) -> Result<()> {
        manifest.validate()?;
        let mut s = self.state.write().expect("store lock");
        if s.blocks.contains_key(&id) {
            return Err(Error::AlreadyExists(What::Block(id)));
        }
        let staged: HashMap<ChunkId, StagedChunk> =
            staged.into_iter().map(|c| (c.info.id, c)).collect();
        for chunk_id in manifest.chunk_refs() {
            if !s.chunks.contains_key(chunk_id) && !staged.contains_key(chunk_id) {
                return Err(Error::Corrupt(format!(
                    "block {id} refers to chunk {chunk_id:?}, which is neither stored nor staged"
                )));
            }
        }
        for (chunk_id, c) in staged {
            if s.chunks.contains_key(&chunk_id) {
                continue;
            }
            let StagedAt::Memory(payload) = c.at else {
                return Err(Error::Corrupt("chunk staged by another backend".into()));
            };
            s.totals.chunks += 1;
            s.totals.unique += u64::from(c.info.raw_len);
            s.totals.stored += u64::from(c.info.stored_len);
            s.chunks.insert(
                chunk_id,
                Chunk {
                    info: c.info,
                    payload,
                    refs: 0,
                },
            );
        }
        for chunk_id in manifest.chunk_refs() {
            let c = s.chunks.get_mut(chunk_id).expect("checked above");
            c.refs += 1;
            if c.refs == 1 {
                s.zombies.remove(chunk_id);
            }
        }
        s.totals.blocks += 1;
        s.totals.logical += manifest.size;
        s.totals.zero += manifest.zero_bytes();
        s.manifest_bytes += manifest.encoded_len();
        s.blocks.insert(id, (manifest.clone(), 0));
        drop(s);
        self.reclaim();
        self.state.write().expect("store lock").refresh_physical();
        Ok(())
    }

    fn manifest(&self, id: BlockId) -> Result<Manifest> {
        let s = self.state.read().expect("store lock");
        s.blocks
            .get(&id)
            .map(|(m, _)| m.clone())
            .ok_or(Error::NotFound(What::Block(id)))
    }

    fn chunk(&self, id: &ChunkId) -> Result<StoredChunk> {
        let s = self.state.read().expect("store lock");
        let c = s.chunks.get(id).ok_or(Error::NotFound(What::Chunk(*id)))?;
        if payload_check(&c.payload) != c.info.check {
            return Err(Error::Corrupt(format!(
                "chunk {id:?}: payload check mismatch"
            )));
        }
        Ok(StoredChunk {
            info: c.info,
            payload: c.payload.clone(),
        })
    }

    fn free_block(&self, id: BlockId) -> Result<Manifest> {
        let manifest = self.gate.record(|death| self.release(id, death))?;
        self.reclaim();
        self.state.write().expect("store lock").refresh_physical();
        Ok(manifest)
    }

    fn blocks(&self, visit: &mut dyn FnMut(BlockSummary) -> bool) -> Result<()> {
        // Copy one block at a time so that a slow visitor never holds the lock for long.
        let mut after: Option<BlockId> = None;
        loop {
            let next = {
                let s = self.state.read().expect("store lock");
                let mut range = match after {
                    Some(a) => s
                        .blocks
                        .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                    None => s.blocks.range(..),
                };
                range.next().map(|(id, (m, n))| BlockSummary {
                    id: *id,
                    manifest: m.clone(),
                    accesses: *n,
                })
            };
            let Some(summary) = next else { return Ok(()) };
            after = Some(summary.id);
            if !visit(summary) {
                return Ok(());
            }
        }
    }

    fn accesses(&self, id: BlockId) -> Result<u64> {
        let s = self.state.read().expect("store lock");
        s.blocks
            .get(&id)
            .map(|(_, n)| *n)
            .ok_or(Error::NotFound(What::Block(id)))
    }

    fn add_accesses(&self, counts: &[(BlockId, u64)]) -> Result<()> {
        let mut s = self.state.write().expect("store lock");
        for (id, n) in counts {
            if let Some((_, total)) = s.blocks.get_mut(id) {
                *total += n;
            }
        }
        Ok(())
    }

    fn totals(&self) -> Totals {
        self.state.read().expect("store lock").totals
    }

    fn verify(&self, read_data: bool, report: &mut dyn FnMut(Damage)) -> Result<()> {
        let s = self.state.read().expect("store lock");
        let mut refs: HashMap<ChunkId, u64> = HashMap::new();
        for (id, (m, _)) in &s.blocks {
            for c in m.chunk_refs() {
                *refs.entry(*c).or_default() += 1;
                if !s.chunks.contains_key(c) {
                    report(Damage::Block {
                        id: *id,
                        what: format!("refers to missing chunk {c:?}"),
                    });
                }
            }
        }
        for (id, c) in &s.chunks {
            let want = refs.get(id).copied().unwrap_or(0);
            if c.refs != want {
                report(Damage::Index {
                    what: format!(
                        "chunk {id:?} counts {} references, blocks make {want}",
                        c.refs
                    ),
                });
            }
            if read_data && payload_check(&c.payload) != c.info.check {
                report(Damage::Chunk {
                    id: *id,
                    what: "payload check mismatch".into(),
                });
            }
        }
        Ok(())
    }
}
