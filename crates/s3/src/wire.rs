//! Small objects this store writes into the bucket, read back as untrusted bytes: a magic at the
//! front, 16 bytes of BLAKE3 of everything before them at the end, and fields taken off the
//! front with every count checked against the bytes left before anything is allocated. A
//! damaged or hostile object is [`Error::Corrupt`], never a panic or an allocation it names.

use aetherflow_store::{Error, Result};

/// Bytes of the check at an object's end.
pub const CHECK_LEN: usize = 16;

/// The check of `body`: the first 16 bytes of its BLAKE3.
pub fn check(body: &[u8]) -> [u8; CHECK_LEN] {
    blake3::hash(body).as_bytes()[..CHECK_LEN]
        .try_into()
        .expect("16 bytes")
}

/// Splits off and verifies the magic and the check of an object; `kind` says what it should
/// have been ("not {kind}").
pub fn checked<'a>(what: &str, kind: &str, bytes: &'a [u8], magic: &[u8; 8]) -> Result<&'a [u8]> {
    if bytes.len() < magic.len() + CHECK_LEN || bytes[..magic.len()] != *magic {
        return Err(Error::Corrupt(format!("{what}: not {kind}")));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECK_LEN);
    if check(body) != *sum {
        return Err(Error::Corrupt(format!("{what}: checksum mismatch")));
    }
    Ok(&body[magic.len()..])
}

/// Reads fields off the front of a body; `what` names the object in errors.
pub struct Cursor<'a> {
    rest: &'a [u8],
    what: &'a str,
}

impl<'a> Cursor<'a> {
    pub fn new(body: &'a [u8], what: &'a str) -> Cursor<'a> {
        Cursor { rest: body, what }
    }

    /// A corruption error naming the object.
    pub fn corrupt(&self, why: impl std::fmt::Display) -> Error {
        Error::Corrupt(format!("{}: {why}", self.what))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(self.corrupt("truncated"));
        }
        let (part, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(part)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    pub fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().expect("16")))
    }

    /// A count of items of `item` bytes each, refused if more than the bytes left could hold.
    pub fn count(&mut self, wide: bool, item: usize) -> Result<usize> {
        let n = if wide {
            self.u32()? as usize
        } else {
            usize::from(self.u16()?)
        };
        if n.saturating_mul(item) > self.rest.len() {
            return Err(self.corrupt(format_args!("a count of {n} runs past the end")));
        }
        Ok(n)
    }

    pub fn done(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("bytes after the end"))
        }
    }
}
