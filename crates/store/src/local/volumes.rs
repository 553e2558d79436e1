//! Volumes in the local store: records, layers and map rows in the index, in the same
//! transactions as the chunk reference counts they change.
//!
//! | table | key | value |
//! |---|---|---|
//! | `volumes` | name | top layer u64, then the [`VolumeRecord`] encoding |
//! | `layers` | layer u64 | (parent layer or 0, references: volumes on top of it and layers above it) |
//! | `vmap` | layer << 64 \| chunk index | [`MapEntry`] (37 bytes) |
//!
//! A writable volume's top layer is its own (one reference); a snapshot of it freezes that
//! layer and gives the volume a new empty one on top. Reading a chunk looks through the layers
//! top down; a hole row in an upper layer hides what a lower one holds (a trim over snapshot
//! data). Each map row that names a chunk holds one reference to it, so freeing a layer frees
//! exactly what its rows held, and chunks shared with blocks, other volumes and snapshots stay.

use std::collections::HashMap;
use std::ops::Range;

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::index::{get_chunk, read_counters, ChunkEntry, Counters, CHUNKS, META, ZOMBIES};
use super::LocalStore;
use crate::error::{Error, Result, What};
use crate::types::{ChunkId, StagedAt};
use crate::volume::{validate_name, MapEntry, VolumeRecord};
use crate::StagedChunk;

pub const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
pub const LAYERS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("layers");
pub const VMAP: TableDefinition<u128, [u8; MapEntry::LEN]> = TableDefinition::new("vmap");

/// What the usage figures count for a map row (its key, value and the B-tree's share).
pub const MAP_BYTES_PER_ROW: u64 = 64;

fn key(layer: u64, index: u64) -> u128 {
    (u128::from(layer) << 64) | u128::from(index)
}

fn keys(layer: u64, chunks: &Range<u64>) -> Range<u128> {
    key(layer, chunks.start)..key(layer, chunks.end)
}

/// A volume's row: its top layer and its record.
fn encode_row(top: u64, record: &VolumeRecord) -> Vec<u8> {
    let mut v = top.to_le_bytes().to_vec();
    v.extend_from_slice(&record.encode());
    v
}

fn decode_row(name: &str, v: &[u8]) -> Result<(u64, VolumeRecord)> {
    let top = v
        .get(..8)
        .ok_or_else(|| Error::Corrupt(format!("row of volume {name} is too short")))?;
    let top = u64::from_le_bytes(top.try_into().expect("8 bytes"));
    Ok((top, VolumeRecord::decode(name, &v[8..])?))
}

fn read_volume(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<(u64, VolumeRecord)> {
    let row = table
        .get(name)?
        .ok_or_else(|| Error::NotFound(What::Volume(name.to_string())))?;
    decode_row(name, row.value())
}

/// The layers of a volume whose top is `top`, top first.
fn chain(layers: &impl ReadableTable<u64, (u64, u64)>, top: u64) -> Result<Vec<u64>> {
    let mut out = vec![top];
    let mut at = top;
    loop {
        let (parent, _) = layers
            .get(at)?
            .ok_or_else(|| Error::Corrupt(format!("volume layer {at} is missing")))?
            .value();
        if parent == 0 {
            return Ok(out);
        }
        if out.len() > 1 << 16 || out.contains(&parent) {
            return Err(Error::Corrupt("volume layers form a loop".into()));
        }
        out.push(parent);
        at = parent;
    }
}

/// The entry a chunk has through `layers` (top first): the first row found, or a hole.
fn lookup(
    vmap: &impl ReadableTable<u128, [u8; MapEntry::LEN]>,
    layers: &[u64],
    index: u64,
) -> Result<MapEntry> {
    for &layer in layers {
        if let Some(v) = vmap.get(key(layer, index))? {
            return MapEntry::decode(&v.value());
        }
    }
    Ok(MapEntry::Hole)
}

/// Visits, in index order, the entry every chunk of `chunks` has through `layers` (top first),
/// hole rows included, until `visit` returns `false`. A k-way merge of the layers' rows: the
/// cost is the rows in the range, whatever its length.
fn merged(
    vmap: &impl ReadableTable<u128, [u8; MapEntry::LEN]>,
    layers: &[u64],
    chunks: Range<u64>,
    visit: &mut dyn FnMut(u64, MapEntry) -> Result<bool>,
) -> Result<()> {
    let mut heads = Vec::with_capacity(layers.len());
    let mut iters = Vec::with_capacity(layers.len());
    for &layer in layers {
        let mut it = vmap.range(keys(layer, &chunks))?;
        let head = match it.next() {
            Some(row) => {
                let (k, v) = row?;
                Some((k.value() as u64, v.value()))
            }
            None => None,
        };
        heads.push(head);
        iters.push(it);
    }
    loop {
        let Some(index) = heads.iter().flatten().map(|(i, _)| *i).min() else {
            return Ok(());
        };
        let mut winner = None;
        for (head, it) in heads.iter_mut().zip(iters.iter_mut()) {
            if let Some((i, v)) = *head {
                if i == index {
                    if winner.is_none() {
                        winner = Some(v);
                    }
                    *head = match it.next() {
                        Some(row) => {
                            let (k, v) = row?;
                            Some((k.value() as u64, v.value()))
                        }
                        None => None,
                    };
                }
            }
        }
        let entry = MapEntry::decode(&winner.expect("some head had the index"))?;
        if !visit(index, entry)? {
            return Ok(());
        }
    }
}

/// One more reference to a chunk that must be held (or staged in this transaction).
fn add_ref(
    chunks: &mut Table<[u8; 32], [u8; ChunkEntry::LEN]>,
    zombies: &mut Table<[u8; 32], u64>,
    id: &ChunkId,
    n: u32,
    volume: &str,
) -> Result<()> {
    let mut entry = get_chunk(chunks, id)?.ok_or_else(|| {
        Error::Corrupt(format!(
            "volume {volume} refers to chunk {id:?}, which is neither stored nor staged"
        ))
    })?;
    if entry.refs == 0 {
        zombies.remove(id.0)?;
    }
    entry.refs += u64::from(n);
    chunks.insert(id.0, entry.encode())?;
    Ok(())
}

/// `n` references fewer; a chunk left without any becomes a zombie stamped `death`.
fn drop_ref(
    chunks: &mut Table<[u8; 32], [u8; ChunkEntry::LEN]>,
    zombies: &mut Table<[u8; 32], u64>,
    id: &ChunkId,
    n: u32,
    death: u64,
) -> Result<()> {
    if let Some(mut entry) = get_chunk(chunks, id)? {
        entry.refs = entry.refs.saturating_sub(u64::from(n));
        if entry.refs == 0 {
            zombies.insert(id.0, death)?;
        }
        chunks.insert(id.0, entry.encode())?;
    }
    Ok(())
}

/// Bytes an entry of a chunk of `len` bytes adds to a record's written and zeroed figures.
fn account(record: &mut VolumeRecord, entry: &MapEntry, len: u32, sign: i8) {
    let len = u64::from(len);
    let field = match entry {
        MapEntry::Hole => return,
        MapEntry::Zero => &mut record.zeroed,
        MapEntry::Chunk { .. } => &mut record.written,
    };
    if sign > 0 {
        *field += len;
    } else {
        *field = field.saturating_sub(len);
    }
}

/// What a volume takes: its chunks as the store holds them, and its own map rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    /// Distinct chunks the volume reads through.
    pub chunks: u64,
    /// Their plaintext bytes: what is left after dedup, before compression.
    pub unique: u64,
    /// Their stored bytes.
    pub stored: u64,
    /// Stored bytes (headers included) of the chunks that only this volume's own layer refers
    /// to, plus that layer's map rows: what deleting it gives back.
    pub exclusive: u64,
}

impl LocalStore {
    pub(super) fn create_volume_row(&self, record: &VolumeRecord) -> Result<()> {
        validate_name(&record.name).map_err(Error::Refused)?;
        let txn = self.begin_write()?;
        let counters = {
            let mut volumes = txn.open_table(VOLUMES)?;
            if volumes.get(record.name.as_str())?.is_some() {
                return Err(Error::AlreadyExists(What::Volume(record.name.clone())));
            }
            let mut layers = txn.open_table(LAYERS)?;
            let mut meta = txn.open_table(META)?;
            let layer = next_layer(&mut meta)?;
            layers.insert(layer, (0, 1))?;
            volumes.insert(record.name.as_str(), encode_row(layer, record).as_slice())?;
            let mut c = read_counters(&meta)?;
            c.volumes += 1;
            c.volume_changed((0, 0), (record.written, record.zeroed));
            meta.insert("totals", c.encode().as_slice())?;
            c
        };
        txn.commit()?;
        self.set_counters(counters);
        Ok(())
    }

    pub(super) fn volume_row(&self, name: &str) -> Result<VolumeRecord> {
        let r = self.db.begin_read()?;
        Ok(read_volume(&r.open_table(VOLUMES)?, name)?.1)
    }

    pub(super) fn volume_rows(&self) -> Result<Vec<VolumeRecord>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(VOLUMES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode_row(k.value(), v.value())?.1);
        }
        Ok(out)
    }

    pub(super) fn read_volume_map(
        &self,
        name: &str,
        chunks: Range<u64>,
        visit: &mut dyn FnMut(u64, MapEntry) -> bool,
    ) -> Result<()> {
        let r = self.db.begin_read()?;
        let (top, _) = read_volume(&r.open_table(VOLUMES)?, name)?;
        let layers = chain(&r.open_table(LAYERS)?, top)?;
        let vmap = r.open_table(VMAP)?;
        merged(&vmap, &layers, chunks, &mut |i, e| {
            Ok(e == MapEntry::Hole || visit(i, e))
        })
    }

    pub(super) fn commit_volume_rows(
        &self,
        name: &str,
        changes: &[(u64, MapEntry)],
        staged: Vec<StagedChunk>,
        durable: bool,
    ) -> Result<()> {
        let touched: Vec<u32> = staged
            .iter()
            .filter_map(|s| match s.at {
                StagedAt::Pack { pack, .. } => Some(pack),
                _ => None,
            })
            .collect();
        let mut released = false;
        let counters = self.gate.record(|death| -> Result<Counters> {
            let txn = self.begin_volume_write(&touched, durable)?;
            let counters = {
                let mut volumes = txn.open_table(VOLUMES)?;
                let layers_t = txn.open_table(LAYERS)?;
                let mut vmap = txn.open_table(VMAP)?;
                let mut chunks = txn.open_table(CHUNKS)?;
                let mut zombies = txn.open_table(ZOMBIES)?;
                let mut meta = txn.open_table(META)?;
                let mut c = read_counters(&meta)?;
                let (top, mut record) = read_volume(&volumes, name)?;
                record.check_writable()?;
                let layers = chain(&layers_t, top)?;
                let mut locations = txn.open_table(super::index::LOCATIONS)?;
                let mut packs = txn.open_table(super::index::PACKS)?;
                super::insert_staged(&mut chunks, &mut locations, &mut packs, staged, &mut c)?;
                let before = (record.written, record.zeroed);
                // Reference changes gathered per chunk (the rows of a group name one), then
                // applied once each: gains before losses, so that a chunk that is both
                // released and named again is never a zombie in between.
                let mut refs: HashMap<ChunkId, (u32, u32)> = HashMap::new();
                for &(index, new) in changes {
                    if index >= record.chunks() {
                        return Err(Error::Refused(format!(
                            "chunk {index} is past the end of volume {name}"
                        )));
                    }
                    let len = record.chunk_len(index);
                    let old_top = vmap.get(key(top, index))?.map(|v| v.value());
                    let old_top = old_top.as_ref().map(MapEntry::decode).transpose()?;
                    let below = if layers.len() > 1 {
                        lookup(&vmap, &layers[1..], index)?
                    } else {
                        MapEntry::Hole
                    };
                    let old = old_top.unwrap_or(below);
                    account(&mut record, &old, len, -1);
                    account(&mut record, &new, len, 1);
                    if let Some(id) = new.chunk() {
                        refs.entry(id).or_default().0 += 1;
                    }
                    if let Some(id) = old_top.and_then(|e| e.chunk()) {
                        refs.entry(id).or_default().1 += 1;
                        released = true;
                    }
                    if new == MapEntry::Hole && below == MapEntry::Hole {
                        if old_top.is_some() {
                            vmap.remove(key(top, index))?;
                            c.map_rows -= 1;
                        }
                    } else {
                        if old_top.is_none() {
                            c.map_rows += 1;
                        }
                        vmap.insert(key(top, index), new.encode())?;
                    }
                }
                for (id, (gained, lost)) in &refs {
                    if *gained > 0 {
                        add_ref(&mut chunks, &mut zombies, id, *gained, name)?;
                    }
                    if *lost > 0 {
                        drop_ref(&mut chunks, &mut zombies, id, *lost, death)?;
                    }
                }
                c.volume_changed(before, (record.written, record.zeroed));
                volumes.insert(name, encode_row(top, &record).as_slice())?;
                meta.insert("totals", c.encode().as_slice())?;
                c
            };
            txn.commit()?;
            Ok(counters)
        })?;
        self.set_counters(counters);
        if released {
            // Overwritten chunks nothing else uses go, as after a free (best effort); between
            // flushes without an fsync of their own.
            let _ = self.reclaim_after(durable);
        }
        Ok(())
    }

    pub(super) fn clear_volume_rows(
        &self,
        name: &str,
        range: Range<u64>,
        durable: bool,
    ) -> Result<()> {
        let counters = self.gate.record(|death| -> Result<Counters> {
            let txn = self.begin_volume_write(&[], durable)?;
            let counters = {
                let mut volumes = txn.open_table(VOLUMES)?;
                let layers_t = txn.open_table(LAYERS)?;
                let mut vmap = txn.open_table(VMAP)?;
                let mut chunks = txn.open_table(CHUNKS)?;
                let mut zombies = txn.open_table(ZOMBIES)?;
                let mut meta = txn.open_table(META)?;
                let mut c = read_counters(&meta)?;
                let (top, mut record) = read_volume(&volumes, name)?;
                record.check_writable()?;
                let range = range.start.min(record.chunks())..range.end.min(record.chunks());
                let layers = chain(&layers_t, top)?;
                // What the range reads as now leaves the figures.
                let mut seen = Vec::new();
                merged(&vmap, &layers, range.clone(), &mut |i, e| {
                    seen.push((i, e));
                    Ok(true)
                })?;
                let before = (record.written, record.zeroed);
                for (i, e) in &seen {
                    let len = record.chunk_len(*i);
                    account(&mut record, e, len, -1);
                }
                // The top layer's rows go, with their references.
                let mut own = Vec::new();
                for row in vmap.range(keys(top, &range))? {
                    let (k, v) = row?;
                    own.push((k.value(), MapEntry::decode(&v.value())?));
                }
                for (k, e) in &own {
                    if let Some(id) = e.chunk() {
                        drop_ref(&mut chunks, &mut zombies, &id, 1, death)?;
                    }
                    vmap.remove(*k)?;
                }
                c.map_rows -= own.len() as u64;
                // Where a lower layer shows data or zeros, a hole row hides it.
                if layers.len() > 1 {
                    let mut shown = Vec::new();
                    merged(&vmap, &layers[1..], range.clone(), &mut |i, e| {
                        if e != MapEntry::Hole {
                            shown.push(i);
                        }
                        Ok(true)
                    })?;
                    for i in &shown {
                        vmap.insert(key(top, *i), MapEntry::Hole.encode())?;
                    }
                    c.map_rows += shown.len() as u64;
                }
                c.volume_changed(before, (record.written, record.zeroed));
                volumes.insert(name, encode_row(top, &record).as_slice())?;
                meta.insert("totals", c.encode().as_slice())?;
                c
            };
            txn.commit()?;
            Ok(counters)
        })?;
        self.set_counters(counters);
        let _ = self.reclaim_after(durable);
        Ok(())
    }

    pub(super) fn snapshot_volume_row(
        &self,
        source: &str,
        name: &str,
        writable: bool,
        created: u64,
    ) -> Result<VolumeRecord> {
        validate_name(name).map_err(Error::Refused)?;
        let txn = self.begin_write()?;
        let (record, counters) = {
            let mut volumes = txn.open_table(VOLUMES)?;
            let mut layers = txn.open_table(LAYERS)?;
            let mut meta = txn.open_table(META)?;
            if volumes.get(name)?.is_some() {
                return Err(Error::AlreadyExists(What::Volume(name.to_string())));
            }
            let (src_top, src) = read_volume(&volumes, source)?;
            if writable && !src.read_only {
                return Err(Error::Refused(format!(
                    "volume {source} is not a snapshot: snapshot it first, then clone the snapshot"
                )));
            }
            let refer = |layer: u64, layers: &mut Table<u64, (u64, u64)>| -> Result<()> {
                let (parent, refs) = layers
                    .get(layer)?
                    .ok_or_else(|| Error::Corrupt(format!("volume layer {layer} is missing")))?
                    .value();
                layers.insert(layer, (parent, refs + 1))?;
                Ok(())
            };
            let new_top = if src.read_only {
                // A snapshot of a snapshot shares its layer; a clone writes above it.
                refer(src_top, &mut layers)?;
                if writable {
                    let layer = next_layer(&mut meta)?;
                    layers.insert(layer, (src_top, 1))?;
                    // The clone's layer holds the reference taken above; the snapshot's own
                    // stays with the snapshot.
                    layer
                } else {
                    src_top
                }
            } else {
                // The source's layer freezes under the snapshot; the source writes above it.
                let above = next_layer(&mut meta)?;
                layers.insert(above, (src_top, 1))?;
                refer(src_top, &mut layers)?;
                volumes.insert(source, encode_row(above, &src).as_slice())?;
                src_top
            };
            let record = VolumeRecord {
                name: name.to_string(),
                read_only: !writable,
                origin: Some(source.to_string()),
                created,
                ..src
            };
            volumes.insert(name, encode_row(new_top, &record).as_slice())?;
            let mut c = read_counters(&meta)?;
            c.volumes += 1;
            c.volume_changed((0, 0), (record.written, record.zeroed));
            meta.insert("totals", c.encode().as_slice())?;
            (record, c)
        };
        txn.commit()?;
        self.set_counters(counters);
        Ok(record)
    }

    pub(super) fn delete_volume_row(&self, name: &str) -> Result<()> {
        let counters = self.gate.record(|death| -> Result<Counters> {
            let txn = self.begin_write()?;
            let counters = {
                let mut volumes = txn.open_table(VOLUMES)?;
                let mut layers = txn.open_table(LAYERS)?;
                let mut vmap = txn.open_table(VMAP)?;
                let mut chunks = txn.open_table(CHUNKS)?;
                let mut zombies = txn.open_table(ZOMBIES)?;
                let mut meta = txn.open_table(META)?;
                let mut c = read_counters(&meta)?;
                let (top, record) = read_volume(&volumes, name)?;
                volumes.remove(name)?;
                let mut layer = top;
                // Release the layers nothing else refers to, top down.
                while layer != 0 {
                    let (parent, refs) = layers
                        .get(layer)?
                        .ok_or_else(|| Error::Corrupt(format!("volume layer {layer} is missing")))?
                        .value();
                    if refs > 1 {
                        layers.insert(layer, (parent, refs - 1))?;
                        break;
                    }
                    let mut rows = Vec::new();
                    for row in vmap.range(keys(layer, &(0..u64::MAX)))? {
                        let (k, v) = row?;
                        rows.push((k.value(), MapEntry::decode(&v.value())?));
                    }
                    for (k, e) in &rows {
                        if let Some(id) = e.chunk() {
                            drop_ref(&mut chunks, &mut zombies, &id, 1, death)?;
                        }
                        vmap.remove(*k)?;
                    }
                    c.map_rows -= rows.len() as u64;
                    layers.remove(layer)?;
                    layer = parent;
                }
                c.volumes -= 1;
                c.volume_changed((record.written, record.zeroed), (0, 0));
                meta.insert("totals", c.encode().as_slice())?;
                c
            };
            txn.commit()?;
            Ok(counters)
        })?;
        self.set_counters(counters);
        // Reclaiming is best effort, as after a free.
        let _ = self.reclaim();
        Ok(())
    }

    pub(super) fn volume_usage_of(&self, name: &str) -> Result<VolumeUsage> {
        let r = self.db.begin_read()?;
        let (top, _) = read_volume(&r.open_table(VOLUMES)?, name)?;
        let layers = chain(&r.open_table(LAYERS)?, top)?;
        let vmap = r.open_table(VMAP)?;
        let chunks = r.open_table(CHUNKS)?;
        let own_layer = r.open_table(LAYERS)?.get(top)?.map(|v| v.value().1) == Some(1);
        // References from the volume's own layer, per chunk.
        let mut own: HashMap<ChunkId, u64> = HashMap::new();
        let mut own_rows = 0u64;
        if own_layer {
            for row in vmap.range(keys(top, &(0..u64::MAX)))? {
                let (_, v) = row?;
                own_rows += 1;
                if let Some(id) = MapEntry::decode(&v.value())?.chunk() {
                    *own.entry(id).or_default() += 1;
                }
            }
        }
        let mut usage = VolumeUsage {
            exclusive: own_rows * MAP_BYTES_PER_ROW,
            ..VolumeUsage::default()
        };
        let mut distinct = std::collections::HashSet::new();
        merged(&vmap, &layers, 0..u64::MAX, &mut |_, e| {
            if let Some(id) = e.chunk() {
                if distinct.insert(id) {
                    if let Some(entry) = get_chunk(&chunks, &id)? {
                        usage.chunks += 1;
                        usage.unique += u64::from(entry.info.raw_len);
                        usage.stored += u64::from(entry.info.stored_len);
                        if own.get(&id) == Some(&entry.refs) {
                            usage.exclusive += entry.record_len();
                        }
                    }
                }
            }
            Ok(true)
        })?;
        Ok(usage)
    }
}

fn next_layer(meta: &mut Table<&'static str, &'static [u8]>) -> Result<u64> {
    let next = match meta.get("next_layer")? {
        Some(v) => u64::from_le_bytes(
            v.value()
                .try_into()
                .map_err(|_| Error::Corrupt("next layer number has the wrong length".into()))?,
        ),
        None => 1,
    };
    meta.insert("next_layer", (next + 1).to_le_bytes().as_slice())?;
    Ok(next)
}

impl LocalStore {
    /// The transaction of a volume change: durable, with the packs of its chunks synced
    /// first, or relaxed (a write-back between flushes).
    fn begin_volume_write(&self, touched: &[u32], durable: bool) -> Result<redb::WriteTransaction> {
        if durable && self.options.sync_commits {
            for &pack in touched {
                self.packs.sync(pack)?;
            }
            self.begin_write()
        } else {
            self.begin_relaxed(touched)
        }
    }

    /// The reclaim pass after a volume change: a full one after a durable commit, a relaxed one
    /// between flushes.
    fn reclaim_after(&self, durable: bool) -> Result<()> {
        if durable {
            self.reclaim()
        } else {
            self.reclaim_relaxed()
        }
    }

    /// Makes every relaxed commit so far durable: their packs synced, then an empty durable
    /// commit.
    pub(super) fn sync_volumes(&self) -> Result<()> {
        if self.options.sync_commits {
            self.begin_write()?.commit()?;
        }
        // Chunks overwritten under a write-back's pin could not go at its commit; they can now.
        let _ = self.reclaim();
        Ok(())
    }
}
