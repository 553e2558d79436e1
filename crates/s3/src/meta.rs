//! The store's identity object: format version and the salt of its dedup domains.

use aetherflow_store::{Error, Result, What};
use bytes::Bytes;

use crate::keys;
use crate::remote::Remote;

const META_MAGIC: [u8; 8] = *b"AFS3META";
/// 3: blocks exist in the log (`log/E/WRITER-SEQ` records), no longer as `blocks/ID` objects.
/// (2: sealed chunks carry their own nonce, seeded manifests a random checksum nonce.) A
/// store of an older version is refused, by name: its blocks are objects this build does not
/// read until the store is upgraded (`upgrade`), and builds that know only version 2 refuse a
/// version-3 store the same way.
pub const META_VERSION: u8 = 3;
const META_LEN: usize = 8 + 1 + 16 + 4;

/// What the identity object says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    pub salt: [u8; 16],
    pub bytes: u64,
}

/// An identity object's bytes.
pub fn encode_identity(version: u8, salt: &[u8; 16]) -> Bytes {
    let mut body = META_MAGIC.to_vec();
    body.push(version);
    body.extend_from_slice(salt);
    body.extend_from_slice(&blake3::hash(&body).as_bytes()[..4]);
    Bytes::from(body)
}

/// The version and salt of an identity object, checked.
pub fn decode_identity(body: &[u8]) -> Result<(u8, [u8; 16])> {
    if body.len() != META_LEN
        || body[..8] != META_MAGIC
        || blake3::hash(&body[..25]).as_bytes()[..4] != body[25..]
    {
        return Err(Error::Corrupt(format!(
            "{}: not an AetherFlow store object (or damaged)",
            keys::META
        )));
    }
    Ok((body[8], body[9..25].try_into().expect("16 bytes")))
}

/// Reads the store's identity object. A prefix without one is [`Error::NotFound`] (the bucket
/// missing too, said so); with `create`, it is created instead (create-if-absent, so two
/// servers starting on an empty prefix agree on one salt). Without `create` nothing is ever
/// written.
pub(crate) fn open_identity(remote: &Remote, create: bool) -> Result<Identity> {
    let body = match remote.get(keys::META) {
        Ok(body) => body,
        Err(Error::NotFound(_)) if !remote.bucket_listable() => {
            return Err(Error::NotFound(What::Bucket {
                name: remote.location.bucket.clone(),
                endpoint: remote
                    .location
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| "AWS".into()),
            }))
        }
        Err(Error::NotFound(_)) if !create => {
            return Err(Error::NotFound(What::Store(remote.location.to_string())))
        }
        Err(Error::NotFound(_)) => {
            let salt = aetherflow_store::types::random_salt()?;
            match remote.put(keys::META, encode_identity(META_VERSION, &salt), true) {
                Ok(()) | Err(Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
            remote.get(keys::META)?
        }
        Err(e) => return Err(e),
    };
    let (version, salt) = decode_identity(&body)?;
    if version != META_VERSION {
        return Err(Error::Refused(format!(
            "{}: this store is of version {version}, and this build reads version \
             {META_VERSION} only{}",
            keys::META,
            if version == crate::upgrade::FROM_VERSION {
                " (version 3 keeps blocks in the bucket's log: stop every server of this store \
                 and run `aetherflow upgrade-store URL` once)"
            } else if version < META_VERSION {
                " (a store of that version is opened by the build that wrote it)"
            } else {
                " (it was written by a newer build)"
            }
        )));
    }
    Ok(Identity {
        salt,
        bytes: body.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_damage_is_refused() {
        let body = encode_identity(META_VERSION, &[7; 16]);
        assert_eq!(decode_identity(&body).unwrap(), (META_VERSION, [7; 16]));
        for at in 0..body.len() {
            let mut bad = body.to_vec();
            bad[at] ^= 1;
            assert!(decode_identity(&bad).is_err(), "flip at {at}");
        }
        assert!(decode_identity(&body[..body.len() - 1]).is_err());
    }
}
