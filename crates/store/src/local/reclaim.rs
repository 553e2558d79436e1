//! Getting space back: deleting chunks no block uses, and compacting packs that are mostly dead.
//!
//! Runs after every free and on open. Each step is its own transaction and each is safe to stop
//! at any point: a crash between steps leaves only dead bytes, which the next pass reclaims.
//! After a volume's write-back between flushes, a lighter pass runs instead (see
//! [`LocalStore::reclaim_relaxed`]).

use std::sync::atomic::Ordering;

use redb::{ReadableDatabase, ReadableTable};

use super::index::{
    get_chunk, location_key, read_counters, ChunkEntry, CHUNKS, LOCATIONS, META, PACKS, ZOMBIES,
};
use super::pack::PACK_HEADER_LEN;
use super::LocalStore;
use crate::error::Result;
use crate::types::ChunkId;

/// Zombies deleted per transaction, so one pass never holds the writer for long.
const ZOMBIE_BATCH: usize = 10_000;

/// Packs' worth of chunk bytes that relaxed passes may free before a full pass compacts them.
const RELAXED_FREED_PACKS: u64 = 4;

impl LocalStore {
    /// Whether no running allocation can still commit chunks staged into `pack`.
    fn pack_settled(&self, pack: u32) -> bool {
        self.packs.is_settled(pack)
    }

    /// A pack's committed (end, live bytes), read now; `None` if the index has no such pack.
    fn pack_row(&self, pack: u32) -> Result<Option<(u64, u64)>> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(PACKS)?.get(pack)?.map(|v| v.value()))
    }

    /// One reclaim pass; skipped when another thread is already running one.
    pub(crate) fn reclaim(&self) -> Result<()> {
        let Ok(_guard) = self.reclaiming.try_lock() else {
            return Ok(());
        };
        self.freed_relaxed.store(0, Ordering::Relaxed);
        while self.delete_zombies(true)?.0 == ZOMBIE_BATCH {}
        self.seal_mostly_dead_active()?;
        let packs: Vec<(u32, u64, u64)> = {
            let r = self.db.begin_read()?;
            let t = r.open_table(PACKS)?;
            t.iter()?
                .map(|row| {
                    let (k, v) = row?;
                    let (end, live) = v.value();
                    Ok((k.value(), end, live))
                })
                .collect::<Result<_>>()?
        };
        let known: std::collections::HashSet<u32> = packs.iter().map(|p| p.0).collect();
        for (pack, end, live) in packs {
            if !self.pack_settled(pack) {
                continue;
            }
            if live == 0 {
                self.drop_pack(pack)?;
            } else if (live as f64)
                < (end.saturating_sub(PACK_HEADER_LEN) as f64) * self.options.compact_below
            {
                self.compact(pack)?;
            }
        }
        // Packs sealed this run that never got a committed chunk hold only dead bytes. The listing
        // above may be older than a commit into them, so look again once they are settled (no
        // commit can come after that).
        let orphans: Vec<u32> = self
            .packs
            .sealed_numbers()
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        for pack in orphans {
            if self.pack_settled(pack) && self.pack_row(pack)?.is_none() {
                self.packs.delete(pack)?;
            }
        }
        Ok(())
    }

    /// The pass after a volume write-back between flushes, which must not cost an fsync per
    /// write: chunks nothing uses are deleted in relaxed transactions (a crash brings them back
    /// as zombies, which the next pass deletes again), and the steps that must follow a durable
    /// commit (compaction, deleting pack files) wait for the next flush, or for a full pass once
    /// the bytes freed meanwhile add up to a few packs ([`LocalStore::reclaim_if_due`]), so that
    /// the disk does not fill with them.
    pub(crate) fn reclaim_relaxed(&self) -> Result<()> {
        let Ok(_guard) = self.reclaiming.try_lock() else {
            return Ok(());
        };
        let mut freed = 0;
        loop {
            let (deleted, bytes) = self.delete_zombies(false)?;
            freed += bytes;
            if deleted < ZOMBIE_BATCH {
                break;
            }
        }
        self.freed_relaxed.fetch_add(freed, Ordering::Relaxed);
        Ok(())
    }

    /// The full pass, if light passes have freed [`RELAXED_FREED_PACKS`] packs' worth since the
    /// last one: called after a write-back, outside the commit, so that the pass (its syncs,
    /// its compaction) holds up no writer.
    pub(crate) fn reclaim_if_due(&self) -> Result<()> {
        if self.freed_relaxed.load(Ordering::Relaxed)
            >= RELAXED_FREED_PACKS * self.options.pack_size
        {
            self.reclaim()?;
        }
        Ok(())
    }

    /// Deletes up to a batch of zombies whose death no running allocation can have seen, in a
    /// durable or a relaxed transaction; answers how many were looked at and the bytes freed.
    fn delete_zombies(&self, durable: bool) -> Result<(usize, u64)> {
        let settled: Vec<[u8; 32]> = {
            let r = self.db.begin_read()?;
            let z = r.open_table(ZOMBIES)?;
            let mut v = Vec::new();
            for row in z.iter()? {
                let (k, death) = row?;
                if self.gate.is_settled(death.value()) {
                    v.push(k.value());
                    if v.len() == ZOMBIE_BATCH {
                        break;
                    }
                }
            }
            v
        };
        if settled.is_empty() {
            return Ok((0, 0));
        }
        let txn = if durable {
            self.begin_write()?
        } else {
            self.begin_relaxed(&[])?
        };
        let mut freed = 0;
        let counters = {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut locations = txn.open_table(LOCATIONS)?;
            let mut packs = txn.open_table(PACKS)?;
            let mut zombies = txn.open_table(ZOMBIES)?;
            let mut meta = txn.open_table(META)?;
            let mut counters = read_counters(&meta)?;
            for id in &settled {
                // Look again inside the transaction: the chunk may have been revived and have died
                // again since, under a stamp that is not settled yet.
                let death = zombies.get(*id)?.map(|v| v.value());
                match death {
                    Some(death) if self.gate.is_settled(death) => {}
                    _ => continue,
                }
                zombies.remove(*id)?;
                let Some(entry) = get_chunk(&chunks, &ChunkId(*id))? else {
                    continue;
                };
                if entry.refs > 0 {
                    continue; // revived by a commit
                }
                chunks.remove(*id)?;
                locations.remove(entry.location_key())?;
                freed += entry.record_len();
                let recorded = packs.get(entry.pack)?.map(|v| v.value());
                if let Some((end, live)) = recorded {
                    packs.insert(entry.pack, (end, live.saturating_sub(entry.record_len())))?;
                }
                counters.remove_chunk(&entry.info);
            }
            meta.insert("totals", counters.encode().as_slice())?;
            counters
        };
        txn.commit()?;
        self.set_counters(counters);
        Ok((settled.len(), freed))
    }

    /// Seals the active pack when most of it is dead, so that compaction can reach it.
    fn seal_mostly_dead_active(&self) -> Result<()> {
        let Some(active) = self.packs.active_number() else {
            return Ok(());
        };
        let (end, live) = {
            let r = self.db.begin_read()?;
            let t = r.open_table(PACKS)?;
            t.get(active)?.map_or((0, 0), |v| v.value())
        };
        let used = end.saturating_sub(PACK_HEADER_LEN);
        if used > 0 && (live as f64) < (used as f64) * self.options.compact_below {
            self.packs.seal(active);
        }
        Ok(())
    }

    /// Forgets a pack with no live chunk and deletes its file; does nothing if a commit made
    /// part of it live since it was listed.
    fn drop_pack(&self, pack: u32) -> Result<()> {
        let txn = self.begin_write()?;
        let emptied = {
            let mut packs = txn.open_table(PACKS)?;
            let live = packs.get(pack)?.map(|v| v.value().1);
            if live == Some(0) {
                packs.remove(pack)?;
            }
            live == Some(0)
        };
        txn.commit()?;
        if emptied {
            self.packs.delete(pack)?;
        }
        Ok(())
    }

    /// Copies a pack's live chunks to the active pack, points the index at the copies, and
    /// deletes the old pack. A chunk freed meanwhile keeps its old entry (and goes with it).
    fn compact(&self, pack: u32) -> Result<()> {
        let entries: Vec<ChunkEntry> = {
            let r = self.db.begin_read()?;
            let locations = r.open_table(LOCATIONS)?;
            let chunks = r.open_table(CHUNKS)?;
            let mut v = Vec::new();
            for row in locations.range(location_key(pack, 0)..location_key(pack + 1, 0))? {
                let (_, id) = row?;
                if let Some(e) = get_chunk(&chunks, &ChunkId(id.value()))? {
                    v.push(e);
                }
            }
            v
        };
        let _pin = self.gate.pin();
        let mut payloads = Vec::with_capacity(entries.len());
        for e in &entries {
            // A damaged chunk is left where it is, for `verify` to name; the pack stays.
            match self.packs.read(e.pack, e.offset, &e.info) {
                Ok(p) => payloads.push(p),
                Err(err) if err.is_corrupt() => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        let records: Vec<_> = entries
            .iter()
            .zip(&payloads)
            .map(|(e, p)| (e.info, &p[..]))
            .collect();
        let moved = if records.is_empty() {
            None
        } else {
            let (to, offsets) = self.packs.append(&records)?;
            self.packs.sync(to)?;
            Some((to, offsets))
        };
        let txn = self.begin_write()?;
        let emptied = {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut locations = txn.open_table(LOCATIONS)?;
            let mut packs = txn.open_table(PACKS)?;
            if let Some((to, offsets)) = moved {
                for (old, offset) in entries.iter().zip(offsets) {
                    let Some(mut cur) = get_chunk(&chunks, &old.info.id)? else {
                        continue;
                    };
                    if cur.pack != pack || cur.offset != old.offset {
                        continue;
                    }
                    locations.remove(cur.location_key())?;
                    cur.pack = to;
                    cur.offset = offset;
                    chunks.insert(cur.info.id.0, cur.encode())?;
                    locations.insert(cur.location_key(), cur.info.id.0)?;
                    let len = cur.record_len();
                    let (end, live) = packs.get(pack)?.map_or((0, 0), |v| v.value());
                    packs.insert(pack, (end, live.saturating_sub(len)))?;
                    let (end, live) = packs.get(to)?.map_or((0, 0), |v| v.value());
                    packs.insert(to, (end.max(offset + len), live + len))?;
                }
            }
            let live = packs.get(pack)?.map_or(0, |v| v.value().1);
            if live == 0 {
                packs.remove(pack)?;
            }
            live == 0
        };
        txn.commit()?;
        if emptied {
            self.packs.delete(pack)?;
        }
        Ok(())
    }
}
