//! Pack files: chunks appended one after another, a few tens of MiB per file.
//!
//! ```text
//! pack:   magic "AFPACK01" [8] | pack number u32 | reserved u32        (16 bytes)
//!         record*
//! record: chunk id [32] | codec u8 | raw_len u32 | stored_len u32 | payload check [16]
//!         | header check u32 (BLAKE3 of the 57 bytes before it) | payload [stored_len]
//! ```
//!
//! Records describe themselves, so a pack can be checked (and an index rebuilt) from the pack
//! alone. Writers reserve a byte range under a short lock and write it with `pwrite` outside the
//! lock, so concurrent allocations write in parallel; the index decides which ranges are live.
//! A range reserved but never committed is dead space that compaction reclaims.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::files::{PackFile, StoreFiles};
use crate::epoch::EpochGate;
use crate::error::{Error, Result, What};
use crate::types::{encoding_byte, encoding_from_byte, ChunkId, ChunkInfo};

const MAGIC: [u8; 8] = *b"AFPACK01";
/// Bytes before the first record of a pack.
pub const PACK_HEADER_LEN: u64 = 16;
/// Bytes of a record before its payload.
pub const RECORD_HEADER_LEN: usize = 32 + 1 + 4 + 4 + 16 + 4;

/// Encodes a record header.
pub fn record_header(info: &ChunkInfo) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..32].copy_from_slice(&info.id.0);
    h[32] = encoding_byte(info);
    h[33..37].copy_from_slice(&info.raw_len.to_le_bytes());
    h[37..41].copy_from_slice(&info.stored_len.to_le_bytes());
    h[41..57].copy_from_slice(&info.check);
    let check = blake3::hash(&h[..57]);
    h[57..].copy_from_slice(&check.as_bytes()[..4]);
    h
}

/// Decodes and checks a record header.
pub fn parse_record_header(h: &[u8; RECORD_HEADER_LEN]) -> Result<ChunkInfo> {
    if blake3::hash(&h[..57]).as_bytes()[..4] != h[57..] {
        return Err(Error::Corrupt("pack record header check mismatch".into()));
    }
    let (codec, nonce_stored) = encoding_from_byte(h[32])?;
    Ok(ChunkInfo {
        id: ChunkId(h[..32].try_into().expect("32 bytes")),
        codec,
        nonce_stored,
        raw_len: u32::from_le_bytes(h[33..37].try_into().expect("4 bytes")),
        stored_len: u32::from_le_bytes(h[37..41].try_into().expect("4 bytes")),
        check: h[41..57].try_into().expect("16 bytes"),
    })
}

/// The pack currently appended to.
#[derive(Debug)]
struct Active {
    number: u32,
    file: Arc<dyn PackFile>,
    /// Next free byte (everything below is reserved).
    end: u64,
}

/// All pack files of a store: the one being appended to and open handles for reading.
#[derive(Debug)]
pub struct Packs {
    files: Arc<dyn StoreFiles>,
    /// Rotate to a new pack once the active one reaches this size.
    target_size: u64,
    active: Mutex<Option<Active>>,
    /// Open handles, shared: a reader keeps reading a pack even if compaction unlinks it.
    open: RwLock<HashMap<u32, Arc<dyn PackFile>>>,
    next_number: Mutex<u32>,
    /// The first pack this process created: older ones were sealed by an earlier process.
    first_own: u32,
    /// Packs this process sealed, with the epoch of sealing (see [`crate::epoch`]). A pack is
    /// recorded here in the same critical section that stops appends to it.
    sealed: Mutex<BTreeMap<u32, u64>>,
    gate: Arc<EpochGate>,
    /// Bytes of all pack files, live and dead.
    bytes: AtomicU64,
    /// Packs deleted by this process: a late reader must not reopen and cache them.
    deleted: Mutex<HashSet<u32>>,
}

/// Open handles kept for reading; beyond this the least useful are closed.
const MAX_OPEN: usize = 256;

impl Packs {
    /// Opens the pack directory; `next_number` is above every pack the index or disk knows.
    pub fn open(
        files: Arc<dyn StoreFiles>,
        target_size: u64,
        next_number: u32,
        bytes: u64,
        gate: Arc<EpochGate>,
    ) -> Packs {
        Packs {
            files,
            target_size,
            active: Mutex::new(None),
            open: RwLock::default(),
            next_number: Mutex::new(next_number),
            first_own: next_number,
            sealed: Mutex::default(),
            gate,
            bytes: AtomicU64::new(bytes),
            deleted: Mutex::default(),
        }
    }

    /// Whether no running allocation can still commit chunks staged into `pack`: it is not
    /// the active pack, and it was sealed before every running allocation began.
    pub fn is_settled(&self, pack: u32) -> bool {
        let active = self.active.lock().expect("pack lock");
        if active.as_ref().is_some_and(|a| a.number == pack) {
            return false;
        }
        match self.sealed.lock().expect("sealed lock").get(&pack) {
            Some(&stamp) => self.gate.is_settled(stamp),
            None => pack < self.first_own,
        }
    }

    /// Packs this process sealed and has not deleted.
    pub fn sealed_numbers(&self) -> Vec<u32> {
        self.sealed
            .lock()
            .expect("sealed lock")
            .keys()
            .copied()
            .collect()
    }

    /// Stops appends to the active pack (called with the `active` lock held).
    fn seal_locked(&self, active: &mut Option<Active>) {
        if let Some(a) = active.take() {
            self.gate.record(|stamp| {
                self.sealed
                    .lock()
                    .expect("sealed lock")
                    .insert(a.number, stamp);
            });
        }
    }

    /// The file name of pack `number`.
    pub fn name(number: u32) -> String {
        format!("{number:08}.pack")
    }

    /// Parses a pack file name back to its number.
    pub fn number_of(name: &str) -> Option<u32> {
        name.strip_suffix(".pack")?.parse().ok()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The number of the pack being appended to, if any.
    pub fn active_number(&self) -> Option<u32> {
        self.active
            .lock()
            .expect("pack lock")
            .as_ref()
            .map(|a| a.number)
    }

    /// Reserves `len` bytes and returns where. Starts a new pack when the active one is full.
    fn reserve(&self, len: u64) -> Result<(u32, Arc<dyn PackFile>, u64)> {
        let mut active = self.active.lock().expect("pack lock");
        if active
            .as_ref()
            .is_some_and(|a| a.end > PACK_HEADER_LEN && a.end + len > self.target_size)
        {
            self.seal_locked(&mut active);
        }
        if active.is_none() {
            *active = Some(self.create()?);
        }
        let a = active.as_mut().expect("just set");
        let offset = a.end;
        a.end += len;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok((a.number, Arc::clone(&a.file), offset))
    }

    /// Gives back the space of a failed append (a full disk) if nothing was reserved after
    /// it, so that failed retries do not grow the pack; otherwise it stays dead space, for
    /// compaction. Nothing points into it either way: the append's caller failed.
    fn unreserve(&self, number: u32, file: &dyn PackFile, at: u64, len: u64) {
        let mut active = self.active.lock().expect("pack lock");
        if let Some(a) = active.as_mut() {
            if a.number == number && a.end == at + len && file.set_len(at).is_ok() {
                a.end = at;
                self.bytes.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }

    /// Seals the active pack if it is `number`, so that nothing more is appended to it.
    pub fn seal(&self, number: u32) {
        let mut active = self.active.lock().expect("pack lock");
        if active.as_ref().is_some_and(|a| a.number == number) {
            self.seal_locked(&mut active);
        }
    }

    fn create(&self) -> Result<Active> {
        let mut next = self.next_number.lock().expect("pack lock");
        let number = *next;
        let name = Packs::name(number);
        let file = self.files.create_pack(&name)?;
        // The number is taken from here on, whatever happens next: a pack that could not be
        // started (a full disk) is removed, and the next try starts the next number.
        *next = number + 1;
        let started = (|| -> io::Result<()> {
            let mut header = [0u8; PACK_HEADER_LEN as usize];
            header[..8].copy_from_slice(&MAGIC);
            header[8..12].copy_from_slice(&number.to_le_bytes());
            file.write_all_at(&header, 0)?;
            // The new name must be durable before any index entry can point into it.
            file.sync_data()?;
            self.files.sync_pack_names()
        })();
        if let Err(e) = started {
            let _ = self.files.remove_pack(&name);
            return Err(e.into());
        }
        self.bytes.fetch_add(PACK_HEADER_LEN, Ordering::Relaxed);
        self.open
            .write()
            .expect("pack lock")
            .insert(number, Arc::clone(&file));
        Ok(Active {
            number,
            file,
            end: PACK_HEADER_LEN,
        })
    }

    /// Appends records (header and payload each) in one write. Returns the pack and each
    /// record's offset. Not durable until [`Packs::sync`].
    pub fn append(&self, records: &[(ChunkInfo, &[u8])]) -> Result<(u32, Vec<u64>)> {
        let len: usize = records
            .iter()
            .map(|(_, p)| RECORD_HEADER_LEN + p.len())
            .sum();
        let mut buf = Vec::with_capacity(len);
        let mut offsets = Vec::with_capacity(records.len());
        for (info, payload) in records {
            offsets.push(buf.len() as u64);
            buf.extend_from_slice(&record_header(info));
            buf.extend_from_slice(payload);
        }
        let (number, file, at) = self.reserve(len as u64)?;
        if let Err(e) = file.write_all_at(&buf, at) {
            self.unreserve(number, &*file, at, len as u64);
            return Err(e.into());
        }
        for o in &mut offsets {
            *o += at;
        }
        Ok((number, offsets))
    }

    /// Flushes a pack's data to the disk.
    pub fn sync(&self, number: u32) -> Result<()> {
        self.file(number)?.sync_data()?;
        Ok(())
    }

    fn file(&self, number: u32) -> Result<Arc<dyn PackFile>> {
        if let Some(f) = self.open.read().expect("pack lock").get(&number) {
            return Ok(Arc::clone(f));
        }
        let file = match self.files.open_pack(&Packs::name(number)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(What::Pack(number.to_string())))
            }
            Err(e) => return Err(e.into()),
        };
        let active = self.active_number();
        let mut open = self.open.write().expect("pack lock");
        if self.deleted.lock().expect("pack lock").contains(&number) {
            // Deleted while we opened it: use the handle once, keep nothing.
            return Err(Error::NotFound(What::Pack(number.to_string())));
        }
        if open.len() >= MAX_OPEN {
            let victim = open.keys().copied().find(|n| Some(*n) != active);
            if let Some(victim) = victim {
                open.remove(&victim);
            }
        }
        open.insert(number, Arc::clone(&file));
        Ok(file)
    }

    /// Reads one record and checks it against what the index says it is.
    pub fn read(&self, number: u32, offset: u64, expect: &ChunkInfo) -> Result<Vec<u8>> {
        let file = self.file(number)?;
        let mut buf = vec![0u8; RECORD_HEADER_LEN + expect.stored_len as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Corrupt(format!("pack {number} ends before the record at {offset}"))
            } else {
                Error::Io(e)
            }
        })?;
        let header: &[u8; RECORD_HEADER_LEN] =
            buf[..RECORD_HEADER_LEN].try_into().expect("header length");
        let found = parse_record_header(header)
            .map_err(|e| Error::Corrupt(format!("pack {number} at {offset}: {e}")))?;
        if found != *expect {
            return Err(Error::Corrupt(format!(
                "pack {number} at {offset}: record does not match the index"
            )));
        }
        buf.drain(..RECORD_HEADER_LEN);
        if crate::types::payload_check(&buf) != expect.check {
            return Err(Error::Corrupt(format!(
                "pack {number} at {offset}: payload check mismatch"
            )));
        }
        Ok(buf)
    }

    /// Flushes every open pack (after commits that skipped syncing).
    pub fn sync_all(&self) -> Result<()> {
        let open: Vec<Arc<dyn PackFile>> = self
            .open
            .read()
            .expect("pack lock")
            .values()
            .cloned()
            .collect();
        for f in open {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Deletes a pack file that holds nothing live.
    pub fn delete(&self, number: u32) -> Result<()> {
        {
            let mut open = self.open.write().expect("pack lock");
            open.remove(&number);
            self.deleted.lock().expect("pack lock").insert(number);
        }
        self.sealed.lock().expect("sealed lock").remove(&number);
        let name = Packs::name(number);
        let len = self
            .files
            .open_pack(&name)
            .and_then(|f| f.len())
            .unwrap_or(0);
        match self.files.remove_pack(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.bytes
            .fetch_sub(len.min(self.bytes()), Ordering::Relaxed);
        Ok(())
    }
}
