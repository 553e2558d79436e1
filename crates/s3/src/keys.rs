//! The bucket's layout: every object key this store writes, relative to its prefix.
//!
//! ```text
//! aetherflow.store              identity: format version and the dedup-domain salt
//! packs/WRITER-SEQ              chunk records and their index (see `pack`)
//! log/epochs/E, log/E/W-SEQ     the log: blocks exist in its records (see `log_record`)
//! blocks/UUID                   holds an id an import chose, until that block is freed (its body:
//!                               a random token of the reservation)
//! reads/UUID/WRITER.COUNT       read count of a block as counted by one server (empty object)
//! gc/condemned/PACK             mark: PACK may be deleted once the grace period has passed
//! gc/clock/WRITER               written to learn the bucket's clock
//! volumes/NAME                  a volume's head (see `volume_objects`)
//! layers/LAYER/SEQ              one commit to a layer of volume maps
//! gc/condemned-layers/LAYER     mark: a layer no volume refers to, deleted after the grace
//! ```

use aetherflow_store::BlockId;

pub const META: &str = "aetherflow.store";
pub const PACKS: &str = "packs/";
pub const RESERVED: &str = "blocks/";
pub const READS: &str = "reads/";
pub const CONDEMNED: &str = "gc/condemned/";
pub const VOLUMES: &str = "volumes/";
pub const LAYERS: &str = "layers/";
pub const CONDEMNED_LAYERS: &str = "gc/condemned-layers/";

pub fn pack(name: &str) -> String {
    format!("{PACKS}{name}")
}

pub fn reservation(id: BlockId) -> String {
    format!("{RESERVED}{id}")
}

pub fn condemned(pack: &str) -> String {
    format!("{CONDEMNED}{pack}")
}

pub fn clock(writer: &str) -> String {
    format!("gc/clock/{writer}")
}

pub fn reads_of(id: BlockId) -> String {
    format!("{READS}{id}/")
}

pub fn reads(id: BlockId, writer: &str, count: u64) -> String {
    format!("{READS}{id}/{writer}.{count}")
}

/// The block, writer and count of a `reads/` key.
pub fn parse_reads(key: &str) -> Option<(BlockId, &str, u64)> {
    let rest = key.strip_prefix(READS)?;
    let (id, file) = rest.split_once('/')?;
    let (writer, count) = file.rsplit_once('.')?;
    Some((id.parse().ok()?, writer, count.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_count_keys_round_trip() {
        let id = BlockId::random();
        let key = reads(id, "w1", 42);
        assert_eq!(parse_reads(&key), Some((id, "w1", 42)));
        assert_eq!(parse_reads("reads/nonsense"), None);
    }
}
