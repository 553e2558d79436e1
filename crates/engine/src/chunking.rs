//! Content-defined chunking with FastCDC (2020), streamed over any reader.
//!
//! Boundaries depend on content, not position, so an insertion early in a file moves only the
//! chunks around it and everything after still deduplicates. The cut-point search is the
//! `fastcdc` crate's; this module only feeds it from a bounded buffer.

use std::io::{self, Read};

use fastcdc::v2020::{FastCDC, Normalization};

/// Minimum, average and maximum chunk size in bytes.
///
/// The default was chosen by measurement on the Silesia corpus (`bench/chunk_sizes.sh`, figures in
/// `docs/design.md`): chunks are compressed independently, so small chunks lose ratio to zstd run
/// over the whole stream; 2 MiB on average keeps that loss under 1 %, while dedup still works at
/// a granularity far below the sizes of the files and blocks people store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkParams {
    pub const DEFAULT: ChunkParams = ChunkParams {
        min: 512 * 1024,
        avg: 2 * 1024 * 1024,
        max: 8 * 1024 * 1024,
    };

    /// Checks the sizes against what `fastcdc` accepts.
    pub fn validate(&self) -> crate::Result<()> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MAX, MINIMUM_MIN};
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (self.max <= MAXIMUM_MAX)
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok {
            Ok(())
        } else {
            Err(crate::Error::InvalidArgument(format!(
                "invalid chunk sizes {self:?}"
            )))
        }
    }
}

/// Splits a reader into content-defined chunks.
///
/// Holds at most two maximum-size chunks of input; each chunk is handed out as its own `Vec`, so
/// that it can travel to a worker thread.
#[derive(Debug)]
pub struct Chunker<R> {
    source: R,
    params: ChunkParams,
    gear_seed: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// `gear_seed` keys the boundaries (0: the standard table, as for unseeded data).
    pub fn new(source: R, params: ChunkParams, gear_seed: u64) -> Self {
        Chunker {
            source,
            params,
            gear_seed,
            buf: vec![0; 2 * params.max as usize],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Tops the buffer up to at least one maximum chunk, or to the end of the input.
    fn refill(&mut self) -> io::Result<()> {
        if self.eof || self.end - self.start >= self.params.max as usize {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.refill()?;
        let available = self.end - self.start;
        if available == 0 {
            return Ok(None);
        }
        let p = self.params;
        let cdc = FastCDC::with_level_and_seed(
            &self.buf[..self.end],
            p.min,
            p.avg,
            p.max,
            Normalization::Level1,
            self.gear_seed,
        );
        let (_, cut) = cdc.cut(self.start, available);
        let chunk = self.buf[self.start..cut].to_vec();
        self.start = cut;
        Ok(Some(chunk))
    }
}

/// Cut points of content held whole in memory: the boundaries [`Chunker`] finds when streaming
/// the same bytes, without copying them.
pub fn split(data: &[u8], params: ChunkParams, gear_seed: u64) -> Vec<std::ops::Range<usize>> {
    let cdc = FastCDC::with_level_and_seed(
        data,
        params.min,
        params.avg,
        params.max,
        Normalization::Level1,
        gear_seed,
    );
    let mut cuts = Vec::with_capacity(data.len() / params.avg as usize + 1);
    let mut start = 0;
    while start < data.len() {
        let (_, end) = cdc.cut(start, data.len() - start);
        cuts.push(start..end);
        start = end;
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ChunkParams {
        ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        }
    }

    fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        let mut chunker = Chunker::new(data, small(), seed);
        let mut out = Vec::new();
        while let Some(c) = chunker.next_chunk().unwrap() {
            out.push(c);
        }
        out
    }

    #[test]
    fn chunks_cover_input_within_bounds() {
        let data = pseudo_random(300_000, 1);
        let parts = chunks(&data, 0);
        assert_eq!(parts.concat(), data);
        for part in &parts[..parts.len() - 1] {
            assert!(part.len() >= 1024 && part.len() <= 16384, "{}", part.len());
        }
    }

    #[test]
    fn boundaries_resynchronise_after_an_insertion() {
        let data = pseudo_random(400_000, 2);
        let mut edited = data.clone();
        edited.splice(1000..1000, *b"inserted bytes");
        let a = chunks(&data, 0);
        let b = chunks(&edited, 0);
        let shared = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            shared + 3 >= a.len(),
            "only {shared} of {} chunks survived",
            a.len()
        );
    }

    #[test]
    fn splitting_in_memory_cuts_where_streaming_does() {
        for (len, seed) in [(0, 0), (100, 0), (300_000, 0), (250_000, 0x5eed)] {
            let data = pseudo_random(len, 7 + len as u64);
            let streamed = chunks(&data, seed);
            let split: Vec<Vec<u8>> = split(&data, small(), seed)
                .into_iter()
                .map(|r| data[r].to_vec())
                .collect();
            assert_eq!(split, streamed, "{len} bytes");
        }
    }

    #[test]
    fn gear_seed_moves_boundaries() {
        let data = pseudo_random(200_000, 3);
        assert_ne!(chunks(&data, 0), chunks(&data, 0x5eed));
    }
}
