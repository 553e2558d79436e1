//! The sink a whole restore decodes into: the entry table first, then each file's bytes by
//! offset, then the amendments.

use super::*;

/// The whole-restore side of the decompression pipeline: table first, then file data by offset,
/// then the amendments.
pub(super) struct RestoreSink<'a> {
    pub(super) restorer: &'a Restorer,
    pub(super) limits: Limits,
    /// The file's keys, handed over by the pipeline once the seed is checked.
    pub(super) keys: Option<Arc<Keys>>,
    /// The table while it arrives, then the amendments.
    pub(super) buffer: Vec<u8>,
    pub(super) table: Option<EntryTable>,
    pub(super) plan: Option<Plan>,
    pub(super) data_start: u64,
    /// Entry indices of the regular files, in content order.
    pub(super) files: Vec<usize>,
    /// Index into `files` of the file being written (or next to be).
    pub(super) next: usize,
    pub(super) open: Option<File>,
    pub(super) progress: &'a dyn Progress,
}

/// What a finished sink hands back: the table, the plan, the amendments.
type Closed = (EntryTable, Plan, Vec<(u64, Amendment)>);

enum Piece<'b> {
    Bytes(&'b [u8]),
    Zeros(u64),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Zeros(n) => *n,
        }
    }
}

impl RestoreSink<'_> {
    fn take(&mut self, mut offset: u64, mut piece: Piece<'_>) -> Result<()> {
        while piece.len() > 0 {
            let n = match &self.table {
                None => self.take_table(&piece)?,
                Some(table) => {
                    let data_end = data_end(table, self.data_start)?;
                    if offset < data_end {
                        self.take_data(offset, &piece)?
                    } else {
                        self.buffer_bytes(&piece, piece.len(), "amendments")?
                    }
                }
            };
            offset += n;
            piece = match piece {
                Piece::Bytes(b) => Piece::Bytes(&b[n as usize..]),
                Piece::Zeros(z) => Piece::Zeros(z - n),
            };
        }
        Ok(())
    }

    fn buffer_bytes(&mut self, piece: &Piece<'_>, n: u64, what: &str) -> Result<u64> {
        if self.buffer.len() as u64 + n > self.limits.max_table_bytes {
            return Err(Error::LimitExceeded(format!(
                "{what} over the reader's limit"
            )));
        }
        match piece {
            Piece::Bytes(b) => self.buffer.extend_from_slice(&b[..n as usize]),
            Piece::Zeros(_) => self.buffer.resize(self.buffer.len() + n as usize, 0),
        }
        Ok(n)
    }

    fn take_table(&mut self, piece: &Piece<'_>) -> Result<u64> {
        let have = self.buffer.len() as u64;
        let want = if have < TABLE_PREFIX_LEN as u64 {
            TABLE_PREFIX_LEN as u64
        } else {
            table_len(&self.buffer, self.limits.max_table_bytes)?
        };
        let n = self.buffer_bytes(piece, (want - have).min(piece.len()), "entry table")?;
        if self.buffer.len() == TABLE_PREFIX_LEN {
            table_len(&self.buffer, self.limits.max_table_bytes)?;
        }
        let len = self.buffer.len() as u64;
        if len > TABLE_PREFIX_LEN as u64
            && len == table_len(&self.buffer, self.limits.max_table_bytes)?
        {
            let table = decode_table(&self.buffer, self.keys.as_deref())?;
            let plan = Plan::whole(&table);
            self.progress.set_entries(table.entries.len() as u64);
            plan.prepare(&table, self.restorer)?;
            self.files = (0..table.entries.len())
                .filter(|&i| matches!(table.entries[i].kind, EntryKind::File { .. }))
                .collect();
            self.data_start = len;
            self.buffer.clear();
            self.table = Some(table);
            self.plan = Some(plan);
        }
        Ok(n)
    }

    /// Finishes the open file and any empty ones, up to the file that holds `offset`.
    fn seek_file(&mut self, offset: u64) -> Result<usize> {
        loop {
            let table = self.table.as_ref().expect("table first");
            let entry = *self
                .files
                .get(self.next)
                .ok_or_else(|| Error::corrupt("file data past the last file"))?;
            let start = self.data_start + table.offsets[entry];
            let end = start + table.entries[entry].data_len();
            if offset < end {
                if self.open.is_none() {
                    let staged = Path::new(TOP).join(&table.entries[entry].path);
                    self.open = Some(self.restorer.create_file(&staged)?);
                }
                return Ok(entry);
            }
            self.close_file()?;
        }
    }

    pub(super) fn close_file(&mut self) -> Result<()> {
        let table = self.table.as_ref().expect("table first");
        let entry = self.files[self.next];
        let e = &table.entries[entry];
        let staged = Path::new(TOP).join(&e.path);
        let file = match self.open.take() {
            Some(file) => file,
            None => self.restorer.create_file(&staged)?,
        };
        self.restorer
            .finish_file(&file, &staged, e.data_len(), e.mode, e.mtime)?;
        self.progress.entry(&e.path, e.data_len());
        self.next += 1;
        Ok(())
    }

    fn take_data(&mut self, offset: u64, piece: &Piece<'_>) -> Result<u64> {
        let entry = self.seek_file(offset)?;
        let table = self.table.as_ref().expect("table first");
        let start = self.data_start + table.offsets[entry];
        let end = start + table.entries[entry].data_len();
        let n = piece.len().min(end - offset);
        if let (Piece::Bytes(b), Some(file)) = (piece, &self.open) {
            file.write_all_at(&b[..n as usize], offset - start)?;
        }
        if offset + n == end {
            self.close_file()?;
        }
        Ok(n)
    }

    /// After the pipeline verified everything: the remaining (empty) files and the amendments.
    pub(super) fn close(mut self) -> Result<Closed> {
        let Some(table) = self.table.take() else {
            return Err(Error::corrupt("content ends inside the entry table"));
        };
        let amendments = std::mem::take(&mut self.buffer);
        self.table = Some(table);
        while self.next < self.files.len() {
            let table = self.table.as_ref().expect("set above");
            let entry = self.files[self.next];
            if table.entries[entry].data_len() > 0 {
                return Err(Error::corrupt(format!(
                    "content ends inside entry {}",
                    table.entries[entry].path.display()
                )));
            }
            self.close_file()?;
        }
        let table = self.table.take().expect("set above");
        let amendments = decode_amendments(&amendments, &table, self.keys.as_deref())?;
        let plan = self.plan.take().expect("with the table");
        Ok((table, plan, amendments))
    }
}

impl ContentSink for RestoreSink<'_> {
    fn unlocked(&mut self, keys: Option<&Arc<Keys>>) {
        self.keys = keys.cloned();
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.take(offset, Piece::Bytes(bytes))
    }

    fn zeros(&mut self, offset: u64, len: u64) -> Result<()> {
        self.take(offset, Piece::Zeros(len))
    }

    fn locate(&self, offset: u64) -> Option<String> {
        let Some(table) = &self.table else {
            return Some("the entry table".into());
        };
        let rel = offset.checked_sub(self.data_start)?;
        let end = data_end(table, 0).ok()?;
        if rel >= end {
            return Some("the amendments".into());
        }
        let after = self.files.partition_point(|&i| table.offsets[i] <= rel);
        let entry = self.files[after.checked_sub(1)?];
        Some(format!("entry {}", table.entries[entry].path.display()))
    }
}
