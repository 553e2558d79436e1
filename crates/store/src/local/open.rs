//! Opening a data directory: its lock, the index's tables and salt, and crash recovery of the
//! pack files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::files::StoreFiles;
use super::index::{
    read_counters, Counters, ACCESSES, BLOCKS, CHUNKS, FORMAT, LOCATIONS, META, PACKS,
    UPGRADABLE_FORMATS, ZOMBIES,
};
use super::pack::Packs;
use crate::error::{Error, Result};

/// Takes an exclusive `flock` on `DIR/LOCK`, released when the file closes (even on a crash).
pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked(format!(
            "data directory {} is in use by another process",
            dir.display()
        )));
    }
    Ok(file)
}

/// Creates the tables and the salt on first open; checks the layout version after that.
pub(super) fn init_meta(db: &Database) -> Result<([u8; 16], Counters)> {
    let txn = db.begin_write()?;
    let result = {
        txn.open_table(BLOCKS)?;
        txn.open_table(CHUNKS)?;
        txn.open_table(LOCATIONS)?;
        txn.open_table(ACCESSES)?;
        txn.open_table(PACKS)?;
        txn.open_table(ZOMBIES)?;
        txn.open_table(super::volumes::VOLUMES)?;
        txn.open_table(super::volumes::LAYERS)?;
        txn.open_table(super::volumes::VMAP)?;
        let mut meta = txn.open_table(META)?;
        let format = meta.get("format")?.map(|v| v.value().to_vec());
        match format.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(v)) if u32::from_le_bytes(v) == FORMAT => {}
            Some(Ok(v)) if UPGRADABLE_FORMATS.contains(&u32::from_le_bytes(v)) => {
                meta.insert("format", FORMAT.to_le_bytes().as_slice())?;
            }
            Some(Ok(v)) => {
                return Err(Error::Corrupt(format!(
                    "data directory layout version {} is not supported by this build \
                     (it reads versions up to {FORMAT})",
                    u32::from_le_bytes(v)
                )))
            }
            Some(Err(_)) => return Err(Error::Corrupt("layout version is malformed".into())),
            None => {
                meta.insert("format", FORMAT.to_le_bytes().as_slice())?;
            }
        }
        let stored_salt = meta.get("salt")?.map(|v| v.value().to_vec());
        let salt = match stored_salt {
            Some(v) => v
                .try_into()
                .map_err(|_| Error::Corrupt("salt has the wrong length".into()))?,
            None => {
                let salt = crate::types::random_salt()?;
                meta.insert("salt", salt.as_slice())?;
                salt
            }
        };
        (salt, read_counters(&meta)?)
    };
    txn.commit()?;
    Ok(result)
}

/// Deletes pack files the index never committed to and trims uncommitted tails. Returns the next
/// pack number and the bytes of all packs.
pub(super) fn recover_packs(db: &Database, files: &dyn StoreFiles) -> Result<(u32, u64)> {
    let known: HashMap<u32, u64> = {
        let r = db.begin_read()?;
        let t = r.open_table(PACKS)?;
        let mut m = HashMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            m.insert(k.value(), v.value().0);
        }
        m
    };
    let mut next = known.keys().max().map_or(1, |m| m + 1);
    let mut bytes = 0;
    for name in files.pack_names()? {
        let Some(number) = Packs::number_of(&name) else {
            continue;
        };
        next = next.max(number + 1);
        match known.get(&number) {
            None => files.remove_pack(&name)?,
            Some(&end) => {
                let file = files.open_pack(&name)?;
                let len = file.len()?;
                if len > end {
                    file.set_len(end)?;
                    file.sync_data()?;
                }
                bytes += len.min(end);
            }
        }
    }
    files.sync_pack_names()?;
    Ok((next, bytes))
}
