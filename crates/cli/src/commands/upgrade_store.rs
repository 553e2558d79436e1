//! `aetherflow upgrade-store URL`: a store of format version 2 on object storage turned into
//! this build's version, once (see `aetherflow_s3::upgrade`).

use std::io::{self, Write};

use aetherflow_s3::{s3_bucket, Timeouts};
use anyhow::Context;

use crate::cli::UpgradeStoreArgs;
use crate::exit::SUCCESS;

pub fn run(args: UpgradeStoreArgs) -> anyhow::Result<u8> {
    let location = crate::store_url::s3(&args.store)?;
    let name = location.to_string();
    let bucket = s3_bucket(&location, Timeouts::default()).with_context(|| name.clone())?;
    let report =
        aetherflow_s3::upgrade::upgrade(bucket, &location).with_context(|| name.clone())?;
    let mut out = io::stdout().lock();
    match report {
        None if args.json => writeln!(out, r#"{{"upgraded":false}}"#)?,
        None => writeln!(
            out,
            "{name}: already of version {}; nothing to do",
            aetherflow_s3::meta::META_VERSION
        )?,
        Some(r) if args.json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "upgraded": true,
                "blocks": r.blocks,
                "packs": r.packs,
                "unreadablePacks": r.unreadable_packs,
                "volumes": r.volumes,
                "deltas": r.deltas,
                "snapshotEpoch": r.snapshot_epoch,
                "oldLogObjectsDeleted": r.old_log_objects,
            })
        )?,
        Some(r) => {
            writeln!(out, "Store:          {name}")?;
            writeln!(
                out,
                "Upgraded:       version {} to {}",
                aetherflow_s3::upgrade::FROM_VERSION,
                aetherflow_s3::meta::META_VERSION
            )?;
            writeln!(out, "Blocks:         {}", r.blocks)?;
            writeln!(out, "Packs:          {}", r.packs)?;
            if r.unreadable_packs > 0 {
                writeln!(
                    out,
                    "Left out:       {} packs whose index cannot be read (`check` names them)",
                    r.unreadable_packs
                )?;
            }
            writeln!(out, "Volumes:        {} ({} deltas)", r.volumes, r.deltas)?;
            writeln!(
                out,
                "Log:            snapshot at epoch {}, {} objects of the old log deleted",
                r.snapshot_epoch, r.old_log_objects
            )?;
        }
    }
    Ok(SUCCESS)
}
