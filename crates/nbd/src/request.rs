//! Requests of the transmission phase: the header as read, then what it asks checked against
//! what the connection negotiated. Both steps are pure functions of bytes and state, so that
//! a fuzzer can drive them (`crates/fuzz-targets`).

use crate::export::Errno;
use crate::wire::*;

/// A request header as it came, nothing about it checked but its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    /// Effect length, or payload length (writes; extended requests with `PAYLOAD_LEN`).
    pub length: u64,
}

/// A header that cannot be a request: the stream is out of step, and the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request magic {0:#010x} is not NBD's: the connection is out of step")]
pub struct BadMagic(pub u32);

/// Reads a header of [`REQUEST_LEN`] bytes (compact) or [`EXTENDED_REQUEST_LEN`] (extended).
pub fn parse_header(bytes: &[u8], extended: bool) -> Result<Header, BadMagic> {
    let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let (magic, len) = if extended {
        (EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_LEN)
    } else {
        (REQUEST_MAGIC, REQUEST_LEN)
    };
    assert_eq!(bytes.len(), len, "a request header is read whole");
    if u32_at(0) != magic {
        return Err(BadMagic(u32_at(0)));
    }
    Ok(Header {
        flags: u16_at(4),
        kind: u16_at(6),
        cookie: u64_at(8),
        offset: u64_at(16),
        length: if extended {
            u64_at(24)
        } else {
            u64::from(u32_at(24))
        },
    })
}

/// What a connection agreed on, which decides what its requests may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub extended: bool,
    pub structured: bool,
    /// `base:allocation` was selected (block status allowed).
    pub block_status: bool,
    pub size: u64,
    pub read_only: bool,
    /// Largest read or write payload served.
    pub max_payload: u32,
}

/// Payloads above this are not read at all: the connection ends (a denial of service, not a
/// mistake). Between the maximum payload and this, the payload is read, dropped and refused.
pub const MAX_DISCARD: u64 = 64 << 20;

/// A checked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disconnect,
    Flush,
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        punch: bool,
        fast: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        len: u64,
        one: bool,
    },
}

impl Command {
    /// A short name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Read { .. } => "read",
            Command::Write { .. } => "write",
            Command::Disconnect => "disc",
            Command::Flush => "flush",
            Command::Trim { .. } => "trim",
            Command::Cache { .. } => "cache",
            Command::WriteZeroes { .. } => "write_zeroes",
            Command::BlockStatus { .. } => "block_status",
        }
    }
}

/// A request refused with `errno` (its payload, if any, is still consumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errno: Errno,
    pub message: String,
}

fn refuse(errno: Errno, message: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        message: message.into(),
    }
}

/// How many payload bytes follow `header` on the wire. A write always carries its length in
/// payload, extended or not (qemu's client sends extended writes without `PAYLOAD_LEN`); any
/// other command carries one only with `PAYLOAD_LEN` in an extended request.
pub fn payload_len(header: &Header, session: &Session) -> u64 {
    if header.kind == CMD_WRITE || (session.extended && header.flags & CMD_FLAG_PAYLOAD_LEN != 0) {
        header.length
    } else {
        0
    }
}

/// Which command flags each command accepts. FUA is accepted (and ignored where it means
/// nothing) on every command, as the protocol requires once `SEND_FUA` is advertised.
fn allowed_flags(kind: u16, session: &Session) -> u16 {
    let extended_payload = if session.extended {
        CMD_FLAG_PAYLOAD_LEN
    } else {
        0
    };
    CMD_FLAG_FUA
        | match kind {
            CMD_READ if session.structured => CMD_FLAG_DF,
            CMD_WRITE => extended_payload,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// Checks what `header` asks against `session`.
pub fn check(header: &Header, session: &Session) -> Result<Command, Refusal> {
    let h = header;
    if !matches!(
        h.kind,
        CMD_READ
            | CMD_WRITE
            | CMD_DISC
            | CMD_FLUSH
            | CMD_TRIM
            | CMD_CACHE
            | CMD_WRITE_ZEROES
            | CMD_BLOCK_STATUS
    ) {
        return Err(refuse(Errno::Inval, format!("unknown command {}", h.kind)));
    }
    if h.kind == CMD_DISC {
        return Ok(Command::Disconnect);
    }
    let unknown = h.flags & !allowed_flags(h.kind, session);
    if unknown != 0 {
        return Err(refuse(
            Errno::Inval,
            format!("command flags {unknown:#06x} are not valid here"),
        ));
    }
    if h.kind != CMD_WRITE && payload_len(h, session) > 0 {
        return Err(refuse(Errno::Inval, "this command carries no payload"));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    if h.kind == CMD_FLUSH {
        if h.offset != 0 || h.length != 0 {
            return Err(refuse(Errno::Inval, "a flush has no offset or length"));
        }
        return Ok(Command::Flush);
    }
    let writes = matches!(h.kind, CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM);
    if writes && session.read_only {
        return Err(refuse(Errno::Perm, "the export is read-only"));
    }
    let end = h.offset.checked_add(h.length);
    if end.is_none_or(|end| end > session.size) {
        let errno = if matches!(h.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            Errno::NoSpc
        } else {
            Errno::Inval
        };
        return Err(refuse(
            errno,
            format!(
                "{} bytes at {} run past the end of the export ({} bytes)",
                h.length, h.offset, session.size
            ),
        ));
    }
    let payload_sized = |len: u64| -> Result<u32, Refusal> {
        u32::try_from(len)
            .ok()
            .filter(|&n| n <= session.max_payload)
            .ok_or_else(|| {
                refuse(
                    Errno::Inval,
                    format!(
                        "{len} bytes in one request: more than the {}-byte maximum",
                        session.max_payload
                    ),
                )
            })
    };
    let (offset, len) = (h.offset, h.length);
    Ok(match h.kind {
        CMD_READ => Command::Read {
            offset,
            len: payload_sized(len)?,
            df: h.flags & CMD_FLAG_DF != 0,
        },
        CMD_WRITE => Command::Write {
            offset,
            len: payload_sized(len)?,
            fua,
        },
        CMD_TRIM => Command::Trim { offset, len, fua },
        CMD_CACHE => Command::Cache { offset, len },
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            offset,
            len,
            punch: h.flags & CMD_FLAG_NO_HOLE == 0,
            fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
            fua,
        },
        CMD_BLOCK_STATUS => {
            if !session.block_status {
                return Err(refuse(
                    Errno::Inval,
                    "no metadata context was selected (NBD_OPT_SET_META_CONTEXT)",
                ));
            }
            if len == 0 {
                return Err(refuse(Errno::Inval, "block status of zero bytes"));
            }
            Command::BlockStatus {
                offset,
                len,
                one: h.flags & CMD_FLAG_REQ_ONE != 0,
            }
        }
        _ => unreachable!("checked above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            extended: false,
            structured: true,
            block_status: true,
            size: 1 << 30,
            read_only: false,
            max_payload: 32 << 20,
        }
    }

    fn header(kind: u16, flags: u16, offset: u64, length: u64) -> Header {
        Header {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    fn errno(h: Header, s: &Session) -> Errno {
        check(&h, s).unwrap_err().errno
    }

    #[test]
    fn headers_parse_in_both_forms() {
        let mut compact = Vec::new();
        compact.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        compact.extend_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        compact.extend_from_slice(&CMD_WRITE.to_be_bytes());
        compact.extend_from_slice(&42u64.to_be_bytes());
        compact.extend_from_slice(&4096u64.to_be_bytes());
        compact.extend_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            parse_header(&compact, false).unwrap(),
            header(CMD_WRITE, CMD_FLAG_FUA, 4096, 512).with_cookie(42)
        );
        let mut extended = compact.clone();
        extended[..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        extended.truncate(24);
        extended.extend_from_slice(&(5u64 << 40).to_be_bytes());
        let parsed = parse_header(&extended, true).unwrap();
        assert_eq!((parsed.length, parsed.offset), (5 << 40, 4096));
        let mut bad = compact.clone();
        bad[0] ^= 1;
        assert!(matches!(parse_header(&bad, false), Err(BadMagic(_))));
    }

    impl Header {
        fn with_cookie(mut self, cookie: u64) -> Header {
            self.cookie = cookie;
            self
        }
    }

    #[test]
    fn the_specifications_errors() {
        let s = session();
        let end = s.size;
        assert_eq!(errno(header(CMD_READ, 0, end - 1, 2), &s), Errno::Inval);
        assert_eq!(errno(header(CMD_TRIM, 0, end, 1), &s), Errno::Inval);
        assert_eq!(errno(header(CMD_BLOCK_STATUS, 0, end, 1), &s), Errno::Inval);
        assert_eq!(errno(header(CMD_WRITE, 0, end - 1, 2), &s), Errno::NoSpc);
        assert_eq!(
            errno(header(CMD_WRITE_ZEROES, 0, u64::MAX, 2), &s),
            Errno::NoSpc
        );
        assert_eq!(errno(header(99, 0, 0, 0), &s), Errno::Inval);
        assert_eq!(errno(header(CMD_READ, 1 << 9, 0, 1), &s), Errno::Inval);
        assert_eq!(
            errno(header(CMD_TRIM, CMD_FLAG_NO_HOLE, 0, 1), &s),
            Errno::Inval
        );
        assert_eq!(errno(header(CMD_READ, 0, 0, 33 << 20), &s), Errno::Inval);
        assert_eq!(errno(header(CMD_BLOCK_STATUS, 0, 0, 0), &s), Errno::Inval);
        let ro = Session {
            read_only: true,
            ..s
        };
        assert_eq!(errno(header(CMD_WRITE, 0, 0, 1), &ro), Errno::Perm);
        assert_eq!(errno(header(CMD_WRITE_ZEROES, 0, 0, 1), &ro), Errno::Perm);
        assert!(check(&header(CMD_READ, 0, 0, 1), &ro).is_ok());
        let no_context = Session {
            block_status: false,
            ..s
        };
        assert_eq!(
            errno(header(CMD_BLOCK_STATUS, 0, 0, 1), &no_context),
            Errno::Inval
        );
        // FUA is accepted on every command, even where it means nothing.
        assert!(check(&header(CMD_READ, CMD_FLAG_FUA, 0, 1), &s).is_ok());
        assert_eq!(
            check(&header(CMD_DISC, 0xffff, 5, 5), &s),
            Ok(Command::Disconnect)
        );
    }

    #[test]
    fn extended_requests_carry_64_bit_lengths_and_payload_flags() {
        let s = Session {
            extended: true,
            size: 100 << 40,
            ..session()
        };
        let whole = header(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, s.size);
        assert_eq!(
            check(&whole, &s),
            Ok(Command::BlockStatus {
                offset: 0,
                len: s.size,
                one: true
            })
        );
        let zeroes = header(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 1 << 40, 1 << 40);
        assert!(matches!(
            check(&zeroes, &s),
            Ok(Command::WriteZeroes { punch: false, .. })
        ));
        // A write is its length in payload, PAYLOAD_LEN or not.
        let write = header(CMD_WRITE, 0, 0, 4096);
        assert_eq!(payload_len(&write, &s), 4096);
        let flagged = header(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 4096);
        assert!(check(&flagged, &s).is_ok());
        // Another command with a payload: consumed, then refused.
        let odd = header(CMD_TRIM, CMD_FLAG_PAYLOAD_LEN, 0, 16);
        assert_eq!(payload_len(&odd, &s), 16);
        assert_eq!(errno(odd, &s), Errno::Inval);
        assert_eq!(payload_len(&odd, &session()), 0);
    }
}
