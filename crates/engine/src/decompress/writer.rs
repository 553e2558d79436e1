//! The writer at the end of the pipeline: puts decoded chunks in order, resolves references,
//! writes the content and hashes it, and checks the totals at the end.

use super::*;

/// What the writer remembers of each data chunk, for references.
pub(super) struct DataChunk {
    pub(super) id: ChunkId,
    pub(super) raw_len: u32,
    pub(super) logical_offset: u64,
    pub(super) record_offset: u64,
}

pub(super) struct ContentWriter<'a> {
    sink: Sink<'a>,
    resolver: Resolver,
    keys: Option<Arc<Keys>>,
    /// Logical size promised by a file's trailer, checked before the fact so that a damaged run
    /// length cannot make us write without end.
    expected_logical: Option<u64>,
    /// Logical bytes restored so far (also the write position of a file sink).
    logical: u64,
    chunks: Vec<DataChunk>,
    index: Index,
    totals: Totals,
    sha: ContentHasher,
    /// Holes go into the SHA-256 as zeros (the header's `holes_hashed`).
    hash_holes: bool,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl<'a> ContentWriter<'a> {
    pub(super) fn new(
        sink: Sink<'a>,
        resolver: Resolver,
        keys: Option<Arc<Keys>>,
        expected_logical: Option<u64>,
        hash_holes: bool,
    ) -> Self {
        ContentWriter {
            hash_holes,
            sink,
            resolver,
            keys,
            expected_logical,
            logical: 0,
            chunks: Vec::new(),
            index: Index::default(),
            totals: Totals::default(),
            sha: ContentHasher::new(),
        }
    }

    pub(super) fn consume(
        &mut self,
        rx: &Receiver<(u64, Result<Item>)>,
        progress: &dyn Progress,
    ) -> Result<Tail> {
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        for (seq, item) in rx {
            waiting.insert(seq, item);
            while let Some(item) = waiting.remove(&next) {
                next += 1;
                let before = self.logical;
                match item.map_err(|e| self.locate(e))? {
                    Item::Tail(tail) => return Ok(tail),
                    item => self.apply(item).map_err(|e| self.locate(e))?,
                }
                progress.advance(self.logical - before);
            }
        }
        match waiting.pop_last() {
            Some((_, Err(e))) => Err(self.locate(e)),
            _ => Err(self.locate(Error::corrupt("body ended without its index"))),
        }
    }

    /// Names the damaged content in a corruption error, when the sink knows what it is.
    pub(super) fn locate(&self, error: Error) -> Error {
        match (error, &self.sink) {
            (Error::Corrupt(what), Sink::Content(sink)) => match sink.locate(self.logical) {
                Some(place) => Error::Corrupt(format!("{what}, in {place}")),
                None => Error::Corrupt(what),
            },
            (error, _) => error,
        }
    }

    pub(super) fn apply(&mut self, item: Item) -> Result<()> {
        let (record, location) = match &item {
            Item::Plain { record, offset, .. } => (record.clone(), *offset),
            Item::Other(record @ Record::Reference { ordinal, .. }) => (record.clone(), *ordinal),
            Item::Other(record) => (record.clone(), 0),
            Item::Data { .. } | Item::Tail(_) => {
                unreachable!("decoded by the workers / handled by consume")
            }
        };
        let end = self
            .logical
            .checked_add(record.logical_len())
            .filter(|&end| match self.expected_logical {
                Some(expected) => end <= expected,
                None => true,
            });
        if end.is_none() {
            return Err(Error::corrupt("content runs past its recorded size"));
        }
        self.index.entries.push(IndexEntry {
            kind: record.kind(),
            logical_offset: self.logical,
            location,
        });
        match (item, record) {
            (
                Item::Plain { bytes, .. },
                Record::Data {
                    codec,
                    raw_len,
                    stored_len,
                    id,
                    ..
                },
            ) => {
                self.resolver.remember(self.chunks.len() as u64, &bytes);
                self.chunks.push(DataChunk {
                    id,
                    raw_len,
                    logical_offset: self.logical,
                    record_offset: location,
                });
                match codec {
                    Codec::Zstd => self.totals.zstd_chunks += 1,
                    Codec::Raw => self.totals.raw_chunks += 1,
                }
                self.totals.unique_bytes += u64::from(raw_len);
                self.totals.payload_bytes += u64::from(stored_len);
                self.write(&bytes)?;
                self.sha.bytes(bytes);
                Ok(())
            }
            (_, Record::Reference { ordinal, raw_len }) => {
                let target = usize::try_from(ordinal)
                    .ok()
                    .and_then(|i| self.chunks.get(i))
                    .filter(|t| t.raw_len == raw_len)
                    .ok_or_else(|| {
                        Error::corrupt("reference to a chunk that does not precede it")
                    })?;
                let plain = self.resolver.fetch(ordinal, target, self.keys.as_deref())?;
                self.totals.reference_chunks += 1;
                self.totals.reference_bytes += u64::from(raw_len);
                self.write(&plain)?;
                self.sha.bytes(plain);
                Ok(())
            }
            (_, Record::Zero { len }) => {
                self.totals.zero_runs += 1;
                self.totals.zero_bytes += len;
                self.skip(len, true)
            }
            (_, Record::Hole { len }) => {
                self.totals.hole_runs += 1;
                self.totals.hole_bytes += len;
                self.skip(len, self.hash_holes)
            }
            _ => Err(Error::corrupt("unexpected record")),
        }
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.sink {
            Sink::File(file) => file.write_all_at(bytes, self.logical)?,
            Sink::Stream(out) => out.write_all(bytes)?,
            Sink::Content(sink) => sink.write(self.logical, bytes)?,
        }
        self.logical += bytes.len() as u64;
        Ok(())
    }

    /// Advances over `len` zero bytes: hashed when they are content (a zero run), not when they
    /// are a hole; written out only to a stream (a file sink leaves a hole behind). To a stream
    /// they are hashed piece by piece as they are written, so that the hashing thread never
    /// runs far ahead of a stream that fails (a hostile file can declare a run of 2^63 zeros).
    pub(super) fn skip(&mut self, len: u64, hash: bool) -> Result<()> {
        match &mut self.sink {
            Sink::Stream(out) => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    if hash {
                        self.sha.zeros(n as u64);
                    }
                    out.write_all(&ZEROS[..n])?;
                    left -= n as u64;
                }
            }
            Sink::Content(sink) => {
                sink.zeros(self.logical, len)?;
                if hash {
                    self.sha.zeros(len);
                }
            }
            Sink::File(_) => {
                if hash {
                    self.sha.zeros(len);
                }
            }
        }
        self.logical += len;
        Ok(())
    }

    pub(super) fn finish(mut self, tail: Tail) -> Result<DecompressSummary> {
        let keys = self.keys.as_deref();
        let index = Index::decode(&tail.index, keys)?;
        if index != self.index {
            return Err(Error::corrupt("index disagrees with the body"));
        }
        self.totals.logical_bytes = self.logical;
        if tail.trailer.totals != self.totals {
            return Err(Error::corrupt("trailer totals disagree with the body"));
        }
        let sha256 = std::mem::replace(&mut self.sha, ContentHasher::idle()).finish();
        if tail.trailer.content_digest(keys)? != sha256 {
            return Err(Error::corrupt(
                "SHA-256 of the restored content does not match",
            ));
        }
        match &mut self.sink {
            Sink::File(file) => file.set_len(self.logical)?,
            Sink::Stream(out) => out.flush()?,
            Sink::Content(_) => {}
        }
        Ok(DecompressSummary {
            totals: self.totals,
            file_bytes: tail.file_bytes,
            sha256,
            encrypted: keys.is_some(),
        })
    }
}
