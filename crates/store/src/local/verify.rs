//! `verify`: the index checked against itself, and optionally every chunk's bytes.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};

use super::index::{
    read_counters, ChunkEntry, Counters, BLOCKS, CHUNKS, LOCATIONS, META, PACKS, ZOMBIES,
};
use super::LocalStore;
use crate::error::Result;
use crate::types::{BlockId, ChunkId, Damage};
use crate::Manifest;

pub(super) fn verify(
    store: &LocalStore,
    read_data: bool,
    report: &mut dyn FnMut(Damage),
) -> Result<()> {
    let r = store.db.begin_read()?;
    let blocks = r.open_table(BLOCKS)?;
    let chunks = r.open_table(CHUNKS)?;
    let locations = r.open_table(LOCATIONS)?;
    let packs = r.open_table(PACKS)?;
    let zombies = r.open_table(ZOMBIES)?;
    let meta = r.open_table(META)?;

    let mut expected = Counters::default();
    let mut refs: HashMap<ChunkId, u64> = HashMap::new();
    for row in blocks.iter()? {
        let (k, v) = row?;
        let id = BlockId::from_u128(k.value());
        let manifest = match Manifest::decode(v.value(), &format_args!("block {id}")) {
            Ok(m) => m,
            Err(e) => {
                report(Damage::Block {
                    id,
                    what: e.to_string(),
                });
                continue;
            }
        };
        expected.blocks += 1;
        expected.logical += manifest.size;
        expected.zero += manifest.zero_bytes();
        expected.manifest_bytes += v.value().len() as u64;
        for c in manifest.chunk_refs() {
            *refs.entry(*c).or_default() += 1;
            if chunks.get(c.0)?.is_none() {
                report(Damage::Block {
                    id,
                    what: format!("refers to chunk {c:?}, which the index lacks"),
                });
            }
        }
    }

    verify_volumes(&r, &chunks, &mut refs, &mut expected, report)?;

    let mut live: HashMap<u32, u64> = HashMap::new();
    for row in chunks.iter()? {
        let (k, v) = row?;
        let id = ChunkId(k.value());
        let entry = match ChunkEntry::decode(k.value(), &v.value()) {
            Ok(e) => e,
            Err(e) => {
                report(Damage::Chunk {
                    id,
                    what: e.to_string(),
                });
                continue;
            }
        };
        expected.add_chunk(&entry.info);
        let want = refs.get(&id).copied().unwrap_or(0);
        if entry.refs != want {
            report(Damage::Index {
                what: format!(
                    "chunk {id:?} counts {} references, blocks and volumes make {want}",
                    entry.refs
                ),
            });
        }
        if entry.refs == 0 && zombies.get(id.0)?.is_none() {
            report(Damage::Index {
                what: format!("chunk {id:?} is unreferenced but not queued for deletion"),
            });
        }
        if locations.get(entry.location_key())?.map(|v| v.value()) != Some(id.0) {
            report(Damage::Index {
                what: format!("chunk {id:?} is missing from the location table"),
            });
        }
        *live.entry(entry.pack).or_default() += entry.record_len();
        match packs.get(entry.pack)?.map(|v| v.value()) {
            None => report(Damage::Chunk {
                id,
                what: format!("pack {} is not in the index", entry.pack),
            }),
            Some((end, _)) if entry.offset + entry.record_len() > end => report(Damage::Chunk {
                id,
                what: format!(
                    "record at {} runs past pack {}'s committed end",
                    entry.offset, entry.pack
                ),
            }),
            Some(_) => {}
        }
        if read_data {
            if let Err(e) = store.packs.read(entry.pack, entry.offset, &entry.info) {
                report(Damage::Chunk {
                    id,
                    what: e.to_string(),
                });
            }
        }
    }
    for row in packs.iter()? {
        let (k, v) = row?;
        let (end, recorded) = v.value();
        let pack = k.value();
        let counted = live.get(&pack).copied().unwrap_or(0);
        if counted != recorded {
            report(Damage::Index {
                what: format!("pack {pack} records {recorded} live bytes, chunks make {counted}"),
            });
        }
        let name = super::pack::Packs::name(pack);
        match store.files.open_pack(&name).and_then(|f| f.len()) {
            Ok(len) if len < end => report(Damage::Index {
                what: format!("pack {pack} is {len} bytes, shorter than its committed {end}"),
            }),
            Ok(_) => {}
            Err(e) => report(Damage::Index {
                what: format!("pack {pack}: {e}"),
            }),
        }
    }
    let recorded = read_counters(&meta)?;
    if recorded != expected {
        report(Damage::Index {
            what: format!("stored totals {recorded:?} differ from the recount {expected:?}"),
        });
    }
    Ok(())
}

/// Volumes: every map row's chunk is held and counted, every layer's references add up, and
/// every volume's figures are what its map says.
fn verify_volumes(
    r: &redb::ReadTransaction,
    chunks: &impl ReadableTable<[u8; 32], [u8; ChunkEntry::LEN]>,
    refs: &mut HashMap<ChunkId, u64>,
    expected: &mut Counters,
    report: &mut dyn FnMut(Damage),
) -> Result<()> {
    use super::volumes::{LAYERS, VMAP, VOLUMES};
    use crate::volume::{MapEntry, VolumeRecord};
    let volumes = r.open_table(VOLUMES)?;
    let layers = r.open_table(LAYERS)?;
    let vmap = r.open_table(VMAP)?;
    let mut layer_refs: HashMap<u64, u64> = HashMap::new();
    let mut tops = Vec::new();
    for row in volumes.iter()? {
        let (k, v) = row?;
        let name = k.value().to_string();
        let bytes = v.value();
        let Some(top) = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
        else {
            report(Damage::Index {
                what: format!("volume {name}: its row is too short"),
            });
            continue;
        };
        match VolumeRecord::decode(&name, &bytes[8..]) {
            Ok(record) => {
                expected.volumes += 1;
                expected.volume_changed((0, 0), (record.written, record.zeroed));
                *layer_refs.entry(top).or_default() += 1;
                tops.push((top, record));
            }
            Err(e) => report(Damage::Index {
                what: e.to_string(),
            }),
        }
    }
    for row in layers.iter()? {
        let (k, v) = row?;
        let (parent, _) = v.value();
        if parent != 0 {
            *layer_refs.entry(parent).or_default() += 1;
            if layers.get(parent)?.is_none() {
                report(Damage::Index {
                    what: format!(
                        "volume layer {} stands on layer {parent}, which is missing",
                        k.value()
                    ),
                });
            }
        }
    }
    for row in layers.iter()? {
        let (k, v) = row?;
        let (_, counted) = v.value();
        let want = layer_refs.get(&k.value()).copied().unwrap_or(0);
        if counted != want || want == 0 {
            report(Damage::Index {
                what: format!(
                    "volume layer {} counts {counted} references, volumes and layers make {want}",
                    k.value()
                ),
            });
        }
    }
    for row in vmap.iter()? {
        let (k, v) = row?;
        expected.map_rows += 1;
        let layer = (k.value() >> 64) as u64;
        if layers.get(layer)?.is_none() {
            report(Damage::Index {
                what: format!("a volume map row belongs to layer {layer}, which is missing"),
            });
        }
        match MapEntry::decode(&v.value()) {
            Ok(MapEntry::Chunk { id, .. }) => {
                *refs.entry(id).or_default() += 1;
                if chunks.get(id.0)?.is_none() {
                    report(Damage::Index {
                        what: format!(
                            "a map row of layer {layer} names chunk {id:?}, which the index lacks"
                        ),
                    });
                }
            }
            Ok(_) => {}
            Err(e) => report(Damage::Index {
                what: e.to_string(),
            }),
        }
    }
    // Each volume's figures against its map, through its layers.
    for (top, record) in tops {
        let (mut written, mut zeroed) = (0u64, 0u64);
        let mut chain = vec![top];
        while let Some(&(parent, _)) = layers
            .get(*chain.last().expect("one"))?
            .map(|v| v.value())
            .as_ref()
        {
            if parent == 0 || chain.contains(&parent) {
                break;
            }
            chain.push(parent);
        }
        let mut seen = std::collections::HashSet::new();
        for layer in &chain {
            for row in vmap.range(
                (u128::from(*layer) << 64)..(u128::from(*layer) << 64 | u128::from(u64::MAX)),
            )? {
                let (k, v) = row?;
                let index = k.value() as u64;
                if !seen.insert(index) || index >= record.chunks() {
                    continue;
                }
                let len = u64::from(record.chunk_len(index));
                match MapEntry::decode(&v.value()) {
                    Ok(MapEntry::Chunk { .. }) => written += len,
                    Ok(MapEntry::Zero) => zeroed += len,
                    _ => {}
                }
            }
        }
        if (written, zeroed) != (record.written, record.zeroed) {
            report(Damage::Index {
                what: format!(
                    "volume {} records {} written and {} zeroed bytes, its map makes {written} and {zeroed}",
                    record.name, record.written, record.zeroed
                ),
            });
        }
    }
    Ok(())
}
