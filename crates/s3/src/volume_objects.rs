//! The objects a volume is made of in the bucket, and their byte layout.
//!
//! ```text
//! volumes/NAME               head: the record, the layer chain (top first, each sealed at a
//!                            sequence number or open), the lease of the server that writes it
//! layers/LAYER/SEQ           delta: one commit of the layer's owner: ranges cleared, then
//!                            rows set (chunk index -> map entry)
//! gc/condemned-layers/LAYER  mark: the layer belongs to no volume and goes after the grace
//! ```
//!
//! Every object ends with 16 bytes of BLAKE3 of what precedes it, and every count is checked
//! against the bytes left before anything is allocated: a damaged or hostile object is
//! [`Error::Corrupt`], never a panic or an allocation it names.

use aetherflow_store::{Error, MapEntry, Result, VolumeRecord};

use crate::wire::{check, checked, Cursor};

const HEAD_MAGIC: [u8; 8] = *b"AFVOLHD1";
const DELTA_MAGIC: [u8; 8] = *b"AFVOLDL1";

/// Layers in a chain at most (a chain grows by one per snapshot of the volume).
pub const MAX_CHAIN: usize = 1 << 16;

/// A layer's identity: random, so that servers never agree on one by accident.
pub type LayerId = u128;

/// A new layer identity.
pub fn new_layer() -> LayerId {
    uuid::Uuid::new_v4().as_u128()
}

pub fn layer_dir(layer: LayerId) -> String {
    format!("{}{layer:032x}/", crate::keys::LAYERS)
}

pub fn delta_key(layer: LayerId, seq: u64) -> String {
    format!("{}{seq:016}", layer_dir(layer))
}

/// The layer and sequence number of a `layers/` key.
pub fn parse_delta_key(key: &str) -> Option<(LayerId, u64)> {
    let rest = key.strip_prefix(crate::keys::LAYERS)?;
    let (layer, seq) = rest.split_once('/')?;
    if layer.len() != 32 || seq.len() != 16 {
        return None;
    }
    Some((u128::from_str_radix(layer, 16).ok()?, seq.parse().ok()?))
}

pub fn volume_key(name: &str) -> String {
    format!("{}{name}", crate::keys::VOLUMES)
}

pub fn condemned_layer_key(layer: LayerId) -> String {
    format!("{}{layer:032x}", crate::keys::CONDEMNED_LAYERS)
}

pub fn parse_condemned_layer(key: &str) -> Option<LayerId> {
    let rest = key.strip_prefix(crate::keys::CONDEMNED_LAYERS)?;
    (rest.len() == 32).then(|| u128::from_str_radix(rest, 16).ok())?
}

/// One layer of a chain: `sealed` is how many sequence numbers belong to it (0 to one less; a
/// layer frozen by a snapshot or by a change of writer), `None` for the open top layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    pub layer: LayerId,
    pub sealed: Option<u64>,
}

/// Which server writes a volume, until when (in the bucket's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub expires_ms: i64,
}

/// A volume's head object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its `written` and `zeroed` are not kept here: they follow from the map.
    pub record: VolumeRecord,
    pub chain: Vec<ChainLink>,
    pub lease: Option<Lease>,
}

impl Head {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = HEAD_MAGIC.to_vec();
        let record = VolumeRecord {
            written: 0,
            zeroed: 0,
            ..self.record.clone()
        }
        .encode();
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(&record);
        out.extend_from_slice(&(self.chain.len() as u16).to_le_bytes());
        for link in &self.chain {
            out.extend_from_slice(&link.layer.to_le_bytes());
            out.push(u8::from(link.sealed.is_some()));
            out.extend_from_slice(&link.sealed.unwrap_or(0).to_le_bytes());
        }
        match &self.lease {
            None => out.push(0),
            Some(l) => {
                out.push(1);
                let owner = &l.owner.as_bytes()[..l.owner.len().min(255)];
                out.push(owner.len() as u8);
                out.extend_from_slice(owner);
                out.extend_from_slice(&l.expires_ms.to_le_bytes());
            }
        }
        let sum = check(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes the head of volume `name` (the name is its key's).
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Head> {
        let what = format!("head of volume {name}");
        let body = checked(&what, "a volume object", bytes, &HEAD_MAGIC)?;
        let mut c = Cursor::new(body, &what);
        let record_len = c.count(true, 1)?;
        let record = VolumeRecord::decode(name, c.take(record_len)?)?;
        // A head keeps no usage counts (they are summed from the layers): `encode` writes zeros.
        if record.written != 0 || record.zeroed != 0 {
            return Err(Error::Corrupt(format!("{what}: usage counts in the head")));
        }
        let links = c.count(false, 25)?;
        if links == 0 {
            return Err(Error::Corrupt(format!("{what}: no layers")));
        }
        let mut chain = Vec::with_capacity(links);
        for _ in 0..links {
            let layer = c.u128()?;
            let sealed = match c.u8()? {
                0 => match c.u64()? {
                    0 => None,
                    n => {
                        return Err(Error::Corrupt(format!(
                            "{what}: an open layer with a seal of {n}"
                        )))
                    }
                },
                1 => Some(c.u64()?),
                k => return Err(Error::Corrupt(format!("{what}: a seal flag of {k}"))),
            };
            chain.push(ChainLink { layer, sealed });
        }
        if chain[1..].iter().any(|l| l.sealed.is_none()) {
            return Err(Error::Corrupt(format!(
                "{what}: an open layer below the top"
            )));
        }
        if record.read_only && chain[0].sealed.is_none() {
            return Err(Error::Corrupt(format!(
                "{what}: a snapshot with an open layer"
            )));
        }
        let lease = match c.u8()? {
            0 => None,
            1 => {
                let n = usize::from(c.u8()?);
                let owner = String::from_utf8(c.take(n)?.to_vec()).map_err(|_| {
                    Error::Corrupt(format!("{what}: a lease owner that is not text"))
                })?;
                let expires_ms = c.u64()? as i64;
                Some(Lease { owner, expires_ms })
            }
            k => return Err(Error::Corrupt(format!("{what}: a lease flag of {k}"))),
        };
        c.done()?;
        Ok(Head {
            record,
            chain,
            lease,
        })
    }
}

/// One commit to a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub layer: LayerId,
    pub seq: u64,
    /// The volume's size and chunk size: what a chunk's plaintext length follows from, known
    /// even for a layer no volume refers to any more.
    pub size: u64,
    pub chunk_size: u32,
    /// Chunk ranges whose rows of this layer go, applied before `rows`.
    pub cleared: Vec<(u64, u64)>,
    pub rows: Vec<(u64, MapEntry)>,
}

impl Delta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = DELTA_MAGIC.to_vec();
        out.extend_from_slice(&self.layer.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&(self.cleared.len() as u32).to_le_bytes());
        for (start, end) in &self.cleared {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        out.extend_from_slice(&(self.rows.len() as u32).to_le_bytes());
        for (index, entry) in &self.rows {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&entry.encode());
        }
        let sum = check(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes the delta stored at `key`: it must name the layer and sequence number its key
    /// does, and its rows must lie inside the volume.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Delta> {
        let what = format!("volume delta {key}");
        let body = checked(&what, "a volume object", bytes, &DELTA_MAGIC)?;
        let mut c = Cursor::new(body, &what);
        let layer = c.u128()?;
        let seq = c.u64()?;
        let size = c.u64()?;
        let chunk_size = c.u32()?;
        if !chunk_size.is_power_of_two() || size == 0 {
            return Err(Error::Corrupt(format!(
                "{what}: a size of {size} in chunks of {chunk_size}"
            )));
        }
        if parse_delta_key(key).is_some_and(|k| k != (layer, seq)) {
            return Err(Error::Corrupt(format!(
                "{what}: it names another layer or sequence number"
            )));
        }
        let chunks = size.div_ceil(u64::from(chunk_size));
        let n = c.count(true, 16)?;
        let mut cleared = Vec::with_capacity(n);
        for _ in 0..n {
            let (start, end) = (c.u64()?, c.u64()?);
            if start >= end || end > chunks {
                return Err(Error::Corrupt(format!(
                    "{what}: a cleared range {start}..{end}"
                )));
            }
            cleared.push((start, end));
        }
        let n = c.count(true, 8 + MapEntry::LEN)?;
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let index = c.u64()?;
            if index >= chunks {
                return Err(Error::Corrupt(format!(
                    "{what}: a row at chunk {index}, past the end"
                )));
            }
            let entry = MapEntry::decode(c.take(MapEntry::LEN)?.try_into().expect("37"))?;
            rows.push((index, entry));
        }
        c.done()?;
        Ok(Delta {
            layer,
            seq,
            size,
            chunk_size,
            cleared,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::CHECK_LEN;
    use aetherflow_store::ChunkId;

    fn record(read_only: bool) -> VolumeRecord {
        VolumeRecord {
            name: "v".into(),
            size: 1 << 30,
            chunk_size: 65536,
            read_only,
            seed: None,
            origin: Some("base".into()),
            created: 7,
            written: 0,
            zeroed: 0,
        }
    }

    #[test]
    fn a_head_has_one_encoding() {
        let head = |record, sealed| Head {
            record,
            chain: vec![ChainLink { layer: 5, sealed }],
            lease: None,
        };
        // What `encode` never writes is refused, even under a valid checksum: usage counts,
        // and a seal number on an open layer.
        let counted = VolumeRecord {
            written: 1 << 16,
            ..record(false)
        };
        let mut bytes = HEAD_MAGIC.to_vec();
        let r = counted.encode();
        bytes.extend_from_slice(&(r.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&r);
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&5u128.to_le_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.push(0);
        let sum = check(&bytes);
        bytes.extend_from_slice(&sum);
        assert!(Head::decode("v", &bytes).is_err(), "usage counts in a head");
        let good = head(record(false), None).encode();
        assert!(Head::decode("v", &good).is_ok());
        // The open layer's seal field, set: the flag byte sits right before it.
        let mut bad = good[..good.len() - CHECK_LEN].to_vec();
        let flag = bad.len() - 1 - 8 - 1;
        assert_eq!(bad[flag], 0);
        bad[flag + 1] = 7;
        let sum = check(&bad);
        bad.extend_from_slice(&sum);
        assert!(Head::decode("v", &bad).is_err(), "a seal on an open layer");
    }

    #[test]
    fn heads_and_deltas_round_trip_and_refuse_damage() {
        let head = Head {
            record: record(false),
            chain: vec![
                ChainLink {
                    layer: 5,
                    sealed: None,
                },
                ChainLink {
                    layer: 9,
                    sealed: Some(41),
                },
            ],
            lease: Some(Lease {
                owner: "writer-1".into(),
                expires_ms: 1_700_000_000_000,
            }),
        };
        let bytes = head.encode();
        assert_eq!(Head::decode("v", &bytes).unwrap(), head);
        let delta = Delta {
            layer: 5,
            seq: 3,
            size: 1 << 30,
            chunk_size: 65536,
            cleared: vec![(10, 20)],
            rows: vec![
                (1, MapEntry::Zero),
                (
                    2,
                    MapEntry::Chunk {
                        id: ChunkId([4; 32]),
                        stored_len: 99,
                    },
                ),
                (3, MapEntry::Hole),
            ],
        };
        let key = delta_key(5, 3);
        let bytes = delta.encode();
        assert_eq!(Delta::decode(&key, &bytes).unwrap(), delta);
        assert!(
            Delta::decode(&delta_key(5, 4), &bytes).is_err(),
            "another seq"
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Delta::decode(&key, &bad).is_err(), "byte {i} flipped");
        }
        for n in 0..bytes.len() {
            assert!(Delta::decode(&key, &bytes[..n]).is_err());
        }
        // A snapshot's top must be sealed; below the top every layer is.
        let open_snapshot = Head {
            record: record(true),
            chain: vec![ChainLink {
                layer: 1,
                sealed: None,
            }],
            lease: None,
        };
        assert!(Head::decode("v", &open_snapshot.encode()).is_err());
    }

    #[test]
    fn keys_parse_back() {
        let key = delta_key(0xabc, 12);
        assert_eq!(parse_delta_key(&key), Some((0xabc, 12)));
        assert_eq!(parse_delta_key("layers/zz/1"), None);
        assert_eq!(parse_condemned_layer(&condemned_layer_key(77)), Some(77));
    }
}
