//! Replies of the transmission phase, framed as the connection negotiated: simple replies,
//! structured reply chunks, or extended headers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::export::{Errno, Extent, Piece};
use crate::wire::*;

/// How replies are framed on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing negotiated: a 16-byte reply, then the data of a read.
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY`: 20-byte chunk headers.
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS`: 32-byte chunk headers with 64-bit lengths.
    Extended,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success without data.
    Done { cookie: u64, offset: u64 },
    /// Failure (no data sent before it).
    Error {
        cookie: u64,
        offset: u64,
        errno: Errno,
        message: String,
    },
    /// The data of a read, as pieces covering the request in order.
    Read {
        cookie: u64,
        offset: u64,
        pieces: Vec<Piece>,
    },
    /// `base:allocation` of a range: extents from `offset`, already clamped to the request.
    BlockStatus {
        cookie: u64,
        offset: u64,
        context: u32,
        extents: Vec<Extent>,
    },
}

/// Longest error message sent: qemu refuses any non-data chunk over 1000 bytes.
const MAX_MESSAGE: usize = 900;

/// The frames of `reply`: header bytes and data, in the order they go on the wire. Data is
/// passed through without copying.
pub fn encode(reply: &Reply, framing: Framing) -> Vec<Bytes> {
    let mut frames = Vec::new();
    match framing {
        Framing::Simple => simple(reply, &mut frames),
        Framing::Structured | Framing::Extended => chunks(reply, framing, &mut frames),
    }
    frames
}

fn simple_header(errno: u32, cookie: u64) -> Bytes {
    let mut h = BytesMut::with_capacity(16);
    h.put_u32(SIMPLE_REPLY_MAGIC);
    h.put_u32(errno);
    h.put_u64(cookie);
    h.freeze()
}

fn simple(reply: &Reply, frames: &mut Vec<Bytes>) {
    match reply {
        Reply::Done { cookie, .. } => frames.push(simple_header(0, *cookie)),
        Reply::Error { cookie, errno, .. } => frames.push(simple_header(errno.code(), *cookie)),
        Reply::Read { cookie, pieces, .. } => {
            frames.push(simple_header(0, *cookie));
            for piece in pieces {
                match piece {
                    Piece::Data(data) => frames.push(data.clone()),
                    Piece::Zeros(n) => frames.push(Bytes::from(vec![0u8; *n as usize])),
                }
            }
        }
        // Block status needs a negotiated context, which needs structured replies.
        Reply::BlockStatus { cookie, .. } => {
            frames.push(simple_header(Errno::Inval.code(), *cookie))
        }
    }
}

/// One chunk header; `offset` is the request's (extended headers carry it in every chunk).
fn chunk_header(
    framing: Framing,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) -> BytesMut {
    let mut h = BytesMut::with_capacity(32 + 16);
    if framing == Framing::Extended {
        h.put_u32(EXTENDED_REPLY_MAGIC);
        h.put_u16(flags);
        h.put_u16(kind);
        h.put_u64(cookie);
        h.put_u64(offset);
        h.put_u64(len);
    } else {
        h.put_u32(STRUCTURED_REPLY_MAGIC);
        h.put_u16(flags);
        h.put_u16(kind);
        h.put_u64(cookie);
        h.put_u32(len as u32);
    }
    h
}

fn truncated(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

fn chunks(reply: &Reply, framing: Framing, frames: &mut Vec<Bytes>) {
    match reply {
        Reply::Done { cookie, offset } => frames.push(
            chunk_header(
                framing,
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                *cookie,
                *offset,
                0,
            )
            .freeze(),
        ),
        Reply::Error {
            cookie,
            offset,
            errno,
            message,
        } => {
            let message = truncated(message);
            let mut c = chunk_header(
                framing,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                *cookie,
                *offset,
                6 + message.len() as u64,
            );
            c.put_u32(errno.code());
            c.put_u16(message.len() as u16);
            c.put_slice(message.as_bytes());
            frames.push(c.freeze());
        }
        Reply::Read {
            cookie,
            offset,
            pieces,
        } => {
            let pieces: Vec<&Piece> = pieces.iter().filter(|p| !p.is_empty()).collect();
            if pieces.is_empty() {
                frames.push(
                    chunk_header(
                        framing,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_NONE,
                        *cookie,
                        *offset,
                        0,
                    )
                    .freeze(),
                );
                return;
            }
            let mut at = *offset;
            for (i, piece) in pieces.iter().enumerate() {
                let flags = if i + 1 == pieces.len() {
                    REPLY_FLAG_DONE
                } else {
                    0
                };
                match piece {
                    Piece::Data(data) => {
                        let mut c = chunk_header(
                            framing,
                            flags,
                            REPLY_TYPE_OFFSET_DATA,
                            *cookie,
                            *offset,
                            8 + data.len() as u64,
                        );
                        c.put_u64(at);
                        frames.push(c.freeze());
                        frames.push(data.clone());
                    }
                    Piece::Zeros(n) => {
                        let mut c = chunk_header(
                            framing,
                            flags,
                            REPLY_TYPE_OFFSET_HOLE,
                            *cookie,
                            *offset,
                            12,
                        );
                        c.put_u64(at);
                        c.put_u32(*n as u32);
                        frames.push(c.freeze());
                    }
                }
                at += piece.len();
            }
        }
        Reply::BlockStatus {
            cookie,
            offset,
            context,
            extents,
        } => {
            let state = |e: &Extent| {
                (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 })
            };
            let c = if framing == Framing::Extended {
                let mut c = chunk_header(
                    framing,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_BLOCK_STATUS_EXT,
                    *cookie,
                    *offset,
                    8 + 16 * extents.len() as u64,
                );
                c.put_u32(*context);
                c.put_u32(extents.len() as u32);
                for e in extents {
                    c.put_u64(e.len);
                    c.put_u64(u64::from(state(e)));
                }
                c
            } else {
                let mut c = chunk_header(
                    framing,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_BLOCK_STATUS,
                    *cookie,
                    *offset,
                    4 + 8 * extents.len() as u64,
                );
                c.put_u32(*context);
                for e in extents {
                    c.put_u32(e.len as u32);
                    c.put_u32(state(e));
                }
                c
            };
            frames.push(c.freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(frames: Vec<Bytes>) -> Vec<u8> {
        frames.concat()
    }

    #[test]
    fn simple_replies_carry_the_data_after_sixteen_bytes() {
        let read = Reply::Read {
            cookie: 9,
            offset: 4096,
            pieces: vec![Piece::Data(Bytes::from_static(b"ab")), Piece::Zeros(3)],
        };
        let bytes = flat(encode(&read, Framing::Simple));
        assert_eq!(&bytes[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&bytes[4..8], &[0; 4]);
        assert_eq!(&bytes[8..16], &9u64.to_be_bytes());
        assert_eq!(&bytes[16..], b"ab\0\0\0");
        let err = Reply::Error {
            cookie: 1,
            offset: 0,
            errno: Errno::NoSpc,
            message: "full".into(),
        };
        assert_eq!(
            &flat(encode(&err, Framing::Simple))[4..8],
            &28u32.to_be_bytes()
        );
    }

    #[test]
    fn structured_reads_are_data_and_hole_chunks_ending_done() {
        let read = Reply::Read {
            cookie: 3,
            offset: 1000,
            pieces: vec![Piece::Data(Bytes::from_static(b"xyz")), Piece::Zeros(500)],
        };
        let bytes = flat(encode(&read, Framing::Structured));
        // OFFSET_DATA: header (20), offset (8), data (3)
        assert_eq!(&bytes[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&bytes[4..6], &0u16.to_be_bytes(), "not done yet");
        assert_eq!(&bytes[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        assert_eq!(&bytes[16..20], &11u32.to_be_bytes());
        assert_eq!(&bytes[20..28], &1000u64.to_be_bytes());
        assert_eq!(&bytes[28..31], b"xyz");
        // OFFSET_HOLE at 1003, 500 bytes, done.
        let hole = &bytes[31..];
        assert_eq!(&hole[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&hole[6..8], &REPLY_TYPE_OFFSET_HOLE.to_be_bytes());
        assert_eq!(&hole[20..28], &1003u64.to_be_bytes());
        assert_eq!(&hole[28..32], &500u32.to_be_bytes());
        assert_eq!(hole.len(), 32);
    }

    #[test]
    fn extended_chunks_carry_the_request_offset_and_64_bit_extents() {
        let status = Reply::BlockStatus {
            cookie: 5,
            offset: 0,
            context: 1,
            extents: vec![Extent {
                len: 100 << 40,
                hole: true,
                zero: true,
            }],
        };
        let bytes = flat(encode(&status, Framing::Extended));
        assert_eq!(&bytes[..4], &EXTENDED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&bytes[6..8], &REPLY_TYPE_BLOCK_STATUS_EXT.to_be_bytes());
        assert_eq!(&bytes[24..32], &24u64.to_be_bytes());
        assert_eq!(&bytes[32..36], &1u32.to_be_bytes());
        assert_eq!(&bytes[36..40], &1u32.to_be_bytes());
        assert_eq!(&bytes[40..48], &(100u64 << 40).to_be_bytes());
        assert_eq!(&bytes[48..56], &3u64.to_be_bytes());
        let read = Reply::Read {
            cookie: 5,
            offset: 777,
            pieces: vec![Piece::Data(Bytes::from_static(b"q"))],
        };
        let bytes = flat(encode(&read, Framing::Extended));
        assert_eq!(
            &bytes[16..24],
            &777u64.to_be_bytes(),
            "the request's offset"
        );
        assert_eq!(
            &bytes[32..40],
            &777u64.to_be_bytes(),
            "the chunk's own offset"
        );
    }

    #[test]
    fn error_messages_stay_short_enough_for_qemu() {
        let err = Reply::Error {
            cookie: 1,
            offset: 0,
            errno: Errno::Io,
            message: "é".repeat(2000),
        };
        let bytes = flat(encode(&err, Framing::Structured));
        assert!(bytes.len() - 20 <= 1000);
        let len = u16::from_be_bytes([bytes[24], bytes[25]]) as usize;
        assert!(std::str::from_utf8(&bytes[26..26 + len]).is_ok());
    }
}
