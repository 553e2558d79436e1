//! Opening an `.af` file for what needs no full decompression: its statistics and ranged reads,
//! both through the trailer and the sealed index.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::chunking::ChunkParams;
use crate::codec::ChunkDecoder;
use crate::crypto::{Keys, Seed, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::header::{read_exact_or, Header};
use crate::format::index::Index;
use crate::format::record::Record;
use crate::format::trailer::{Totals, Trailer, FIXED_END};
use crate::format::{Limits, VERSION};

/// Smallest possible file after the header: end record, empty index, trailer's fixed end.
const MIN_TAIL: u64 = 5 + 40 + FIXED_END as u64;

/// Reads and checks the trailer, and the index when it can be verified (plain files, or
/// encrypted files whose keys are known).
pub(crate) fn read_tail(
    file: &File,
    header: &Header,
    keys: Option<&Keys>,
    limits: &Limits,
) -> Result<(Trailer, Option<Index>)> {
    let header_len = header.encoded_len() as u64;
    let file_len = file.metadata()?.len();
    if file_len < header_len + MIN_TAIL {
        return Err(Error::corrupt(
            "file truncated: shorter than its header and trailer",
        ));
    }
    let mut end = [0u8; FIXED_END];
    file.read_exact_at(&mut end, file_len - FIXED_END as u64)?;
    let trailer_len = Trailer::len_from_end(&end)? as u64;
    let trailer_at = file_len
        .checked_sub(trailer_len)
        .filter(|&at| at >= header_len + 45)
        .ok_or_else(|| Error::corrupt("file truncated: shorter than its trailer says"))?;
    let mut trailer = vec![0u8; trailer_len as usize];
    file.read_exact_at(&mut trailer, trailer_at)?;
    let trailer = Trailer::decode(&trailer, header.encryption.is_some())?;
    let index_end = trailer.index_offset.checked_add(trailer.index_len);
    if trailer.index_offset < header_len + 5 || index_end != Some(trailer_at) {
        return Err(Error::corrupt("trailer does not point at the index"));
    }
    if trailer.index_len > limits.max_index_bytes {
        return Err(Error::LimitExceeded(format!(
            "index of {} bytes is over the reader's limit of {}",
            trailer.index_len, limits.max_index_bytes
        )));
    }
    let index = if keys.is_some() || header.encryption.is_none() {
        let mut bytes = vec![0u8; trailer.index_len as usize];
        file.read_exact_at(&mut bytes, trailer.index_offset)?;
        Some(Index::decode(&bytes, keys)?)
    } else {
        None
    };
    Ok((trailer, index))
}

/// What `stats` shows: everything the header, trailer and index say, nothing decompressed.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AfInfo {
    pub format_version: u16,
    pub encrypted: bool,
    pub archive: bool,
    pub level: i8,
    pub chunking: ChunkParams,
    pub file_bytes: u64,
    pub totals: Totals,
    /// Logical size over file size; 1.0 for empty content.
    pub ratio: f64,
    /// Hex SHA-256 of the content; `None` for an encrypted file opened without its seed.
    pub sha256: Option<String>,
    /// Whether that SHA-256 counts the holes (as zeros): then it is the original file's.
    pub holes_hashed: bool,
    /// Number of index entries (records); `None` when the index is sealed and no seed was given.
    pub records: Option<u64>,
}

/// An `.af` file opened for stats and ranged reads.
#[derive(Debug)]
pub struct AfFile {
    file: File,
    header: Header,
    keys: Option<Arc<Keys>>,
    trailer: Trailer,
    index: Option<Index>,
    /// Record offset of each data chunk, by ordinal, for references.
    data_offsets: Vec<u64>,
    file_bytes: u64,
}

impl AfFile {
    /// Opens and checks header, trailer and index. An encrypted file without its seed opens for
    /// its public totals only; with a wrong seed it is refused.
    pub fn open(file: File, seed: Option<&Seed>, limits: &Limits) -> Result<AfFile> {
        let mut at0 = PositionedReader { file: &file, at: 0 };
        let header = Header::read(&mut at0, limits)?;
        let keys = match (&header.encryption, seed) {
            (Some(_), None) => None,
            _ => header.unlock(seed)?.map(Arc::new),
        };
        let (trailer, index) = read_tail(&file, &header, keys.as_deref(), limits)?;
        let data_offsets = index
            .iter()
            .flat_map(|i| &i.entries)
            .filter(|e| e.kind == 2 || e.kind == 3)
            .map(|e| e.location)
            .collect();
        let file_bytes = file.metadata()?.len();
        Ok(AfFile {
            file,
            header,
            keys,
            trailer,
            index,
            data_offsets,
            file_bytes,
        })
    }

    /// Opens a damaged file (truncated, or with a damaged trailer or index) for ranged reads of
    /// what precedes the damage: the records are scanned from the start (headers only, payloads
    /// skipped) until the first one that does not check out, and the index is rebuilt from them.
    /// Chunks read later are still verified one by one; the whole-content SHA-256 cannot be.
    pub fn salvage(file: File, seed: Option<&Seed>, limits: &Limits) -> Result<AfFile> {
        let mut at0 = PositionedReader { file: &file, at: 0 };
        let header = Header::read(&mut at0, limits)?;
        let keys = header.unlock(seed)?.map(Arc::new);
        let tag_len = if keys.is_some() { TAG_LEN } else { 0 };
        let file_bytes = file.metadata()?.len();
        let mut reader = std::io::BufReader::new(PositionedReader {
            file: &file,
            at: header.encoded_len() as u64,
        });
        let mut offset = header.encoded_len() as u64;
        let (mut index, mut data_offsets) = (Index::default(), Vec::new());
        let mut logical = 0u64;
        let max_entries = limits.max_index_bytes / crate::format::index::ENTRY_LEN as u64;
        while (index.entries.len() as u64) < max_entries {
            let Ok((record, header_len)) = Record::read(&mut reader, header.chunking.max, tag_len)
            else {
                break;
            };
            let payload = match record {
                Record::Data { stored_len, .. } => u64::from(stored_len),
                Record::End => break,
                _ => 0,
            };
            let next = offset + header_len as u64 + payload;
            if next > file_bytes {
                break;
            }
            let location = match record {
                Record::Data { .. } => {
                    data_offsets.push(offset);
                    offset
                }
                Record::Reference { ordinal, .. } => ordinal,
                _ => 0,
            };
            index.entries.push(crate::format::index::IndexEntry {
                kind: record.kind(),
                logical_offset: logical,
                location,
            });
            logical += record.logical_len();
            reader.seek_relative(payload as i64)?;
            offset = next;
        }
        let trailer = Trailer {
            index_offset: offset,
            index_len: 0,
            totals: Totals {
                logical_bytes: logical,
                ..Totals::default()
            },
            digest_field: Vec::new(),
        };
        Ok(AfFile {
            file,
            header,
            keys,
            trailer,
            index: Some(index),
            data_offsets,
            file_bytes,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn totals(&self) -> &Totals {
        &self.trailer.totals
    }

    pub fn info(&self) -> Result<AfInfo> {
        let sha256 = match (&self.header.encryption, &self.keys) {
            (Some(_), None) => None,
            _ => Some(crate::hex::encode(
                &self.trailer.content_digest(self.keys.as_deref())?,
            )),
        };
        let totals = self.trailer.totals;
        Ok(AfInfo {
            format_version: VERSION,
            encrypted: self.header.encryption.is_some(),
            archive: self.header.archive,
            level: self.header.level,
            chunking: self.header.chunking,
            file_bytes: self.file_bytes,
            totals,
            ratio: if totals.logical_bytes == 0 {
                1.0
            } else {
                totals.logical_bytes as f64 / self.file_bytes as f64
            },
            sha256,
            holes_hashed: self.header.holes_hashed,
            records: self.index.as_ref().map(|i| i.entries.len() as u64),
        })
    }

    /// Reads `len` bytes of the content starting at `offset`, decoding only the chunks that
    /// cover them. Each chunk is verified against its identity.
    pub fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.visit_range(offset, len as u64, &mut |piece| {
            match piece {
                RangePiece::Bytes(bytes) => out.extend_from_slice(bytes),
                RangePiece::Zeros(n) => out.resize(out.len() + n as usize, 0),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Hands the content from `offset` to `offset + len` (cut at the content's end) to `visit`
    /// in order, one chunk or run at a time: memory stays bounded by one chunk, and zero runs and
    /// holes arrive as counts, so that a restored file keeps its holes.
    pub fn visit_range(
        &self,
        offset: u64,
        len: u64,
        visit: &mut dyn FnMut(RangePiece<'_>) -> Result<()>,
    ) -> Result<()> {
        let index = self.index.as_ref().ok_or(Error::SeedRequired)?;
        let size = self.logical_bytes();
        let end = offset.saturating_add(len).min(size);
        let mut decoder = ChunkDecoder::new(self.keys.clone())?;
        let mut pos = offset;
        let Some(mut i) = index.entry_at(offset) else {
            return Ok(());
        };
        while pos < end {
            let entry = index
                .entries
                .get(i)
                .ok_or_else(|| Error::corrupt("index ends early"))?;
            let entry_end = index.entries.get(i + 1).map_or(size, |n| n.logical_offset);
            let take_from = (pos - entry.logical_offset) as usize;
            let take_to = (end.min(entry_end) - entry.logical_offset) as usize;
            match entry.kind {
                0 | 4 => visit(RangePiece::Zeros((take_to - take_from) as u64))?,
                kind => {
                    let record_offset = if kind == 1 {
                        *usize::try_from(entry.location)
                            .ok()
                            .and_then(|o| self.data_offsets.get(o))
                            .ok_or_else(|| Error::corrupt("reference past the data chunks"))?
                    } else {
                        entry.location
                    };
                    let plain = self.read_chunk(&mut decoder, record_offset)?;
                    let slice = plain
                        .get(take_from..take_to)
                        .ok_or_else(|| Error::corrupt("chunk shorter than its index entry"))?;
                    visit(RangePiece::Bytes(slice))?;
                }
            }
            pos = entry.logical_offset + take_to as u64;
            i += 1;
        }
        Ok(())
    }

    /// Bytes of content: from the trailer, or what a salvaged file's records add up to.
    pub fn logical_bytes(&self) -> u64 {
        self.trailer.totals.logical_bytes
    }

    /// The keys of an encrypted file opened with its seed.
    pub(crate) fn keys(&self) -> Option<&Keys> {
        self.keys.as_deref()
    }

    fn read_chunk(&self, decoder: &mut ChunkDecoder, record_offset: u64) -> Result<Vec<u8>> {
        let tag_len = if self.keys.is_some() { TAG_LEN } else { 0 };
        read_data_record(
            &self.file,
            record_offset,
            self.header.chunking.max,
            tag_len,
            decoder,
        )
    }
}

/// A piece of content handed out by [`AfFile::visit_range`].
#[derive(Debug)]
pub enum RangePiece<'a> {
    Bytes(&'a [u8]),
    /// This many zero bytes (a zero run or a hole).
    Zeros(u64),
}

/// Reads the data record at `offset` and decodes it (verified against its id and checks).
pub(crate) fn read_data_record(
    file: &File,
    offset: u64,
    max_chunk: u32,
    tag_len: usize,
    decoder: &mut ChunkDecoder,
) -> Result<Vec<u8>> {
    let mut reader = PositionedReader { file, at: offset };
    let (record, _) = Record::read(&mut reader, max_chunk, tag_len)?;
    let Record::Data { stored_len, .. } = record else {
        return Err(Error::corrupt("expected a data record at this offset"));
    };
    let mut payload = vec![0u8; stored_len as usize];
    read_exact_or(
        &mut reader,
        &mut payload,
        Error::corrupt("chunk payload truncated"),
    )?;
    decoder.decode(&record, payload)
}

/// A reader at a position of a shared file, using positioned reads.
pub(crate) struct PositionedReader<'a> {
    pub(crate) file: &'a File,
    pub(crate) at: u64,
}

impl std::io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for PositionedReader<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let at = match pos {
            std::io::SeekFrom::Start(at) => Some(at),
            std::io::SeekFrom::Current(delta) => self.at.checked_add_signed(delta),
            std::io::SeekFrom::End(delta) => self.file.metadata()?.len().checked_add_signed(delta),
        };
        self.at = at.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.at)
    }
}
