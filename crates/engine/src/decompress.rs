//! Reading an `.af` file back: the mirror of [`crate::compress`].
//!
//! ```text
//! reader (1 thread)           workers (N threads)             writer (caller's thread)
//! header, records,      -->   decrypt, zstd, check id   -->   reorder, resolve references,
//! index, trailer                                              write, SHA-256, final checks
//! ```
//!
//! The seed is checked against the header before anything is written. A file input is checked
//! end to end (trailer, index seal) before the body is read, so a truncated file fails at once;
//! a stream is checked as it goes. Every chunk is verified against its identity, and the whole
//! content against the stored SHA-256 at the end: the caller keeps the output only on success.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::codec::ChunkDecoder;
use crate::crypto::{ChunkId, Keys, Seed, TAG_LEN};
use crate::digest::ContentHasher;
use crate::error::{Error, Result};
use crate::format::header::{read_exact_or, Header};
use crate::format::index::{Index, IndexEntry, ENTRY_LEN};
use crate::format::record::{Codec, Record};
use crate::format::trailer::{Totals, Trailer, MAX_TRAILER_LEN};
use crate::format::Limits;
use crate::progress::Progress;

/// Where the `.af` bytes come from.
pub enum AfSource {
    /// A seekable file: checked end to end before decoding; references can be re-read from it.
    File(File),
    /// A pipe or other stream: decoded front to back.
    Stream(Box<dyn Read + Send>),
}

impl std::fmt::Debug for AfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AfSource::File(file) => f.debug_tuple("File").field(file).finish(),
            AfSource::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl std::fmt::Debug for Sink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::File(file) => f.debug_tuple("File").field(file).finish(),
            Sink::Stream(_) => f.write_str("Stream"),
            Sink::Content(_) => f.write_str("Content"),
        }
    }
}

/// Where the restored content goes.
pub enum Sink<'a> {
    /// A regular file, written from offset 0: zero runs and holes become holes in it.
    File(&'a File),
    /// Anything else: every byte is written.
    Stream(&'a mut dyn Write),
    /// A consumer that places content by offset (a directory archive's restore).
    Content(&'a mut dyn ContentSink),
}

/// Takes restored content in order, by logical offset. Zero runs and holes arrive as
/// [`ContentSink::zeros`], never as bytes, so that a sink can leave holes behind.
pub trait ContentSink {
    /// `bytes` of content starting at `offset`.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<()>;
    /// `len` zero bytes starting at `offset`.
    fn zeros(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Told the file's keys (for an encrypted file) once the seed is checked, before any content.
    fn unlocked(&mut self, _keys: Option<&Arc<Keys>>) {}
    /// What the content at `offset` belongs to, to name it when that content is damaged.
    fn locate(&self, _offset: u64) -> Option<String> {
        None
    }
}

/// How to decompress.
#[derive(Debug)]
pub struct DecompressOptions<'a> {
    pub threads: usize,
    pub seed: Option<&'a Seed>,
    pub limits: Limits,
}

impl Default for DecompressOptions<'_> {
    fn default() -> Self {
        DecompressOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            seed: None,
            limits: Limits::default(),
        }
    }
}

/// What was restored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecompressSummary {
    pub totals: Totals,
    /// Bytes of the `.af` input.
    pub file_bytes: u64,
    #[serde(serialize_with = "crate::hex::serialize")]
    pub sha256: [u8; 32],
    pub encrypted: bool,
}

/// Restores the content of an `.af` file into `sink`, verifying it.
pub fn decompress(
    source: AfSource,
    sink: Sink<'_>,
    options: &DecompressOptions<'_>,
    progress: &dyn Progress,
) -> Result<DecompressSummary> {
    let threads = options.threads.clamp(1, 256);
    let (header, mut input, reread) = match source {
        AfSource::File(mut file) => {
            file.seek(SeekFrom::Start(0))?;
            let header = Header::read(&mut file, &options.limits)?;
            (header, Input::File(file.try_clone()?), Some(file))
        }
        AfSource::Stream(mut stream) => {
            let header = Header::read(&mut stream, &options.limits)?;
            (header, Input::Stream(stream), None)
        }
    };
    let keys = header.unlock(options.seed)?.map(Arc::new);
    let mut sink = sink;
    if let Sink::Content(content) = &mut sink {
        content.unlocked(keys.as_ref());
    }
    let mut expected_logical = None;
    if let Input::File(file) = &mut input {
        let (trailer, _) =
            crate::afile::read_tail(file, &header, keys.as_deref(), &options.limits)?;
        expected_logical = Some(trailer.totals.logical_bytes);
        progress.set_total(trailer.totals.logical_bytes);
        file.seek(SeekFrom::Start(header.encoded_len() as u64))?;
    }
    let decoders = (0..threads)
        .map(|_| ChunkDecoder::new(keys.clone()))
        .collect::<Result<Vec<_>>>()?;
    let resolver = Resolver::new(&sink, reread, &header, keys.clone())?;
    let mut writer = ContentWriter::new(sink, resolver, keys.clone(), expected_logical);
    let tag_len = if keys.is_some() { TAG_LEN } else { 0 };
    let max_chunk = header.chunking.max;
    let limits = options.limits;
    let header_len = header.encoded_len() as u64;

    let tail = std::thread::scope(|scope| -> Result<Tail> {
        let (item_tx, item_rx) = bounded::<(u64, Item)>(threads);
        let (done_tx, done_rx) = bounded::<(u64, Result<Item>)>(threads);
        let reader_done = done_tx.clone();
        scope.spawn(move || {
            let result = read_items(input, header_len, max_chunk, tag_len, &limits, &item_tx);
            if let Err(e) = result {
                let _ = reader_done.send((u64::MAX, Err(e)));
            }
        });
        for decoder in decoders {
            let (rx, tx) = (item_rx.clone(), done_tx.clone());
            scope.spawn(move || decode_items(decoder, &rx, &tx));
        }
        drop((item_rx, done_tx));
        let result = writer.consume(&done_rx, progress);
        drop(done_rx);
        result
    })?;
    writer.finish(tail)
}

enum Input {
    File(File),
    Stream(Box<dyn Read + Send>),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Input::File(f) => f.read(buf),
            Input::Stream(s) => s.read(buf),
        }
    }
}

/// Pieces of the body in order. Data items carry a payload to decode; the last item is the tail.
enum Item {
    Data {
        record: Record,
        offset: u64,
        payload: Vec<u8>,
    },
    Plain {
        record: Record,
        offset: u64,
        bytes: Vec<u8>,
    },
    Other(Record),
    Tail(Tail),
}

struct Tail {
    index: Vec<u8>,
    trailer: Trailer,
    file_bytes: u64,
}

fn read_items(
    mut input: Input,
    header_len: u64,
    max_chunk: u32,
    tag_len: usize,
    limits: &Limits,
    tx: &Sender<(u64, Item)>,
) -> Result<()> {
    let mut offset = header_len;
    let mut seq = 0u64;
    loop {
        let (record, header_bytes) = Record::read(&mut input, max_chunk, tag_len)?;
        let record_offset = offset;
        offset += header_bytes as u64;
        let item = match record {
            Record::Data { stored_len, .. } => {
                let mut payload = vec![0u8; stored_len as usize];
                read_exact_or(
                    &mut input,
                    &mut payload,
                    Error::corrupt("chunk payload truncated"),
                )?;
                offset += u64::from(stored_len);
                Item::Data {
                    record,
                    offset: record_offset,
                    payload,
                }
            }
            Record::End => break,
            other => Item::Other(other),
        };
        if tx.send((seq, item)).is_err() {
            return Ok(());
        }
        seq += 1;
    }
    // The index: its count first, bounded before the rest is allocated.
    let mut count = [0u8; 8];
    read_exact_or(&mut input, &mut count, Error::corrupt("index truncated"))?;
    let count = u64::from_le_bytes(count);
    let index_len = count
        .checked_mul(ENTRY_LEN as u64)
        .and_then(|n| n.checked_add(40))
        .filter(|&n| n <= limits.max_index_bytes)
        .ok_or_else(|| {
            Error::LimitExceeded(format!(
                "index of {count} entries is over the reader's limit"
            ))
        })?;
    let mut index = vec![0u8; index_len as usize];
    index[..8].copy_from_slice(&count.to_le_bytes());
    read_exact_or(
        &mut input,
        &mut index[8..],
        Error::corrupt("index truncated"),
    )?;
    // The trailer is whatever remains, and never more than its maximum.
    let mut trailer = Vec::with_capacity(MAX_TRAILER_LEN);
    (&mut input)
        .take(MAX_TRAILER_LEN as u64 + 1)
        .read_to_end(&mut trailer)?;
    if trailer.len() > MAX_TRAILER_LEN {
        return Err(Error::corrupt("bytes after the trailer"));
    }
    let trailer_len = trailer.len() as u64;
    let trailer = Trailer::decode(&trailer, tag_len > 0)?;
    let index_offset = offset;
    if trailer.index_offset != index_offset || trailer.index_len != index_len {
        return Err(Error::corrupt("trailer does not point at the index"));
    }
    let file_bytes = index_offset + index_len + trailer_len;
    let _ = tx.send((
        seq,
        Item::Tail(Tail {
            index,
            trailer,
            file_bytes,
        }),
    ));
    Ok(())
}

fn decode_items(
    mut decoder: ChunkDecoder,
    rx: &Receiver<(u64, Item)>,
    tx: &Sender<(u64, Result<Item>)>,
) {
    for (seq, item) in rx {
        let done = match item {
            Item::Data {
                record,
                offset,
                payload,
            } => decoder.decode(&record, payload).map(|bytes| Item::Plain {
                record,
                offset,
                bytes,
            }),
            other => Ok(other),
        };
        if tx.send((seq, done)).is_err() {
            return;
        }
    }
}

/// Where earlier data chunks are found again when a reference repeats them.
enum Resolver {
    /// Read back from the output file, which already holds them.
    Output(File),
    /// Re-read and decode from the input file.
    Input {
        file: File,
        decoder: ChunkDecoder,
        max_chunk: u32,
        tag_len: usize,
    },
    /// Both ends are pipes: keep the most recent chunks, up to a byte budget.
    Window {
        chunks: VecDeque<(u64, Arc<Vec<u8>>)>,
        bytes: usize,
    },
}

/// Plaintext kept for references when neither end can be re-read.
const WINDOW_BYTES: usize = 64 * 1024 * 1024;

impl Resolver {
    fn new(
        sink: &Sink<'_>,
        input: Option<File>,
        header: &Header,
        keys: Option<Arc<Keys>>,
    ) -> Result<Resolver> {
        let tag_len = if keys.is_some() { TAG_LEN } else { 0 };
        Ok(match (sink, input) {
            (Sink::File(out), _) => Resolver::Output(out.try_clone()?),
            (Sink::Stream(_) | Sink::Content(_), Some(file)) => Resolver::Input {
                file,
                decoder: ChunkDecoder::new(keys)?,
                max_chunk: header.chunking.max,
                tag_len,
            },
            (Sink::Stream(_) | Sink::Content(_), None) => Resolver::Window {
                chunks: VecDeque::new(),
                bytes: 0,
            },
        })
    }

    fn remember(&mut self, ordinal: u64, plain: &[u8]) {
        if let Resolver::Window { chunks, bytes } = self {
            chunks.push_back((ordinal, Arc::new(plain.to_vec())));
            *bytes += plain.len();
            while *bytes > WINDOW_BYTES {
                let (_, old) = chunks.pop_front().expect("non-empty while over budget");
                *bytes -= old.len();
            }
        }
    }

    fn fetch(&mut self, ordinal: u64, target: &DataChunk, keys: Option<&Keys>) -> Result<Vec<u8>> {
        let plain = match self {
            Resolver::Output(file) => {
                let mut buf = vec![0u8; target.raw_len as usize];
                file.read_exact_at(&mut buf, target.logical_offset)?;
                buf
            }
            Resolver::Input {
                file,
                decoder,
                max_chunk,
                tag_len,
            } => crate::afile::read_data_record(
                file,
                target.record_offset,
                *max_chunk,
                *tag_len,
                decoder,
            )?,
            Resolver::Window { chunks, .. } => {
                match chunks.iter().find(|(o, _)| *o == ordinal) {
                    Some((_, plain)) => plain.to_vec(),
                    None => return Err(Error::LimitExceeded(
                        "a reference reaches further back than the 64 MiB kept when both input \
                         and output are pipes; decompress from a file or into a file"
                            .into(),
                    )),
                }
            }
        };
        if plain.len() != target.raw_len as usize || ChunkId::of(keys, &plain) != target.id {
            return Err(Error::corrupt(
                "referenced chunk does not match its identity",
            ));
        }
        Ok(plain)
    }
}

/// What the writer remembers of each data chunk, for references.
struct DataChunk {
    id: ChunkId,
    raw_len: u32,
    logical_offset: u64,
    record_offset: u64,
}

struct ContentWriter<'a> {
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
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl<'a> ContentWriter<'a> {
    fn new(
        sink: Sink<'a>,
        resolver: Resolver,
        keys: Option<Arc<Keys>>,
        expected_logical: Option<u64>,
    ) -> Self {
        ContentWriter {
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

    fn consume(
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
    fn locate(&self, error: Error) -> Error {
        match (error, &self.sink) {
            (Error::Corrupt(what), Sink::Content(sink)) => match sink.locate(self.logical) {
                Some(place) => Error::Corrupt(format!("{what}, in {place}")),
                None => Error::Corrupt(what),
            },
            (error, _) => error,
        }
    }

    fn apply(&mut self, item: Item) -> Result<()> {
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
                self.skip(len, false)
            }
            _ => Err(Error::corrupt("unexpected record")),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.sink {
            Sink::File(file) => file.write_all_at(bytes, self.logical)?,
            Sink::Stream(out) => out.write_all(bytes)?,
            Sink::Content(sink) => sink.write(self.logical, bytes)?,
        }
        self.logical += bytes.len() as u64;
        Ok(())
    }

    /// Advances over `len` zero bytes: hashed when they are content (a zero run), not when they
    /// are a hole; written out only to a stream (a file sink leaves a hole behind).
    fn skip(&mut self, len: u64, hash: bool) -> Result<()> {
        if let Sink::Content(sink) = &mut self.sink {
            sink.zeros(self.logical, len)?;
        }
        if hash {
            self.sha.zeros(len);
        }
        if let Sink::Stream(out) = &mut self.sink {
            let mut left = len;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                out.write_all(&ZEROS[..n])?;
                left -= n as u64;
            }
        }
        self.logical += len;
        Ok(())
    }

    fn finish(mut self, tail: Tail) -> Result<DecompressSummary> {
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
