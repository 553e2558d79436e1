//! Reading a chunk back from the bucket: one ranged GET of its record, checked.

use aetherflow_store::{ChunkId, Error, Result, StoredChunk};
use bytes::Bytes;

use crate::catalog::Home;
use crate::keys;
use crate::pack;
use crate::remote::Remote;
use crate::view::View;

/// Reads one copy of a chunk, checked.
fn read_home(remote: &Remote, home: &Home) -> Result<Bytes> {
    let len = pack::record_len(&home.info);
    let bytes = remote.get_range(&keys::pack(&home.pack), home.offset..home.offset + len)?;
    pack::check_record(&home.pack, home.offset, bytes, &home.info)
}

/// A chunk's checked payload from any of its copies. A chunk that no pack holds (any more) is
/// damage: whoever asks for it was told it exists.
pub(crate) fn read_chunk(remote: &Remote, view: &View, id: &ChunkId) -> Result<StoredChunk> {
    for attempt in 0..2 {
        let homes = view.read(|c| c.homes(id));
        let mut failure = None;
        for home in &homes {
            match read_home(remote, home) {
                Ok(payload) => {
                    return Ok(StoredChunk {
                        info: home.info,
                        payload,
                    })
                }
                Err(e @ (Error::Unavailable(_) | Error::Denied(_))) => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        if attempt == 0 {
            // A copy may have moved (compaction by another server) or be new to us.
            view.refresh_packs()?;
            continue;
        }
        return Err(match failure {
            Some(Error::NotFound(what)) => {
                Error::Corrupt(format!("chunk {id:?}: its pack is gone ({what} not found)"))
            }
            Some(e) => e,
            None => Error::Corrupt(format!("chunk {id:?}: no pack in the bucket holds it")),
        });
    }
    unreachable!("the loop returns")
}
