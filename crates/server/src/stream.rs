//! Bridges between async bodies and the memory manager's blocking `Read`/`Write` interfaces, so
//! that multi-gigabyte blocks flow through in bounded memory (a few body frames at a time).

use std::io::{self, Read, Write};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Frames in flight between the socket and the blocking side, each way.
const FRAMES: usize = 16;

/// Marks the error a [`BodyReader`] returns when the body passes the size limit.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the size limit")
    }
}

impl std::error::Error for BodyTooLarge {}

/// Marks the error of a body that stalled past the body timeout.
#[derive(Debug)]
pub struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client stopped sending the request body")
    }
}

impl std::error::Error for BodyStalled {}

/// Why a request body could not be read to its end, when the client is the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// It passed the size limit.
    TooLarge,
    /// It stopped arriving for longer than the body timeout.
    Stalled,
}

impl BodyFault {
    /// The fault behind `e` (as a [`BodyReader`] returned it, through the manager), if any.
    pub fn of(e: &io::Error) -> Option<BodyFault> {
        let inner = e.get_ref()?;
        if inner.is::<BodyTooLarge>() {
            Some(BodyFault::TooLarge)
        } else if inner.is::<BodyStalled>() {
            Some(BodyFault::Stalled)
        } else {
            None
        }
    }

    /// The fault behind an error of the HTTP stack reading a body: a length limit or a
    /// timeout anywhere in its chain of sources.
    pub fn of_body_error(e: &(dyn std::error::Error + 'static)) -> Option<BodyFault> {
        let mut next = Some(e);
        while let Some(e) = next {
            if e.is::<http_body_util::LengthLimitError>() {
                return Some(BodyFault::TooLarge);
            }
            if e.is::<tower_http::timeout::TimeoutError>()
                || e.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
            {
                return Some(BodyFault::Stalled);
            }
            next = e.source();
        }
        None
    }

    /// The response for it (`limit` is the body limit, for the message).
    pub fn response(self, limit: u64) -> crate::error::ApiError {
        match self {
            BodyFault::TooLarge => crate::error::ApiError::too_large(limit),
            BodyFault::Stalled => crate::error::ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "BODY_TIMEOUT",
                "the client stopped sending the request body",
            ),
        }
    }
}

/// A blocking reader over a request body, fed by a task that enforces `limit`.
#[derive(Debug)]
pub struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl BodyReader {
    /// Starts pumping `body` (stopping with an error past `limit` bytes); returns the reader and
    /// a handle that yields the number of bytes received.
    pub fn new(body: Body, limit: u64) -> (BodyReader, tokio::task::JoinHandle<u64>) {
        let (tx, rx) = mpsc::channel(FRAMES);
        let pump = tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            let mut total = 0u64;
            while let Some(frame) = stream.next().await {
                let item = match frame {
                    Ok(bytes) => {
                        total += bytes.len() as u64;
                        if total > limit {
                            Err(io::Error::other(BodyTooLarge))
                        } else {
                            Ok(bytes)
                        }
                    }
                    Err(e) => {
                        if BodyFault::of_body_error(&e) == Some(BodyFault::Stalled) {
                            Err(io::Error::other(BodyStalled))
                        } else {
                            Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("request body: {e}"),
                            ))
                        }
                    }
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
            total
        });
        (
            BodyReader {
                rx,
                current: Bytes::new(),
            },
            pump,
        )
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking writer whose bytes become a response body. Writing fails once the client is gone.
#[derive(Debug)]
pub struct BodyWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// A client that stops reading for this long is given up on.
    stall: std::time::Duration,
    runtime: tokio::runtime::Handle,
}

/// Bytes gathered before a frame is sent.
const FRAME_BYTES: usize = 256 * 1024;

impl BodyWriter {
    /// The writer and the response body it feeds. Call from the async side; write from a
    /// blocking thread.
    pub fn new(stall: std::time::Duration) -> (BodyWriter, Body) {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(FRAMES);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let writer = BodyWriter {
            tx,
            buf: Vec::with_capacity(FRAME_BYTES),
            stall,
            runtime: tokio::runtime::Handle::current(),
        };
        (writer, Body::from_stream(stream))
    }

    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.stall, self.tx.send(item)));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
        }
    }

    /// Ends the body with an error, so that the client sees an aborted transfer rather than a
    /// complete-looking one.
    pub fn abort(mut self, why: &str) {
        self.buf.clear();
        let _ = self.send(Err(io::Error::other(why.to_string())));
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FRAME_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let frame = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(FRAME_BYTES),
            ));
            self.send(Ok(frame))?;
        }
        Ok(())
    }
}

/// A parsed `Range` header against a resource of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No header, or one we serve whole (several ranges).
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` (one range).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((start, end)) = spec.split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        match end.parse::<u64>() {
            Ok(0) | Err(_) => return RangeRequest::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
        }
    } else {
        let Ok(a) = start.parse::<u64>() else {
            return RangeRequest::Unsatisfiable;
        };
        let b = if end.is_empty() {
            size
        } else {
            match end.parse::<u64>() {
                Ok(b) if b >= a => b.saturating_add(1).min(size),
                _ => return RangeRequest::Unsatisfiable,
            }
        };
        a..b
    };
    if range.start >= size || range.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Part(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Part(0..10));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Part(90..100));
        assert_eq!(parse_range(Some("bytes=-5"), 100), Part(95..100));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Part(50..100));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=0-18446744073709551615"), 100),
            Part(0..100)
        );
    }
}
