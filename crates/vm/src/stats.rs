//! The figures of SPEC §3 endpoint 3: human strings for people, exact numbers for programs.
//!
//! Definitions (all measured, none assumed):
//! - `logical`: bytes clients allocated, plus the bytes volumes hold written (with data or as
//!   zeros: a volume's never-written space is not counted, whatever its size); `zero`: the
//!   part of it that was zero runs or zeroed volume chunks; `volumes`: the volumes' part;
//! - `unique`: plaintext bytes of the distinct chunks stored (after dedup, before compression);
//! - `physical`: every byte the store holds (payloads, their headers, bytes freed but not yet
//!   reclaimed, manifests, index entries);
//! - ratios: `overall` = logical / physical; `dedup` = non-zero logical / unique;
//!   `compression` = unique / stored payload bytes. A ratio with nothing on either side is 1.

use std::time::{Duration, UNIX_EPOCH};

use aetherflow_engine::units::ratio;
use aetherflow_store::{BlockSummary, Checksum};
use serde::Serialize;

use crate::error::Result;
use crate::VirtualMemory;

/// Everything `GET /api/memory/stats` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub virtual_memory_capacity: String,
    pub used_compressed_space: String,
    pub available_space: String,
    pub utilization_percent: f64,
    pub total_blocks: u64,
    /// Volumes, snapshots and clones included.
    pub total_volumes: u64,
    pub compression_ratio: String,
    pub total_virtual_data: String,
    pub cache_usage: String,
    pub block_details: Vec<BlockDetail>,
    pub bytes: ByteFigures,
    pub ratios: Ratios,
    pub cache: CacheFigures,
    pub backend: &'static str,
    /// False for the in-memory backend: its blocks are lost when the process exits.
    pub durable: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ByteFigures {
    pub capacity: u64,
    pub logical: u64,
    pub physical: u64,
    pub zero: u64,
    /// The part of `logical` that volumes hold.
    pub volumes: u64,
    pub unique: u64,
    pub cache_used: u64,
    pub cache_limit: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    pub overall: f64,
    pub dedup: f64,
    pub compression: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CacheFigures {
    pub hits: u64,
    pub misses: u64,
}

/// One block in `blockDetails`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDetail {
    pub id: String,
    pub original_size: String,
    pub compressed_size: String,
    pub ratio: String,
    pub access_count: u64,
    /// SHA-256 hex of the content; `null` for seeded blocks, whose checksum is sealed so that
    /// it cannot confirm a guess of their content.
    pub checksum: Option<String>,
    pub original_bytes: u64,
    /// Payload bytes of the distinct chunks the block uses (shared chunks counted in full) plus
    /// its manifest.
    pub compressed_bytes: u64,
    pub seeded: bool,
    /// RFC 3339.
    pub created: String,
}

/// `109951162777600` → `"100.0TB"`: the compact form of SPEC §3, binary multiples.
pub fn compact_size(bytes: u64, decimals: usize) -> String {
    const UNITS: [&str; 7] = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    if value.fract() == 0.0 && decimals == 0 {
        return format!("{value:.0}{}", UNITS[unit]);
    }
    format!("{value:.decimals$}{}", UNITS[unit])
}

/// `bytes` in the unit `limit` is printed in, so that "12.50MB / 50MB" compares at a glance.
fn in_unit_of(bytes: u64, limit: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while limit / scale >= 1024 && unit + 1 < UNITS.len() {
        scale *= 1024;
        unit += 1;
    }
    format!("{:.2}{}", bytes as f64 / scale as f64, UNITS[unit])
}

/// `50MB` for a whole number of units, `50.50MB` otherwise.
fn cache_limit_text(limit: u64) -> String {
    let decimals = if limit >= 1024 && is_whole_unit(limit) {
        0
    } else {
        2
    };
    compact_size(limit, decimals)
}

fn is_whole_unit(bytes: u64) -> bool {
    let mut v = bytes;
    while v >= 1024 && v % 1024 == 0 {
        v /= 1024;
    }
    v < 1024
}

impl VirtualMemory {
    /// Store-wide figures without the per-block list (cheap: no index scan).
    pub fn summary(&self) -> Stats {
        let t = self.store.totals();
        let logical = t.logical + t.volume_bytes;
        let zero = t.zero + t.volume_zeroed;
        let capacity = self.config.capacity;
        let cache_used = self.cache.used();
        let cache_limit = self.cache.limit();
        Stats {
            virtual_memory_capacity: compact_size(capacity, 1),
            used_compressed_space: compact_size(t.physical, 2),
            available_space: compact_size(capacity.saturating_sub(logical), 2),
            utilization_percent: if capacity == 0 {
                0.0
            } else {
                logical as f64 * 100.0 / capacity as f64
            },
            total_blocks: t.blocks,
            total_volumes: t.volumes,
            compression_ratio: format!("{:.2}x", ratio(logical, t.physical)),
            total_virtual_data: compact_size(logical, 2),
            cache_usage: format!(
                "{} / {}",
                in_unit_of(cache_used, cache_limit),
                cache_limit_text(cache_limit)
            ),
            block_details: Vec::new(),
            bytes: ByteFigures {
                capacity,
                logical,
                physical: t.physical,
                zero,
                volumes: t.volume_bytes,
                unique: t.unique,
                cache_used,
                cache_limit,
            },
            ratios: Ratios {
                overall: ratio(logical, t.physical),
                dedup: ratio(logical - zero.min(logical), t.unique),
                compression: ratio(t.unique, t.stored),
            },
            cache: CacheFigures {
                hits: self.cache.hits(),
                misses: self.cache.misses(),
            },
            backend: self.store.backend(),
            durable: self.store.is_durable(),
        }
    }

    /// Every figure, with one entry per block (an index scan: its size grows with the blocks).
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = self.summary();
        self.block_details(&mut |d| {
            stats.block_details.push(d);
            true
        })?;
        Ok(stats)
    }

    /// Visits each block's details in id order, one at a time, until `visit` returns false.
    pub fn block_details(&self, visit: &mut dyn FnMut(BlockDetail) -> bool) -> Result<()> {
        self.store.blocks(&mut |b| visit(self.detail(b)))?;
        Ok(())
    }

    fn detail(&self, b: BlockSummary) -> BlockDetail {
        let m = &b.manifest;
        let compressed = m.stored_bytes() + m.encoded_len();
        let created = UNIX_EPOCH + Duration::from_secs(m.created);
        BlockDetail {
            id: b.id.to_string(),
            original_size: aetherflow_engine::units::format_bytes(m.size),
            compressed_size: aetherflow_engine::units::format_bytes(compressed),
            ratio: format!("{:.2}x", ratio(m.size, compressed)),
            access_count: b.accesses + self.pending_accesses(b.id),
            checksum: match &m.checksum {
                Checksum::Plain(d) => Some(aetherflow_engine::hex::encode(d)),
                Checksum::Sealed { .. } | Checksum::SealedById(_) => None,
            },
            original_bytes: m.size,
            compressed_bytes: compressed,
            seeded: m.seed.is_some(),
            created: humantime::format_rfc3339_seconds(created).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_the_contract_shows() {
        assert_eq!(compact_size(100 << 40, 1), "100.0TB");
        assert_eq!(compact_size(12 * 1048576 + 524288, 2), "12.50MB");
        assert_eq!(cache_limit_text(50 << 20), "50MB");
        assert_eq!(cache_limit_text((50 << 20) + 1), "50.00MB");
        assert_eq!(compact_size(0, 2), "0B");
        assert_eq!(in_unit_of(0, 50 << 20), "0.00MB");
        assert_eq!(in_unit_of(12 * 1048576 + 524288, 50 << 20), "12.50MB");
    }
}
