//! The upgrade of a store of version 2 to version 3, once, with every server stopped.
//!
//! Version 2 kept each block as a `blocks/ID` object holding its manifest, and learnt packs,
//! volumes and layers by listing them; its log only carried news. Version 3 keeps blocks in the
//! log. The upgrade reads what version 2 lists (every manifest, every pack's index, the volume
//! heads' names, the layers' deltas) and writes it as the snapshot of the log at the last epoch
//! of the old log, as if every block had been added there; then it deletes the old log, begins
//! the next epoch, and writes version 3 into `aetherflow.store` last (only if no one changed
//! it meanwhile). Until that last write the bucket is a version-2 store that version-2 builds
//! still open, so an upgrade cut short is simply run again.
//!
//! Each `blocks/ID` object stays where it is and holds its block's id from then on, as an
//! import's reservation does: the upgraded blocks count as imported, so the free of one deletes
//! its object.

use std::sync::Arc;

use aetherflow_store::{BlockId, Error, Manifest, Result};
use bytes::Bytes;
use object_store::ObjectStore;

use crate::keys;
use crate::location::S3Location;
use crate::log_record::{self, Event, Origin};
use crate::log_snapshot::{self, done_key, Done, Entry};
use crate::meta::{decode_identity, encode_identity, META_VERSION};
use crate::pack;
use crate::remote::Remote;
use crate::view::read_pack_index;
use crate::volume_objects;

/// The version this upgrade reads.
pub const FROM_VERSION: u8 = 2;
/// The writer id the snapshot's entries name.
const WRITER: &str = "upgrade";

/// What an upgrade found and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpgradeReport {
    pub blocks: u64,
    pub packs: u64,
    /// Packs whose index could not be read: left in the bucket, known to no record (a sweep
    /// finds them, and `check` names them).
    pub unreadable_packs: u64,
    pub volumes: u64,
    pub deltas: u64,
    /// The epoch of the snapshot written; the log goes on from the next.
    pub snapshot_epoch: u64,
    /// Objects of the old log deleted.
    pub old_log_objects: u64,
}

/// Upgrades the version-2 store at `location` in `bucket`; `None` if it is of version 3
/// already. Every server of the store must be stopped (see the module documentation).
pub fn upgrade(
    bucket: Arc<dyn ObjectStore>,
    location: &S3Location,
) -> Result<Option<UpgradeReport>> {
    let remote = Remote::new(bucket, location)?;
    let (identity, etag) = remote.get_with_etag(keys::META)?;
    let (version, salt) = decode_identity(&identity)?;
    if version == META_VERSION {
        return Ok(None);
    }
    if version != FROM_VERSION {
        return Err(Error::Refused(format!(
            "{}: this store is of version {version}; this build upgrades version {FROM_VERSION} \
             to {META_VERSION} only",
            keys::META
        )));
    }
    let etag = etag.ok_or_else(|| {
        Error::Unavailable("the object store gave no ETag for the store's identity".into())
    })?;
    let mut report = UpgradeReport::default();
    let mut entries = Vec::new();
    let entry = |seq: u64, written_ms: i64, event: Event| Entry {
        epoch: 0,
        origin: Origin {
            writer: Arc::from(WRITER),
            seq,
        },
        written_ms,
        event,
    };

    // Packs first, as a snapshot keeps them.
    let packs = remote.list(keys::PACKS)?;
    let keys_of: Vec<String> = packs.iter().map(|l| l.key.clone()).collect();
    remote.for_each_tail(&keys_of, pack::TAIL_GUESS, |i, tail| {
        let l = &packs[i];
        let name = &l.key[keys::PACKS.len()..];
        match tail.and_then(|tail| read_pack_index(&remote, name, l.size, tail)) {
            Ok(found) => {
                report.packs += 1;
                entries.push(entry(
                    entries.len() as u64,
                    l.modified_ms,
                    Event::PackAdded {
                        name: name.to_string(),
                        size: l.size,
                        entries: found,
                    },
                ));
            }
            Err(Error::Corrupt(why)) => {
                tracing::error!("pack {name}: {why}; left out of the upgrade");
                report.unreadable_packs += 1;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    })?;

    // Every block, with its manifest: one that cannot be read stops the upgrade.
    let mut blocks: Vec<(BlockId, i64, String)> = remote
        .list(keys::RESERVED)?
        .into_iter()
        .filter_map(|l| {
            let id = l.key[keys::RESERVED.len()..].parse().ok()?;
            Some((id, l.modified_ms, l.key))
        })
        .collect();
    blocks.sort_unstable_by_key(|(id, _, _)| *id);
    let block_keys: Vec<String> = blocks.iter().map(|(_, _, k)| k.clone()).collect();
    remote.for_each_object(&block_keys, |i, body| {
        let (id, written_ms, key) = &blocks[i];
        let manifest = Manifest::decode(&body?, &format_args!("{key}")).map_err(|e| {
            Error::Corrupt(format!(
                "{e}; the upgrade stops here (delete or repair the block with the version-2 \
                 build first)"
            ))
        })?;
        report.blocks += 1;
        entries.push(entry(
            entries.len() as u64,
            *written_ms,
            Event::BlockAdded {
                id: *id,
                manifest: Arc::new(manifest),
                imported: true,
            },
        ));
        Ok(())
    })?;

    // Volumes: their heads by name, and every delta of every layer.
    for l in remote.list(keys::VOLUMES)? {
        report.volumes += 1;
        let name = l.key[keys::VOLUMES.len()..].to_string();
        entries.push(entry(
            entries.len() as u64,
            l.modified_ms,
            Event::HeadChanged { name },
        ));
    }
    for l in remote.list(keys::LAYERS)? {
        if let Some((layer, seq)) = volume_objects::parse_delta_key(&l.key) {
            report.deltas += 1;
            let event = Event::DeltaAdded {
                layer,
                seq,
                size: l.size,
            };
            entries.push(entry(entries.len() as u64, l.modified_ms, event));
        }
    }

    // The snapshot, at the old log's last epoch; then the old log goes, and the next epoch
    // begins. (Nothing here is read by a version-2 build: an upgrade cut short is run again.)
    // The newest epoch the old log reached, or an upgrade cut short wrote a snapshot at: a
    // run again must not write below either (readers start after the newest snapshot).
    let old_log = remote.list(log_record::LOG)?;
    let epoch = old_log
        .iter()
        .filter_map(|l| {
            log_record::parse_epoch_marker(&l.key)
                .or_else(|| log_record::parse_record_key(&l.key).map(|(e, _, _)| e))
        })
        .chain(
            remote
                .list(log_snapshot::INDEX)?
                .iter()
                .filter_map(|l| log_snapshot::parse_snapshot_epoch(&l.key)),
        )
        .max()
        .unwrap_or(0);
    report.snapshot_epoch = epoch;
    for e in &mut entries {
        e.epoch = epoch;
    }
    let segments = log_snapshot::segments(epoch, entries);
    let done = Done::of(epoch, WRITER, &segments);
    for (key, bytes) in done.segment_keys().into_iter().zip(segments) {
        remote.put(&key, Bytes::from(bytes), false)?;
    }
    remote.put(&done_key(epoch), Bytes::from(done.encode()), false)?;
    let (markers, records): (Vec<_>, Vec<_>) = old_log
        .iter()
        .partition(|l| log_record::parse_epoch_marker(&l.key).is_some());
    for l in markers.into_iter().chain(records) {
        remote.delete(&l.key)?;
        report.old_log_objects += 1;
    }
    match remote.create(&log_record::epoch_marker(epoch + 1), Bytes::new()) {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e),
    }
    remote
        .put_if_match(keys::META, encode_identity(META_VERSION, &salt), &etag)
        .map_err(|e| match e {
            Error::AlreadyExists(_) => Error::Refused(format!(
                "{} changed while the store was upgraded: run the upgrade again with every \
                 server stopped",
                keys::META
            )),
            e => e,
        })?;
    Ok(Some(report))
}
