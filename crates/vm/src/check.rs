//! `check`: is every block intact? Names each damaged block and why.
//!
//! Without `read_data` only the index is checked against itself (fast). With it, every stored
//! chunk's bytes are checked against their store checksum — encrypted ones too, no seed needed —
//! and every block whose content can be opened (unseeded ones, and those of a seed given) is
//! read whole and its SHA-256 compared.

use std::collections::HashMap;

use aetherflow_engine::crypto::Seed;
use aetherflow_store::{BlockId, Damage};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::read::Caching;
use crate::VirtualMemory;

/// What a check found.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// Blocks in the store.
    pub blocks: u64,
    /// Blocks whose whole content was read and matched its SHA-256.
    pub blocks_verified: u64,
    /// Seeded blocks whose content could not be opened (no or another seed given); their
    /// chunks' stored bytes were still checked.
    pub seeded_not_opened: u64,
    /// Each damaged block, in id order, with the first reason found.
    pub damaged_blocks: Vec<DamagedBlock>,
    /// Damaged chunks, by identity (hex), with what is wrong.
    pub damaged_chunks: Vec<(String, String)>,
    /// Inconsistencies of the index itself.
    pub index_problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DamagedBlock {
    pub id: String,
    pub why: String,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_blocks.is_empty()
            && self.damaged_chunks.is_empty()
            && self.index_problems.is_empty()
    }
}

impl VirtualMemory {
    /// Checks the store; see the module documentation. An `Err` means the check could not run.
    pub fn check(&self, read_data: bool, seed: Option<&Seed>) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut bad_chunks = HashMap::new();
        let mut bad_blocks: HashMap<BlockId, String> = HashMap::new();
        self.store.verify(read_data, &mut |d| match d {
            Damage::Chunk { id, what } => {
                report
                    .damaged_chunks
                    .push((aetherflow_engine::hex::encode(&id.0), what.clone()));
                bad_chunks.insert(id, what);
            }
            Damage::Block { id, what } => {
                bad_blocks.entry(id).or_insert(what);
            }
            Damage::Index { what } => report.index_problems.push(what),
        })?;
        let mut ids = Vec::new();
        self.store.blocks(&mut |b| {
            report.blocks += 1;
            if let Some((chunk, what)) = b
                .manifest
                .chunk_refs()
                .find_map(|c| bad_chunks.get(c).map(|w| (c, w)))
            {
                bad_blocks.entry(b.id).or_insert_with(|| {
                    format!("chunk {}: {what}", aetherflow_engine::hex::encode(&chunk.0))
                });
            }
            ids.push((b.id, b.manifest.seed.is_some()));
            true
        })?;
        if read_data {
            for (id, seeded) in ids {
                if bad_blocks.contains_key(&id) {
                    continue;
                }
                match self.stream(id, seed, None, &mut std::io::sink(), Caching::Skip) {
                    Ok(_) => report.blocks_verified += 1,
                    Err(Error::SeedRequired(_) | Error::WrongSeed(_)) if seeded => {
                        report.seeded_not_opened += 1
                    }
                    Err(Error::NotFound(_)) => {} // freed while we looked
                    Err(Error::Corrupt { what, .. }) => {
                        bad_blocks.insert(id, what);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut damaged: Vec<_> = bad_blocks.into_iter().collect();
        damaged.sort_by_key(|(id, _)| *id);
        report.damaged_blocks = damaged
            .into_iter()
            .map(|(id, why)| DamagedBlock {
                id: id.to_string(),
                why,
            })
            .collect();
        Ok(report)
    }
}
