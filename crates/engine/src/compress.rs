//! Writing an `.af` file: a three-stage pipeline.
//!
//! ```text
//! reader (1 thread)        workers (N threads)               writer (caller's thread)
//! extents + FastCDC  -->   zero test, identity, dedup  -->   reorder, merge runs, write
//!                          claim, zstd, encrypt              records, SHA-256, index
//! ```
//!
//! Channels are bounded, so at most a few chunks per thread are in memory whatever the input
//! size. The writer decides every reference in content order, so the output depends only on the
//! input, the level, the chunk sizes and the salt: never on thread timing. Workers skip
//! compressing a chunk an earlier chunk has already claimed; when two race, the later one's work
//! is discarded and it becomes a reference.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::chunking::{ChunkParams, Chunker};
use crate::codec::{is_zero, ChunkEncoder, EncodedChunk, DEFAULT_LEVEL};
use crate::crypto::{random_salt, ChunkId, KdfParams, Keys, Seed, SALT_LEN};
use crate::digest::ContentHasher;
use crate::error::{Error, Result};
use crate::extents::{extents, Extent};
use crate::format::header::Header;
use crate::format::index::{Index, IndexEntry};
use crate::format::record::{Codec, Record};
use crate::format::trailer::{Totals, Trailer};
use crate::progress::Progress;

/// Where the content comes from.
pub enum Source<'a> {
    /// A regular file: its holes are found with `SEEK_HOLE` and never read.
    File(File),
    /// Anything else (stdin, a socket, an in-memory slice): read to the end.
    Stream(Box<dyn Read + Send>),
    /// Content in stretches, each chunked on its own, with holes between them (a directory
    /// archive: its table, runs of small files, each large file).
    Stretches(Box<dyn StretchRead + 'a>),
}

/// What comes next in a [`Source::Stretches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stretch {
    /// Data: read until `read` returns 0. Chunk boundaries restart here, so that equal stretches
    /// (two copies of a large file) chunk, and so deduplicate, identically.
    Data,
    /// This many bytes of hole (read as zeros, stored as a run, restored as a hole).
    Hole(u64),
}

/// Content that comes in stretches: `next_stretch`, then (for data) `read` to its end, again.
pub trait StretchRead: Read + Send {
    /// Moves to the next stretch; `None` at the end of the content.
    fn next_stretch(&mut self) -> Result<Option<Stretch>>;
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(file) => f.debug_tuple("File").field(file).finish(),
            Source::Stream(_) => f.write_str("Stream"),
            Source::Stretches(_) => f.write_str("Stretches"),
        }
    }
}

impl Source<'static> {
    pub fn from_bytes(bytes: &[u8]) -> Source<'static> {
        Source::Stream(Box::new(std::io::Cursor::new(bytes.to_vec())))
    }
}

/// How to compress.
#[derive(Debug)]
pub struct CompressOptions<'a> {
    /// zstd level, 1..=22.
    pub level: i32,
    /// Worker threads for compression (the reader and writer stages run beside them).
    pub threads: usize,
    pub chunking: ChunkParams,
    /// Encrypt under this seed; `None` writes a plain file.
    pub seed: Option<&'a Seed>,
    pub kdf: KdfParams,
    /// Fixed salt for reproducible output; `None` draws a random one (the normal case).
    pub salt: Option<[u8; SALT_LEN]>,
    /// Marks the file as a directory archive.
    pub archive: bool,
}

impl Default for CompressOptions<'_> {
    fn default() -> Self {
        CompressOptions {
            level: DEFAULT_LEVEL,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunking: ChunkParams::DEFAULT,
            seed: None,
            kdf: KdfParams::DEFAULT,
            salt: None,
            archive: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressSummary {
    pub totals: Totals,
    /// Bytes of the `.af` file.
    pub file_bytes: u64,
    /// SHA-256 of the content: the input file's own, unless its holes were too large to hash
    /// (then hole extents are excluded; the header's `holes_hashed` says which).
    #[serde(serialize_with = "crate::hex::serialize")]
    pub sha256: [u8; 32],
    pub encrypted: bool,
}

/// Compresses `source` into `out` as one `.af` file.
pub fn compress(
    source: Source<'_>,
    out: &mut impl Write,
    options: &CompressOptions<'_>,
    progress: &dyn Progress,
) -> Result<CompressSummary> {
    compress_keyed(|_| Ok(source), out, options, progress)
}

/// [`compress`] for a source that needs the file's keys (a directory archive MACs its entry
/// table with them): `source` is called once the keys are derived, before anything is read.
pub(crate) fn compress_keyed<'s>(
    source: impl FnOnce(Option<Arc<Keys>>) -> Result<Source<'s>>,
    out: &mut impl Write,
    options: &CompressOptions<'_>,
    progress: &dyn Progress,
) -> Result<CompressSummary> {
    options.chunking.validate()?;
    if !(1..=22).contains(&options.level) {
        return Err(Error::InvalidArgument(format!(
            "level {} is outside 1..=22",
            options.level
        )));
    }
    let threads = options.threads.clamp(1, 256);
    let (keys, salt) = match options.seed {
        Some(seed) => {
            let salt = match options.salt {
                Some(salt) => salt,
                None => random_salt()?,
            };
            (
                Some(Arc::new(Keys::derive(seed, &salt, options.kdf)?)),
                salt,
            )
        }
        None => (None, [0; crate::crypto::SALT_LEN]),
    };
    let source = Input::of(source(keys.clone())?)?;
    let header = Header::with_hashed_holes(
        options.level as i8,
        options.archive,
        source.hashes_holes(),
        options.chunking,
        keys.as_deref().map(|k| (k, salt, options.kdf)),
    );
    let gear_seed = keys.as_ref().map_or(0, |k| k.gear_seed());
    let encoders = (0..threads)
        .map(|_| ChunkEncoder::new(options.level, keys.clone()))
        .collect::<Result<Vec<_>>>()?;

    let mut writer = RecordWriter::new(out, keys.as_deref(), header.holes_hashed);
    writer.write_raw(&header.encode())?;

    let claims = Mutex::new(HashMap::<ChunkId, u64>::new());
    std::thread::scope(|scope| -> Result<()> {
        let (piece_tx, piece_rx) = bounded::<(u64, Piece)>(threads);
        let (done_tx, done_rx) = bounded::<(u64, Result<Done>)>(threads);
        let chunking = options.chunking;
        let reader_done = done_tx.clone();
        scope.spawn(move || {
            if let Err(e) = read_pieces(source, chunking, gear_seed, progress, &piece_tx) {
                // Ordered last, so the writer reports it after everything read before it.
                let _ = reader_done.send((u64::MAX, Err(e)));
            }
        });
        for encoder in encoders {
            let (rx, tx, claims) = (piece_rx.clone(), done_tx.clone(), &claims);
            scope.spawn(move || work(encoder, &rx, &tx, claims));
        }
        drop((piece_rx, done_tx));
        let result = writer.consume(&done_rx, progress);
        drop(done_rx); // Unblocks every other stage if the writer stopped early.
        result
    })?;
    writer.finish()
}

/// Holes up to this many bytes in all are hashed as the zeros they read as, so that the SHA-256
/// an `.af` file carries is the input file's own: about a second of SHA-256 at most. Beyond it
/// (a 15 TiB sparse file) holes stay out of the digest, and `stats` says so.
pub const HASHED_HOLES_MAX: u64 = 1 << 30;

/// A [`Source`] ready to be read: a file's extents are found first, because whether its holes
/// are hashed is written in the header, before any record.
enum Input<'a> {
    File(File, Vec<Extent>),
    Other(Source<'a>),
}

impl<'a> Input<'a> {
    fn of(source: Source<'a>) -> Result<Input<'a>> {
        Ok(match source {
            Source::File(file) => {
                let len = file.metadata()?.len();
                let found = extents(&file, len)?;
                Input::File(file, found)
            }
            other => Input::Other(other),
        })
    }

    /// Whether the holes are few enough to hash (files only: a directory archive's content is
    /// no file a user could hash).
    fn hashes_holes(&self) -> bool {
        let Input::File(_, found) = self else {
            return false;
        };
        let holes: u64 = found
            .iter()
            .map(|e| match e {
                Extent::Hole { len } => *len,
                Extent::Data { .. } => 0,
            })
            .sum();
        holes > 0 && holes <= HASHED_HOLES_MAX
    }
}

/// What the reader hands to the workers.
enum Piece {
    Data(Vec<u8>),
    Hole(u64),
}

/// What a worker hands to the writer.
enum Done {
    Zero(Vec<u8>),
    Hole(u64),
    Stored { chunk: EncodedChunk, plain: Vec<u8> },
    Duplicate { id: ChunkId, plain: Vec<u8> },
}

fn read_pieces(
    source: Input<'_>,
    chunking: ChunkParams,
    gear_seed: u64,
    progress: &dyn Progress,
    tx: &Sender<(u64, Piece)>,
) -> Result<()> {
    let mut seq = 0u64;
    let mut send = |piece: Piece| -> bool {
        let ok = tx.send((seq, piece)).is_ok();
        seq += 1;
        ok
    };
    let chunk_all = |reader: &mut dyn Read, send: &mut dyn FnMut(Piece) -> bool| -> Result<bool> {
        let mut chunker = Chunker::new(reader, chunking, gear_seed);
        while let Some(chunk) = chunker.next_chunk()? {
            if !send(Piece::Data(chunk)) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    match source {
        Input::Other(Source::Stream(mut reader)) => {
            chunk_all(&mut reader, &mut send)?;
        }
        Input::Other(Source::Stretches(mut stretches)) => {
            while let Some(stretch) = stretches.next_stretch()? {
                let more = match stretch {
                    Stretch::Hole(0) => true,
                    Stretch::Hole(len) => send(Piece::Hole(len)),
                    Stretch::Data => chunk_all(&mut stretches, &mut send)?,
                };
                if !more {
                    break;
                }
            }
        }
        Input::Other(Source::File(_)) => unreachable!("files become Input::File"),
        Input::File(mut file, found) => {
            progress.set_total(file.metadata()?.len());
            for extent in found {
                let more = match extent {
                    Extent::Hole { len } => send(Piece::Hole(len)),
                    Extent::Data { offset, len } => {
                        file.seek(SeekFrom::Start(offset))?;
                        chunk_all(&mut (&mut file).take(len), &mut send)?
                    }
                };
                if !more {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn work(
    mut encoder: ChunkEncoder,
    rx: &Receiver<(u64, Piece)>,
    tx: &Sender<(u64, Result<Done>)>,
    claims: &Mutex<HashMap<ChunkId, u64>>,
) {
    for (seq, piece) in rx {
        let done = match piece {
            Piece::Hole(len) => Ok(Done::Hole(len)),
            Piece::Data(plain) if is_zero(&plain) => Ok(Done::Zero(plain)),
            Piece::Data(plain) => {
                let id = encoder.chunk_id(&plain);
                let earlier = {
                    let mut claims = claims.lock().expect("claims lock");
                    let first = claims.entry(id).or_insert(seq);
                    if *first > seq {
                        *first = seq;
                    }
                    *first < seq
                };
                if earlier {
                    Ok(Done::Duplicate { id, plain })
                } else {
                    encoder
                        .encode(&plain, id)
                        .map(|chunk| Done::Stored { chunk, plain })
                }
            }
        };
        if tx.send((seq, done)).is_err() {
            return;
        }
    }
}

/// The writer stage: puts results back in order and lays out records, index and trailer.
struct RecordWriter<'w, W: Write> {
    out: &'w mut W,
    keys: Option<&'w Keys>,
    offset: u64,
    logical: u64,
    /// A zero run or hole being extended: (is_hole, start, length).
    run: Option<(bool, u64, u64)>,
    ordinals: HashMap<ChunkId, u64>,
    index: Index,
    totals: Totals,
    sha: ContentHasher,
    /// Holes go into the SHA-256 as zeros (the header says so).
    hash_holes: bool,
}

impl<'w, W: Write> RecordWriter<'w, W> {
    fn new(out: &'w mut W, keys: Option<&'w Keys>, hash_holes: bool) -> Self {
        RecordWriter {
            out,
            keys,
            hash_holes,
            offset: 0,
            logical: 0,
            run: None,
            ordinals: HashMap::new(),
            index: Index::default(),
            totals: Totals::default(),
            sha: ContentHasher::new(),
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn consume(
        &mut self,
        rx: &Receiver<(u64, Result<Done>)>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        for (seq, done) in rx {
            waiting.insert(seq, done);
            while let Some(done) = waiting.remove(&next) {
                let logical_before = self.logical;
                self.accept(done?)?;
                progress.advance(self.logical - logical_before);
                next += 1;
            }
        }
        // Only the reader's error (ordered last) can remain.
        if let Some((_, Err(e))) = waiting.pop_last() {
            return Err(e);
        }
        Ok(())
    }

    fn accept(&mut self, done: Done) -> Result<()> {
        match done {
            Done::Hole(len) => {
                if self.hash_holes {
                    self.sha.zeros(len);
                }
                self.extend_run(true, len)
            }
            Done::Zero(plain) => {
                self.sha.zeros(plain.len() as u64);
                self.extend_run(false, plain.len() as u64)
            }
            Done::Stored { chunk, plain } => {
                self.sha.bytes(plain);
                self.close_run()?;
                match self.ordinals.get(&chunk.id) {
                    Some(&ordinal) => self.write_reference(ordinal, chunk.raw_len),
                    None => self.write_data(chunk),
                }
            }
            Done::Duplicate { id, plain } => {
                let len = plain.len() as u32;
                self.sha.bytes(plain);
                self.close_run()?;
                let ordinal = *self
                    .ordinals
                    .get(&id)
                    .expect("a duplicate's first occurrence is always written before it");
                self.write_reference(ordinal, len)
            }
        }
    }

    fn extend_run(&mut self, hole: bool, len: u64) -> Result<()> {
        match &mut self.run {
            Some((is_hole, _, run_len)) if *is_hole == hole => *run_len += len,
            _ => {
                self.close_run()?;
                self.run = Some((hole, self.logical, len));
            }
        }
        self.logical += len;
        Ok(())
    }

    fn close_run(&mut self) -> Result<()> {
        let Some((hole, start, len)) = self.run.take() else {
            return Ok(());
        };
        let record = if hole {
            Record::Hole { len }
        } else {
            Record::Zero { len }
        };
        self.index.entries.push(IndexEntry {
            kind: record.kind(),
            logical_offset: start,
            location: 0,
        });
        let written = record.write(self.out)?;
        self.offset += written as u64;
        if hole {
            self.totals.hole_runs += 1;
            self.totals.hole_bytes += len;
        } else {
            self.totals.zero_runs += 1;
            self.totals.zero_bytes += len;
        }
        Ok(())
    }

    fn write_data(&mut self, chunk: EncodedChunk) -> Result<()> {
        let stored_len = u32::try_from(chunk.payload.len()).expect("payload bounded by chunk size");
        let record = Record::Data {
            codec: chunk.codec,
            raw_len: chunk.raw_len,
            stored_len,
            id: chunk.id,
            payload_check: chunk.payload_check,
        };
        self.index.entries.push(IndexEntry {
            kind: record.kind(),
            logical_offset: self.logical,
            location: self.offset,
        });
        let ordinal = self.ordinals.len() as u64;
        self.ordinals.insert(chunk.id, ordinal);
        let written = record.write(self.out)?;
        self.out.write_all(&chunk.payload)?;
        self.offset += (written + chunk.payload.len()) as u64;
        self.logical += u64::from(chunk.raw_len);
        match chunk.codec {
            Codec::Zstd => self.totals.zstd_chunks += 1,
            Codec::Raw => self.totals.raw_chunks += 1,
        }
        self.totals.unique_bytes += u64::from(chunk.raw_len);
        self.totals.payload_bytes += u64::from(stored_len);
        Ok(())
    }

    fn write_reference(&mut self, ordinal: u64, raw_len: u32) -> Result<()> {
        let record = Record::Reference { ordinal, raw_len };
        self.index.entries.push(IndexEntry {
            kind: record.kind(),
            logical_offset: self.logical,
            location: ordinal,
        });
        self.offset += record.write(self.out)? as u64;
        self.logical += u64::from(raw_len);
        self.totals.reference_chunks += 1;
        self.totals.reference_bytes += u64::from(raw_len);
        Ok(())
    }

    /// Ends the body and writes the index and trailer.
    fn finish(mut self) -> Result<CompressSummary> {
        self.close_run()?;
        self.offset += Record::End.write(self.out)? as u64;
        self.totals.logical_bytes = self.logical;
        let index = self.index.encode(self.keys);
        let sha256 = std::mem::replace(&mut self.sha, ContentHasher::idle()).finish();
        let trailer = Trailer {
            index_offset: self.offset,
            index_len: index.len() as u64,
            totals: self.totals,
            digest_field: Trailer::seal_digest(sha256, self.keys),
        };
        self.write_raw(&index)?;
        self.write_raw(&trailer.encode())?;
        self.out.flush()?;
        Ok(CompressSummary {
            totals: self.totals,
            file_bytes: self.offset,
            sha256,
            encrypted: self.keys.is_some(),
        })
    }
}
