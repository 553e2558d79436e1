//! Resolving references: where the plaintext of an earlier data chunk is found again when a
//! later record repeats it (the output file, the input file, or a window of recent chunks).

use super::*;

/// Where earlier data chunks are found again when a reference repeats them.
pub(super) enum Resolver {
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
    pub(super) fn new(
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

    pub(super) fn remember(&mut self, ordinal: u64, plain: &[u8]) {
        if let Resolver::Window { chunks, bytes } = self {
            chunks.push_back((ordinal, Arc::new(plain.to_vec())));
            *bytes += plain.len();
            while *bytes > WINDOW_BYTES {
                let (_, old) = chunks.pop_front().expect("non-empty while over budget");
                *bytes -= old.len();
            }
        }
    }

    pub(super) fn fetch(
        &mut self,
        ordinal: u64,
        target: &DataChunk,
        keys: Option<&Keys>,
    ) -> Result<Vec<u8>> {
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
