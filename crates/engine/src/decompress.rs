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

mod resolver;

use resolver::Resolver;

mod writer;

use writer::{ContentWriter, DataChunk};

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
    let mut writer = ContentWriter::new(
        sink,
        resolver,
        keys.clone(),
        expected_logical,
        header.holes_hashed,
    );
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
