//! Chunk encoders and decoders kept by each thread. A volume codes a few chunks per request,
//! and building a zstd context for them costs more than the coding: a compression context's
//! tables (over a MiB at the default level) are allocated and faulted in anew each time. The
//! threads that code chunks live long (rayon's pool, the blocking pool), so each keeps one
//! decoder and one encoder per level. Keys are lent for one use and taken back after it, so a
//! locked volume's keys stay nowhere in memory.

use std::cell::RefCell;
use std::sync::Arc;

use aetherflow_engine::codec::{ChunkDecoder, ChunkEncoder};
use aetherflow_engine::crypto::{Keys, NonceSource};
use aetherflow_engine::Result;

thread_local! {
    static DECODER: RefCell<Option<ChunkDecoder>> = const { RefCell::new(None) };
    static ENCODERS: RefCell<Vec<(i32, ChunkEncoder)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's decoder, opening chunks under `keys`.
pub(super) fn with_decoder<R>(
    keys: Option<&Arc<Keys>>,
    f: impl FnOnce(&mut ChunkDecoder) -> Result<R>,
) -> Result<R> {
    DECODER.with(|cell| {
        // Taken while in use, so that a nested use (none is expected) builds its own.
        let mut decoder = match cell.borrow_mut().take() {
            Some(d) => d,
            None => ChunkDecoder::new(None)?,
        };
        decoder.set_keys(keys.cloned());
        let out = f(&mut decoder);
        decoder.set_keys(None);
        *cell.borrow_mut() = Some(decoder);
        out
    })
}

/// Runs `f` with this thread's encoder for `level`, sealing under `keys` with nonces from the
/// payload (one key seals a domain's chunks for ever).
pub(super) fn with_encoder<R>(
    level: i32,
    keys: Option<&Arc<Keys>>,
    f: impl FnOnce(&mut ChunkEncoder) -> Result<R>,
) -> Result<R> {
    ENCODERS.with(|cell| {
        let taken = {
            let mut encoders = cell.borrow_mut();
            let at = encoders.iter().position(|(l, _)| *l == level);
            at.map(|i| encoders.swap_remove(i).1)
        };
        let mut encoder = match taken {
            Some(e) => e,
            None => ChunkEncoder::with_nonce(level, None, NonceSource::Stored)?,
        };
        encoder.set_keys(keys.cloned(), NonceSource::Stored);
        let out = f(&mut encoder);
        encoder.set_keys(None, NonceSource::Stored);
        cell.borrow_mut().push((level, encoder));
        out
    })
}
