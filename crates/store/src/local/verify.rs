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
                    "chunk {id:?} counts {} references, blocks make {want}",
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
