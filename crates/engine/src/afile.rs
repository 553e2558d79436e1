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
            records: self.index.as_ref().map(|i| i.entries.len() as u64),
        })
    }

    /// Reads `len` bytes of the content starting at `offset`, decoding only the chunks that
    /// cover them. Each chunk is verified against its identity.
    pub fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let index = self.index.as_ref().ok_or(Error::SeedRequired)?;
        let size = self.trailer.totals.logical_bytes;
        let end = offset.saturating_add(len as u64).min(size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut decoder = ChunkDecoder::new(self.keys.clone())?;
        let mut pos = offset;
        let Some(mut i) = index.entry_at(offset) else {
            return Ok(out);
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
                0 | 4 => out.resize(out.len() + (take_to - take_from), 0),
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
                    out.extend_from_slice(slice);
                }
            }
            pos = entry.logical_offset + take_to as u64;
            i += 1;
        }
        Ok(out)
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
