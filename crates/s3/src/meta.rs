//! The store's identity object: format version and the salt of its dedup domains.

use aetherflow_store::{Error, Result};
use bytes::Bytes;

use crate::keys;
use crate::remote::Remote;

const META_MAGIC: [u8; 8] = *b"AFS3META";
const META_VERSION: u8 = 1;

/// Reads the store's identity object, or creates it (create-if-absent, so two servers starting
/// on an empty prefix agree on one salt).
pub(crate) fn open_or_create_meta(remote: &Remote) -> Result<([u8; 16], u64)> {
    // A missing bucket and wrong credentials fail this first request, with their own errors.
    let exists = match remote.get(keys::META) {
        Ok(_) => true,
        Err(Error::NotFound(_)) => false,
        Err(e) => return Err(e),
    };
    if !exists {
        let salt = aetherflow_store::types::random_salt()?;
        let mut body = META_MAGIC.to_vec();
        body.push(META_VERSION);
        body.extend_from_slice(&salt);
        body.extend_from_slice(&blake3::hash(&body).as_bytes()[..4]);
        match remote.put(keys::META, Bytes::from(body), true) {
            Ok(()) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let body = remote.get(keys::META)?;
    let what = || {
        Error::Corrupt(format!(
            "{}: not an AetherFlow store object (or damaged)",
            keys::META
        ))
    };
    if body.len() != 8 + 1 + 16 + 4 || body[..8] != META_MAGIC {
        return Err(what());
    }
    if blake3::hash(&body[..25]).as_bytes()[..4] != body[25..] {
        return Err(what());
    }
    if body[8] != META_VERSION {
        return Err(Error::Corrupt(format!(
            "{}: store version {} is not supported by this build",
            keys::META,
            body[8]
        )));
    }
    Ok((body[9..25].try_into().expect("16 bytes"), body.len() as u64))
}
