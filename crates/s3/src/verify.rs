//! `verify`: every block's and every volume layer's chunks accounted for, every volume head and
//! delta readable, and with `read_data` every live chunk's bytes read back from the bucket and
//! checked.

use std::collections::{HashMap, HashSet};

use aetherflow_store::{ChunkId, Damage, Error, Result};

use crate::keys;
use crate::pack;
use crate::remote::Remote;
use crate::view::View;

pub(crate) fn verify(
    remote: &Remote,
    view: &View,
    read_data: bool,
    report: &mut dyn FnMut(Damage),
) -> Result<()> {
    view.refresh_if_stale(std::time::Duration::ZERO)?;
    let mut packs = Vec::new();
    for (key, why) in view.damaged_records() {
        report(Damage::Index {
            what: format!("log record {key}: {why}; the blocks it holds are unknown"),
        });
    }
    view.read(|catalog| {
        for (name, why) in catalog.bad_packs() {
            report(Damage::Index {
                what: format!("pack {name}: {why}"),
            });
        }
        for (name, why) in catalog.damaged_volumes() {
            report(Damage::Index {
                what: format!("volume {name}: {why}"),
            });
        }
        for (key, why) in catalog.damaged_deltas() {
            report(Damage::Index {
                what: format!("{key}: {why}"),
            });
        }
        let mut named = HashSet::new();
        for (layer, index, c) in catalog.volume_chunk_refs() {
            if !catalog.has_home(&c) && named.insert(layer) {
                report(Damage::Index {
                    what: format!(
                        "volume layer {layer:032x}: chunk {index} refers to chunk {c:?}, which no \
                         pack in the bucket holds"
                    ),
                });
            }
        }
        for id in catalog.block_ids() {
            let manifest = catalog.block(id).expect("listed");
            let homeless = manifest
                .chunk_refs()
                .find(|c| !catalog.has_home(c))
                .copied();
            if let Some(c) = homeless {
                report(Damage::Block {
                    id,
                    what: format!("refers to chunk {c:?}, which no pack in the bucket holds"),
                });
            }
        }
        if read_data {
            for name in catalog.pack_names() {
                let p = catalog.pack(&name).expect("listed");
                let live: Vec<_> = p
                    .chunks
                    .iter()
                    .filter(|(_, i)| catalog.is_live(&i.id))
                    .copied()
                    .collect();
                if !live.is_empty() {
                    packs.push((name, live));
                }
            }
        }
    });
    let mut good: HashSet<ChunkId> = HashSet::new();
    let mut bad: HashMap<ChunkId, String> = HashMap::new();
    for (name, live) in packs {
        let bytes = match remote.get(&keys::pack(&name)) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => {
                for (_, info) in &live {
                    bad.entry(info.id)
                        .or_insert_with(|| format!("pack {name} is gone from the bucket"));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        for (offset, info) in live {
            let record = pack::record_at(&bytes, offset, &info);
            match pack::check_record(&name, offset, record, &info) {
                Ok(_) => {
                    good.insert(info.id);
                }
                Err(e) => {
                    bad.entry(info.id).or_insert_with(|| e.to_string());
                }
            }
        }
    }
    for (id, what) in bad {
        if !good.contains(&id) {
            report(Damage::Chunk { id, what });
        }
    }
    Ok(())
}
