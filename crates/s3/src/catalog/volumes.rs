//! Volumes in the catalog: the heads this server knows, the layers of their maps as the deltas
//! in the bucket build them, and the chunk references their rows hold.
//!
//! Every row of every known layer that names a chunk is one reference to it, whether a volume
//! still refers to the layer or not: a layer no head names is garbage only once the sweeper has
//! deleted its deltas (a grace period after condemning it), and until then what it names stays.
//!
//! A layer is built by applying its deltas in sequence order, each once. A delta past the
//! layer's seal (a head says how many sequence numbers belong to it) is never applied: it is a
//! late write of a server that lost its lease, fenced off by the head.

use std::collections::{BTreeMap, HashMap, HashSet};

use aetherflow_store::{ChunkId, MapEntry, VolumeUsage};

use super::{Catalog, Condemned};
use crate::volume_objects::{Delta, Head, LayerId};

/// A volume whose head this server has seen.
#[derive(Debug, Clone)]
pub struct KnownVolume {
    pub head: Head,
    /// The head object's ETag, for a conditional update.
    pub etag: Option<String>,
    /// Its size and modification time when listed: a listing that shows others is re-read.
    pub listed: Option<(u64, i64)>,
    seen: u64,
    /// (written, zeroed), computed from the map when asked; `None` after a change.
    figures: Option<(u64, u64)>,
    encoded_len: u64,
}

/// One layer of volume maps.
#[derive(Debug, Default, Clone)]
pub struct LayerState {
    rows: BTreeMap<u64, MapEntry>,
    /// The highest sequence number applied.
    applied: Option<u64>,
    /// Deltas known to be in the bucket: sequence number -> (bytes, modified in the bucket's
    /// clock if listed).
    deltas: BTreeMap<u64, (u64, Option<i64>)>,
    size: u64,
    chunk_size: u32,
    condemned: Option<Condemned>,
    seen: u64,
}

impl LayerState {
    fn chunk_len(&self, index: u64) -> u32 {
        aetherflow_store::volume::Geometry {
            size: self.size,
            chunk_size: self.chunk_size,
        }
        .chunk_len(index)
    }

    /// Sequence numbers in the bucket not applied yet, in order.
    pub fn pending(&self) -> Vec<u64> {
        self.deltas
            .keys()
            .filter(|s| self.applied.is_none_or(|a| **s > a))
            .copied()
            .collect()
    }

    pub fn next_seq(&self) -> u64 {
        let last = self.deltas.keys().next_back().copied();
        match (last, self.applied) {
            (Some(a), Some(b)) => a.max(b) + 1,
            (Some(a), None) | (None, Some(a)) => a + 1,
            (None, None) => 0,
        }
    }

    pub fn delta_seqs(&self) -> Vec<u64> {
        self.deltas.keys().copied().collect()
    }

    /// The newest modification time of its deltas, if all are listed.
    pub fn modified_ms(&self) -> Option<i64> {
        self.deltas
            .values()
            .map(|(_, m)| *m)
            .try_fold(i64::MIN, |acc, m| m.map(|m| acc.max(m)))
    }

    pub fn condemned(&self) -> Option<Condemned> {
        self.condemned
    }

    fn bytes(&self) -> u64 {
        self.deltas.values().map(|(b, _)| *b).sum()
    }
}

/// Volume figures over the whole catalog.
#[derive(Debug, Default, Clone, Copy)]
pub struct VolumeTotals {
    pub volumes: u64,
    pub written: u64,
    pub zeroed: u64,
    /// Heads and deltas.
    pub object_bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct Volumes {
    heads: BTreeMap<String, KnownVolume>,
    layers: HashMap<LayerId, LayerState>,
    head_bytes: u64,
    /// Heads that cannot be decoded, with why.
    damaged: BTreeMap<String, String>,
    /// Deltas that cannot be decoded, by key, with their layer and why.
    damaged_deltas: BTreeMap<String, (LayerId, String)>,
}

/// Walks the merged map of a chain over `range`: top layer first, a hole row hiding what lies
/// below it. Visits every index that some layer has a row for, holes included.
fn merged(
    layers: &HashMap<LayerId, LayerState>,
    chain: &[LayerId],
    range: std::ops::Range<u64>,
    visit: &mut dyn FnMut(u64, MapEntry) -> bool,
) {
    let mut iters: Vec<_> = chain
        .iter()
        .filter_map(|l| layers.get(l))
        .map(|l| l.rows.range(range.clone()).peekable())
        .collect();
    loop {
        let mut best: Option<(u64, usize)> = None;
        for (depth, it) in iters.iter_mut().enumerate() {
            if let Some((&i, _)) = it.peek() {
                if best.is_none_or(|(b, _)| i < b) {
                    best = Some((i, depth));
                }
            }
        }
        let Some((index, depth)) = best else { return };
        let entry = *iters[depth].peek().expect("peeked").1;
        for it in iters.iter_mut() {
            if it.peek().is_some_and(|(&i, _)| i == index) {
                it.next();
            }
        }
        if !visit(index, entry) {
            return;
        }
    }
}

impl Catalog {
    // ----- heads -----

    pub fn volume(&self, name: &str) -> Option<&KnownVolume> {
        self.volumes.heads.get(name)
    }

    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.heads.keys().cloned().collect()
    }

    /// Records a head (new, or changed); layers it names that are not known yet start empty.
    pub fn put_volume(
        &mut self,
        name: &str,
        head: Head,
        etag: Option<String>,
        listed: Option<(u64, i64)>,
        encoded_len: u64,
    ) {
        for link in &head.chain {
            self.volumes.layers.entry(link.layer).or_default().seen = self.generation;
        }
        let generation = self.generation;
        let old = self.volumes.heads.insert(
            name.to_string(),
            KnownVolume {
                head,
                etag,
                listed,
                seen: generation,
                figures: None,
                encoded_len,
            },
        );
        if let Some(old) = old {
            self.volumes.head_bytes -= old.encoded_len;
        }
        self.volumes.head_bytes += encoded_len;
    }

    /// Notes that a listing showed the head unchanged.
    pub fn saw_volume(&mut self, name: &str, listed: (u64, i64)) -> bool {
        match self.volumes.heads.get_mut(name) {
            Some(v) if v.listed.is_none_or(|l| l == listed) => {
                v.seen = self.generation;
                v.listed = Some(listed);
                true
            }
            _ => false,
        }
    }

    pub fn remove_volume(&mut self, name: &str) {
        if let Some(old) = self.volumes.heads.remove(name) {
            self.volumes.head_bytes -= old.encoded_len;
        }
    }

    /// After a complete listing of heads started at `generation`: forgets volumes that are gone.
    pub fn confirm_volumes(&mut self, listed: &HashSet<String>, generation: u64) {
        let gone: Vec<String> = self
            .volumes
            .heads
            .iter()
            .filter(|(n, v)| v.seen < generation && !listed.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.remove_volume(&name);
        }
        self.volumes.damaged.retain(|n, _| listed.contains(n));
    }

    // ----- layers -----

    pub fn layer(&self, layer: LayerId) -> Option<&LayerState> {
        self.volumes.layers.get(&layer)
    }

    pub fn layer_ids(&self) -> Vec<LayerId> {
        self.volumes.layers.keys().copied().collect()
    }

    /// How many sequence numbers belong to a layer (those below the number): the lowest seal
    /// any head gives it; `None` while a head has it open (or none names it).
    pub fn seal_of(&self, layer: LayerId) -> Option<u64> {
        let mut seal = None;
        for v in self.volumes.heads.values() {
            for link in v.head.chain.iter().filter(|l| l.layer == layer) {
                match link.sealed {
                    None => return None,
                    Some(s) => seal = Some(seal.map_or(s, |x: u64| x.min(s))),
                }
            }
        }
        seal
    }

    /// Notes a delta the bucket holds (listed, or written by this server).
    pub fn note_delta(&mut self, layer: LayerId, seq: u64, bytes: u64, modified_ms: Option<i64>) {
        let generation = self.generation;
        let l = self.volumes.layers.entry(layer).or_default();
        l.seen = generation;
        let known = l.deltas.entry(seq).or_insert((bytes, modified_ms));
        if modified_ms.is_some() {
            known.1 = modified_ms;
        }
    }

    /// Applies a delta to its layer, once and in order; one past the layer's seal, or older
    /// than what was applied, is left out. Returns whether it was applied.
    pub fn apply_delta(&mut self, delta: &Delta) -> bool {
        let seal = self.seal_of(delta.layer);
        let Some(l) = self.volumes.layers.get(&delta.layer) else {
            return false;
        };
        if l.applied.is_some_and(|a| delta.seq <= a) || seal.is_some_and(|s| delta.seq >= s) {
            return false;
        }
        let mut layer = self.volumes.layers.remove(&delta.layer).expect("present");
        layer.size = delta.size;
        layer.chunk_size = delta.chunk_size;
        for &(start, end) in &delta.cleared {
            let gone: Vec<(u64, MapEntry)> = layer
                .rows
                .range(start..end)
                .map(|(i, e)| (*i, *e))
                .collect();
            for (index, entry) in gone {
                layer.rows.remove(&index);
                self.release_row(entry);
            }
        }
        for &(index, entry) in &delta.rows {
            if let Some(old) = layer.rows.insert(index, entry) {
                self.release_row(old);
            }
            if let MapEntry::Chunk { id, stored_len } = entry {
                // A group's rows name a chunk longer than any one row (see
                // aetherflow-vm's volumes): its pack tells its length.
                let raw = self.raw_len_of(&id).unwrap_or(layer.chunk_len(index));
                self.add_ref(id, raw, stored_len);
            }
        }
        layer.applied = Some(delta.seq);
        self.volumes.layers.insert(delta.layer, layer);
        self.layer_changed(delta.layer);
        true
    }

    fn release_row(&mut self, entry: MapEntry) {
        if let MapEntry::Chunk { id, .. } = entry {
            self.drop_ref(id);
        }
    }

    /// Forgets what was applied of a layer, to build it again from its deltas (a seal below
    /// what was applied: a fenced writer's delta got in first).
    pub fn reset_layer(&mut self, layer: LayerId) {
        let Some(mut l) = self.volumes.layers.remove(&layer) else {
            return;
        };
        let rows = std::mem::take(&mut l.rows);
        for entry in rows.into_values() {
            self.release_row(entry);
        }
        l.applied = None;
        self.volumes.layers.insert(layer, l);
        self.layer_changed(layer);
    }

    /// Whether what was applied of a layer goes past its seal.
    pub fn applied_past_seal(&self, layer: LayerId) -> bool {
        let (Some(seal), Some(l)) = (self.seal_of(layer), self.volumes.layers.get(&layer)) else {
            return false;
        };
        l.applied.is_some_and(|a| a >= seal)
    }

    /// Drops a layer whose deltas were deleted: its references go.
    pub fn remove_layer(&mut self, layer: LayerId) {
        self.volumes.damaged_deltas.retain(|_, (l, _)| *l != layer);
        if let Some(l) = self.volumes.layers.remove(&layer) {
            for &entry in l.rows.values() {
                self.release_row(entry);
            }
            self.layer_changed(layer);
        }
    }

    /// After a complete listing of deltas started at `generation`: layers with none left, and
    /// no head naming them, are forgotten; deltas no longer listed are too.
    pub fn confirm_layers(&mut self, listed: &HashMap<LayerId, HashSet<u64>>, generation: u64) {
        let named: HashSet<LayerId> = self
            .volumes
            .heads
            .values()
            .flat_map(|v| v.head.chain.iter().map(|l| l.layer))
            .collect();
        let gone: Vec<LayerId> = self
            .volumes
            .layers
            .iter()
            .filter(|(id, l)| {
                l.seen < generation && !listed.contains_key(id) && !named.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for layer in gone {
            self.remove_layer(layer);
        }
        for (id, l) in self.volumes.layers.iter_mut() {
            if l.seen < generation {
                let present = listed.get(id);
                l.deltas
                    .retain(|s, _| present.is_some_and(|p| p.contains(s)));
            }
        }
    }

    /// Layers no head names.
    pub fn orphan_layers(&self) -> Vec<LayerId> {
        let named: HashSet<LayerId> = self
            .volumes
            .heads
            .values()
            .flat_map(|v| v.head.chain.iter().map(|l| l.layer))
            .collect();
        self.volumes
            .layers
            .keys()
            .filter(|l| !named.contains(l))
            .copied()
            .collect()
    }

    pub fn condemn_layer(&mut self, layer: LayerId, at_ms: Option<i64>, stamp: Option<u64>) {
        let generation = self.generation;
        if let Some(l) = self.volumes.layers.get_mut(&layer) {
            match &mut l.condemned {
                Some(c) => {
                    c.seen = generation;
                    if at_ms.is_some() {
                        c.at_ms = at_ms;
                    }
                }
                None => {
                    l.condemned = Some(Condemned {
                        at_ms,
                        stamp,
                        seen: generation,
                    })
                }
            }
        }
    }

    pub fn pardon_layer(&mut self, layer: LayerId) {
        if let Some(l) = self.volumes.layers.get_mut(&layer) {
            l.condemned = None;
        }
    }

    pub fn confirm_condemned_layers(&mut self, listed: &HashSet<LayerId>, generation: u64) {
        for (id, l) in self.volumes.layers.iter_mut() {
            if l.condemned.is_some_and(|c| c.seen < generation) && !listed.contains(id) {
                l.condemned = None;
            }
        }
    }

    fn layer_changed(&mut self, layer: LayerId) {
        for v in self.volumes.heads.values_mut() {
            if v.head.chain.iter().any(|l| l.layer == layer) {
                v.figures = None;
            }
        }
    }

    // ----- maps and figures -----

    /// Indexes of `range` where the merged map of `chain` holds something (not a hole).
    pub fn rows_below(&self, chain: &[LayerId], range: std::ops::Range<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        merged(&self.volumes.layers, chain, range, &mut |i, e| {
            if e != MapEntry::Hole {
                out.push(i);
            }
            true
        });
        out
    }

    /// Notes a head that cannot be decoded: what its layers hold is unknown to nobody (they
    /// are listed), but whether they are garbage is, so no layer is collected meanwhile.
    pub fn note_damaged_volume(&mut self, name: &str, why: String) {
        self.volumes.damaged.insert(name.to_string(), why);
    }

    pub fn damaged_volumes(&self) -> impl Iterator<Item = (&String, &String)> {
        self.volumes.damaged.iter()
    }

    /// Notes a delta that cannot be decoded: its layer cannot be built past it, so a volume
    /// that reads through it fails its reads.
    pub fn note_damaged_delta(&mut self, layer: LayerId, key: &str, why: String) {
        self.volumes
            .damaged_deltas
            .insert(key.to_string(), (layer, why));
    }

    pub fn damaged_deltas(&self) -> impl Iterator<Item = (&String, &String)> {
        self.volumes
            .damaged_deltas
            .iter()
            .map(|(k, (_, why))| (k, why))
    }

    /// Why a volume's map cannot be read whole, if one of its layers has a damaged delta.
    pub fn volume_damage(&self, name: &str) -> Option<String> {
        let v = self.volumes.heads.get(name)?;
        self.volumes
            .damaged_deltas
            .iter()
            .find(|(_, (layer, _))| v.head.chain.iter().any(|l| l.layer == *layer))
            .map(|(key, (_, why))| format!("volume {name}: {key}: {why}"))
    }

    /// Visits the merged map of a volume over `range`, holes left out, until `visit` returns
    /// `false`. `None` if the volume is not known.
    pub fn volume_map(
        &self,
        name: &str,
        range: std::ops::Range<u64>,
        visit: &mut dyn FnMut(u64, MapEntry) -> bool,
    ) -> Option<()> {
        let v = self.volumes.heads.get(name)?;
        let chain: Vec<LayerId> = v.head.chain.iter().map(|l| l.layer).collect();
        merged(&self.volumes.layers, &chain, range, &mut |i, e| {
            if e == MapEntry::Hole {
                true
            } else {
                visit(i, e)
            }
        });
        Some(())
    }

    /// A volume's (written, zeroed) bytes.
    pub fn volume_figures(&mut self, name: &str) -> Option<(u64, u64)> {
        let v = self.volumes.heads.get(name)?;
        if let Some(f) = v.figures {
            return Some(f);
        }
        let record = &v.head.record;
        let len = |i: u64| u64::from(record.chunk_len(i));
        let (mut written, mut zeroed) = (0, 0);
        self.volume_map(name, 0..u64::MAX, &mut |i, e| {
            match e {
                MapEntry::Zero => zeroed += len(i),
                MapEntry::Chunk { .. } => written += len(i),
                MapEntry::Hole => {}
            }
            true
        });
        let v = self.volumes.heads.get_mut(name).expect("known");
        v.figures = Some((written, zeroed));
        Some((written, zeroed))
    }

    pub fn volume_totals(&mut self) -> VolumeTotals {
        let names = self.volume_names();
        let mut t = VolumeTotals {
            volumes: names.len() as u64,
            object_bytes: self.volumes.head_bytes
                + self
                    .volumes
                    .layers
                    .values()
                    .map(LayerState::bytes)
                    .sum::<u64>(),
            ..VolumeTotals::default()
        };
        for name in names {
            if let Some((w, z)) = self.volume_figures(&name) {
                t.written += w;
                t.zeroed += z;
            }
        }
        t
    }

    /// What a volume reads through, and what the bucket holds for it alone: its own layer's
    /// deltas, and the records of chunks only that layer refers to.
    pub fn volume_usage(&self, name: &str) -> Option<VolumeUsage> {
        let v = self.volumes.heads.get(name)?;
        let top = v.head.chain[0].layer;
        let shared = self
            .volumes
            .heads
            .values()
            .filter(|o| o.head.chain.iter().any(|l| l.layer == top))
            .count()
            > 1;
        let mut own: HashMap<ChunkId, u32> = HashMap::new();
        let mut usage = VolumeUsage::default();
        if let (false, Some(layer)) = (shared, self.volumes.layers.get(&top)) {
            usage.exclusive = layer.bytes();
            for e in layer.rows.values() {
                if let Some(id) = e.chunk() {
                    *own.entry(id).or_default() += 1;
                }
            }
        }
        let mut distinct = HashSet::new();
        self.volume_map(name, 0..u64::MAX, &mut |_, e| {
            if let Some(id) = e.chunk() {
                if distinct.insert(id) {
                    if let Some(home) = self.homes.get(&id).and_then(|h| h.first()) {
                        usage.chunks += 1;
                        usage.unique += u64::from(home.info.raw_len);
                        usage.stored += u64::from(home.info.stored_len);
                        if own.get(&id).copied() == self.refs.get(&id).map(|r| r.count) {
                            usage.exclusive += crate::pack::record_len(&home.info);
                        }
                    }
                }
            }
            true
        });
        Some(usage)
    }

    /// Every chunk a layer row names, with where: for `check`.
    pub fn volume_chunk_refs(&self) -> Vec<(LayerId, u64, ChunkId)> {
        let mut out = Vec::new();
        for (id, l) in &self.volumes.layers {
            for (index, e) in &l.rows {
                if let Some(c) = e.chunk() {
                    out.push((*id, *index, c));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume_objects::ChainLink;
    use aetherflow_store::VolumeRecord;

    fn head(chain: &[(LayerId, Option<u64>)]) -> Head {
        Head {
            record: VolumeRecord {
                name: "v".into(),
                size: 10 * 4096,
                chunk_size: 4096,
                read_only: chain[0].1.is_some(),
                seed: None,
                origin: None,
                created: 0,
                written: 0,
                zeroed: 0,
            },
            chain: chain
                .iter()
                .map(|&(layer, sealed)| ChainLink { layer, sealed })
                .collect(),
            lease: None,
        }
    }

    fn delta(layer: LayerId, seq: u64, rows: &[(u64, MapEntry)]) -> Delta {
        Delta {
            layer,
            seq,
            size: 10 * 4096,
            chunk_size: 4096,
            cleared: Vec::new(),
            rows: rows.to_vec(),
        }
    }

    fn chunk(n: u8) -> MapEntry {
        MapEntry::Chunk {
            id: ChunkId([n; 32]),
            stored_len: 100,
        }
    }

    fn map(c: &Catalog, name: &str) -> Vec<(u64, MapEntry)> {
        let mut out = Vec::new();
        c.volume_map(name, 0..u64::MAX, &mut |i, e| {
            out.push((i, e));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn layers_merge_top_down_and_count_references() {
        let mut c = Catalog::default();
        c.put_volume("snap", head(&[(1, Some(1))]), None, None, 10);
        c.put_volume("v", head(&[(2, None), (1, Some(1))]), None, None, 10);
        assert!(c.apply_delta(&delta(1, 0, &[(0, chunk(1)), (1, chunk(2))])));
        assert!(
            !c.apply_delta(&delta(1, 1, &[(0, chunk(9))])),
            "past the seal"
        );
        assert!(c.apply_delta(&delta(2, 0, &[(1, MapEntry::Hole), (2, MapEntry::Zero)])));
        assert!(
            !c.apply_delta(&delta(2, 0, &[(5, chunk(5))])),
            "applied once"
        );
        assert_eq!(map(&c, "snap"), [(0, chunk(1)), (1, chunk(2))]);
        assert_eq!(map(&c, "v"), [(0, chunk(1)), (2, MapEntry::Zero)]);
        assert_eq!(c.volume_figures("v"), Some((4096, 4096)));
        assert_eq!(c.live.chunks, 2);
        // The snapshot goes: its layer still holds the chunks until the layer is deleted.
        c.remove_volume("snap");
        assert!(
            c.orphan_layers().is_empty(),
            "v still reads through layer 1"
        );
        c.remove_volume("v");
        let mut orphans = c.orphan_layers();
        orphans.sort();
        assert_eq!(orphans, [1, 2]);
        assert!(c.is_live(&ChunkId([1; 32])));
        c.remove_layer(1);
        assert!(!c.is_live(&ChunkId([1; 32])));
        assert_eq!(c.live.chunks, 0);
    }

    #[test]
    fn a_seal_below_what_was_applied_rebuilds_the_layer() {
        let mut c = Catalog::default();
        c.put_volume("v", head(&[(1, None)]), None, None, 10);
        c.apply_delta(&delta(1, 0, &[(0, chunk(1))]));
        c.apply_delta(&delta(1, 1, &[(0, chunk(2))]));
        // Another server took the volume over and sealed the layer after one commit.
        c.put_volume("v", head(&[(2, None), (1, Some(1))]), None, None, 10);
        assert!(c.applied_past_seal(1));
        c.reset_layer(1);
        assert!(!c.is_live(&ChunkId([2; 32])));
        assert!(c.apply_delta(&delta(1, 0, &[(0, chunk(1))])));
        assert!(!c.apply_delta(&delta(1, 1, &[(0, chunk(2))])));
        assert_eq!(map(&c, "v"), [(0, chunk(1))]);
    }
}
