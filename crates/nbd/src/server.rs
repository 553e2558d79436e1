//! The listener and the transmission phase: [`serve`] accepts connections until shutdown; each
//! one negotiates, then reads requests, runs them on the blocking pool (several at once, up to
//! a byte budget) and writes their replies as they finish.
//!
//! **Bounded memory.** A request's payload (a write) or answer (a read) counts against its
//! connection's budget, [`Limits::connection_bytes`], and against the server's,
//! [`Limits::server_bytes`]; a request waits for room before its payload is read. Payloads over
//! [`crate::request::MAX_DISCARD`] end the connection unread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::export::{Errno, Export, ExportError, ExportResult, Exports, Extent, Piece};
use crate::handshake::{negotiate, Negotiated, BASE_ALLOCATION_ID};
use crate::reply::{encode, Framing, Reply};
use crate::request::{check, parse_header, payload_len, Command, Header, Session, MAX_DISCARD};
use crate::wire::{EXTENDED_REQUEST_LEN, REQUEST_LEN};

/// Budgets and timeouts of a server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not chosen an export by then is dropped.
    pub handshake_timeout: Duration,
    /// Bytes of payloads and answers in flight on one connection.
    pub connection_bytes: u64,
    /// Bytes of payloads and answers in flight on all connections together.
    pub server_bytes: u64,
    /// Requests in flight on one connection.
    pub requests_in_flight: usize,
    /// Connections served at once; more wait to be accepted.
    pub connections: usize,
    /// After shutdown is asked, connections get this long to finish what is in flight.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connection_bytes: 64 << 20,
            server_bytes: 512 << 20,
            requests_in_flight: 64,
            connections: 64,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Told of every connection and request, for metrics and logs.
pub trait Observer: Send + Sync + 'static {
    fn connected(&self) {}
    fn disconnected(&self) {}
    /// A request finished: its command, the bytes it moved (read or written), and whether it
    /// succeeded.
    fn request(&self, _command: &'static str, _bytes: u64, _ok: bool) {}
}

/// An observer that notes nothing.
#[derive(Debug, Default)]
pub struct Unobserved;
impl Observer for Unobserved {}

/// Returns once `shutdown` is true (at once if it is already).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Budget accounting unit: payloads are counted in 64 KiB units (a request takes at least one).
const UNIT: u64 = 64 * 1024;

fn units(bytes: u64) -> u32 {
    bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX)) as u32
}

/// Serves `exports` on `listener` until `shutdown` turns true; then stops accepting, lets
/// connections finish what is in flight (up to [`Limits::shutdown_grace`]) and returns.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<dyn Exports>,
    observer: Arc<dyn Observer>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let server_budget = Arc::new(Semaphore::new(units(limits.server_bytes) as usize));
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("nbd: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            exports: Arc::clone(&exports),
            observer: Arc::clone(&observer),
            limits,
            server_budget: Arc::clone(&server_budget),
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            let _slot = slot;
            connection.observer.connected();
            if let Err(e) = connection.run(stream).await {
                tracing::debug!("nbd: connection from {peer} ended: {e}");
            }
            connection.observer.disconnected();
        });
        while connections.try_join_next().is_some() {}
    }
    let grace = tokio::time::sleep(limits.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            _ = &mut grace => {
                connections.abort_all();
                break;
            }
        }
    }
    Ok(())
}

/// Serves one connection that is already open (any byte stream: a socket, or a test's pipe),
/// from the handshake to its end. [`serve`] runs this for each connection it accepts.
pub async fn serve_connection<S>(
    stream: S,
    exports: Arc<dyn Exports>,
    observer: Arc<dyn Observer>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let connection = Connection {
        exports,
        observer,
        limits,
        server_budget: Arc::new(Semaphore::new(units(limits.server_bytes) as usize)),
        shutdown,
    };
    match connection.run(stream).await {
        Ok(()) | Err(Ended::Handshake(_) | Ended::HandshakeTimeout | Ended::Violation(_)) => Ok(()),
        Err(Ended::Io(e)) => Err(e),
    }
}

struct Connection {
    exports: Arc<dyn Exports>,
    observer: Arc<dyn Observer>,
    limits: Limits,
    server_budget: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Handshake(#[from] crate::handshake::HandshakeError),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("{0}")]
    Violation(String),
}

/// Reads and drops `len` payload bytes of a refused request, a piece at a time.
async fn discard(reader: &mut (impl AsyncReadExt + Unpin), mut len: u64) -> std::io::Result<()> {
    let mut sink = vec![0u8; 64 * 1024];
    while len > 0 {
        let n = len.min(sink.len() as u64) as usize;
        reader.read_exact(&mut sink[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

impl Connection {
    async fn run<S>(&self, mut stream: S) -> Result<(), Ended>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shutdown = self.shutdown.clone();
        let negotiated = tokio::time::timeout(
            self.limits.handshake_timeout,
            negotiate(&mut stream, &*self.exports, &|| *shutdown.borrow()),
        )
        .await
        .map_err(|_| Ended::HandshakeTimeout)??;
        self.transmit(stream, negotiated).await
    }

    async fn transmit<S>(&self, stream: S, n: Negotiated) -> Result<(), Ended>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let session = Session {
            extended: n.framing == Framing::Extended,
            structured: n.framing != Framing::Simple,
            block_status: n.block_status,
            size: n.info.size,
            read_only: n.info.read_only,
            max_payload: n.info.block.maximum,
        };
        let framing = n.framing;
        let export = n.export;
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = BufReader::with_capacity(256 * 1024, read_half);
        let (replies, mut outbox) = mpsc::channel::<Reply>(self.limits.requests_in_flight.max(1));
        let writer = tokio::spawn(async move {
            let mut out = BufWriter::with_capacity(256 * 1024, write_half);
            while let Some(reply) = outbox.recv().await {
                for frame in encode(&reply, framing) {
                    out.write_all(&frame).await?;
                }
                if outbox.is_empty() {
                    out.flush().await?;
                }
            }
            out.flush().await?;
            out.shutdown().await
        });
        let local_budget = Arc::new(Semaphore::new(units(self.limits.connection_bytes) as usize));
        let in_flight = Arc::new(Semaphore::new(self.limits.requests_in_flight.max(1)));
        let mut running = JoinSet::new();
        let mut shutdown = self.shutdown.clone();
        let header_len = if session.extended {
            EXTENDED_REQUEST_LEN
        } else {
            REQUEST_LEN
        };
        let mut header = vec![0u8; header_len];
        let result: Result<(), Ended> = loop {
            while running.try_join_next().is_some() {}
            // An idle connection ends at shutdown; one that is sending goes on to the next
            // request boundary, where new requests are refused.
            let read = tokio::select! {
                r = reader.read_exact(&mut header) => r,
                _ = stopped(&mut shutdown) => break Ok(()),
            };
            match read {
                Ok(_) => {}
                // The client hung up between requests (fio and nbd_close do): a disconnect.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
                Err(e) => break Err(e.into()),
            }
            let h = match parse_header(&header, session.extended) {
                Ok(h) => h,
                Err(e) => break Err(Ended::Violation(e.to_string())),
            };
            let payload = payload_len(&h, &session);
            if payload > MAX_DISCARD {
                break Err(Ended::Violation(format!(
                    "a payload of {payload} bytes (far above the maximum)"
                )));
            }
            let command = match check(&h, &session) {
                Ok(Command::Disconnect) => break Ok(()),
                Ok(c) if !*self.shutdown.borrow() => c,
                Ok(_) => {
                    if let Err(e) = discard(&mut reader, payload).await {
                        break Err(e.into());
                    }
                    let reply = error_reply(&h, Errno::Shutdown, "the server is shutting down");
                    if replies.send(reply).await.is_err() {
                        break Ok(());
                    }
                    continue;
                }
                Err(refusal) => {
                    if let Err(e) = discard(&mut reader, payload).await {
                        break Err(e.into());
                    }
                    self.observer.request("refused", 0, false);
                    let reply = error_reply(&h, refusal.errno, &refusal.message);
                    if replies.send(reply).await.is_err() {
                        break Ok(());
                    }
                    continue;
                }
            };
            let moved = match command {
                Command::Read { len, .. } | Command::Write { len, .. } => u64::from(len),
                _ => 0,
            };
            let permits = match self.reserve(moved, &local_budget, &in_flight).await {
                Some(p) => p,
                None => break Ok(()),
            };
            let data = if let Command::Write { len, .. } = command {
                let mut buf = vec![0u8; len as usize];
                if let Err(e) = reader.read_exact(&mut buf).await {
                    break Err(e.into());
                }
                Bytes::from(buf)
            } else {
                Bytes::new()
            };
            // A small read the export can answer from memory, or a small write it can take in
            // memory, is answered here, at once.
            let answered =
                match command {
                    Command::Read { offset, len, df } if len <= MEMORY_READ_MAX => export
                        .read_from_memory(offset, len)
                        .map(|result| read_reply(&h, offset, df, result)),
                    Command::Write {
                        offset, fua: false, ..
                    } if data.len() <= MEMORY_WRITE_MAX => export
                        .write_to_memory(offset, &data)
                        .map(|result| match result {
                            Ok(()) => Reply::Done {
                                cookie: h.cookie,
                                offset: h.offset,
                            },
                            Err(e) => failed(&h, command.name(), e),
                        }),
                    _ => None,
                };
            if let Some(reply) = answered {
                self.observer
                    .request(command.name(), moved, !matches!(reply, Reply::Error { .. }));
                if replies.send(reply).await.is_err() {
                    break Ok(());
                }
                drop(permits);
                continue;
            }
            let export = Arc::clone(&export);
            let observer = Arc::clone(&self.observer);
            let replies = replies.clone();
            running.spawn(async move {
                let _permits = permits;
                let reply = tokio::task::spawn_blocking(move || run(&*export, &h, command, data))
                    .await
                    .unwrap_or_else(|_| {
                        error_reply(&h, Errno::Io, "the request failed on the server")
                    });
                let ok = !matches!(reply, Reply::Error { .. });
                observer.request(command.name(), moved, ok);
                let _ = replies.send(reply).await;
            });
        };
        // Whatever ended the loop, requests already running are answered before the close.
        while running.join_next().await.is_some() {}
        // Closing an export may block (a volume writes back what it buffered): off the async
        // threads, and before the close is answered, so that a client that reconnects at once
        // reads what it wrote.
        let _ = tokio::task::spawn_blocking(move || drop(export)).await;
        drop(replies);
        let written = writer.await;
        result?;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }

    /// Waits for room for a request moving `bytes`: an in-flight slot, then the connection's
    /// and the server's budgets. `None` if the server is going away.
    async fn reserve(
        &self,
        bytes: u64,
        local: &Arc<Semaphore>,
        in_flight: &Arc<Semaphore>,
    ) -> Option<[OwnedSemaphorePermit; 3]> {
        let need = units(bytes);
        let slot = Arc::clone(in_flight).acquire_owned().await.ok()?;
        let local = Arc::clone(local)
            .acquire_many_owned(need.min(units(self.limits.connection_bytes)))
            .await
            .ok()?;
        let global = Arc::clone(&self.server_budget)
            .acquire_many_owned(need.min(units(self.limits.server_bytes)))
            .await
            .ok()?;
        Some([slot, local, global])
    }
}

fn error_reply(h: &Header, errno: Errno, message: &str) -> Reply {
    Reply::Error {
        cookie: h.cookie,
        offset: h.offset,
        errno,
        message: message.to_string(),
    }
}

/// Runs one checked command against the export (on the blocking pool).
fn run(export: &dyn Export, h: &Header, command: Command, data: Bytes) -> Reply {
    let done = || Reply::Done {
        cookie: h.cookie,
        offset: h.offset,
    };
    let result = match command {
        Command::Read { offset, len, df } => {
            return read_reply(h, offset, df, export.read(offset, len));
        }
        Command::Write { offset, fua, .. } => export.write(offset, &data, fua).map(|_| done()),
        Command::Flush => export.flush().map(|_| done()),
        Command::Trim { offset, len, fua } => export.trim(offset, len, fua).map(|_| done()),
        Command::Cache { offset, len } => export.cache(offset, len).map(|_| done()),
        Command::WriteZeroes {
            offset,
            len,
            punch,
            fast,
            fua,
        } => export
            .write_zeroes(offset, len, punch, fast, fua)
            .map(|_| done()),
        Command::BlockStatus { offset, len, one } => export.extents(offset, len).and_then(|e| {
            let extents = clamp_extents(e, len, one);
            if extents.is_empty() {
                return Err(ExportError::new(Errno::Io, "no extent information"));
            }
            Ok(Reply::BlockStatus {
                cookie: h.cookie,
                offset,
                context: BASE_ALLOCATION_ID,
                extents,
            })
        }),
        Command::Disconnect => unreachable!("a disconnect never runs"),
    };
    result.unwrap_or_else(|e| failed(h, command.name(), e))
}

/// Writes at most this long may be taken on the connection's own task
/// ([`Export::write_to_memory`]): a copy into memory, as for reads.
const MEMORY_WRITE_MAX: usize = 256 * 1024;

/// Reads at most this long may be answered on the connection's own task
/// ([`Export::read_from_memory`]): copying them out of memory takes microseconds.
const MEMORY_READ_MAX: u32 = 256 * 1024;

/// The reply to a read of `offset` that gave `result`.
fn read_reply(h: &Header, offset: u64, df: bool, result: ExportResult<Vec<Piece>>) -> Reply {
    match result {
        Ok(pieces) => Reply::Read {
            cookie: h.cookie,
            offset,
            pieces: if df { whole(pieces) } else { pieces },
        },
        Err(e) => failed(h, "read", e),
    }
}

/// The error reply for a failed command, logged if the failure is the server's.
fn failed(h: &Header, command: &str, e: ExportError) -> Reply {
    if e.errno == Errno::Io {
        tracing::warn!("nbd: {command} at {} failed: {}", h.offset, e.message);
    }
    error_reply(h, e.errno, &e.message)
}

/// A read as one piece: what `NBD_CMD_FLAG_DF` asks for.
fn whole(pieces: Vec<Piece>) -> Vec<Piece> {
    if pieces.len() <= 1 && !matches!(pieces.first(), Some(Piece::Zeros(_))) {
        return pieces;
    }
    let mut all = Vec::new();
    for p in pieces {
        match p {
            Piece::Data(d) => all.extend_from_slice(&d),
            Piece::Zeros(n) => all.resize(all.len() + n as usize, 0),
        }
    }
    vec![Piece::Data(Bytes::from(all))]
}

/// Most descriptors one block-status reply carries; a client asks again for the rest.
const MAX_EXTENTS: usize = 64 * 1024;

/// Extents as the protocol allows them: merged where their states agree, none empty, none past
/// the `len` requested, one with `REQ_ONE`.
pub fn clamp_extents(extents: Vec<Extent>, len: u64, one: bool) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut left = len;
    for e in extents {
        if left == 0 || out.len() == MAX_EXTENTS {
            break;
        }
        let n = e.len.min(left);
        if n == 0 {
            continue;
        }
        left -= n;
        match out.last_mut() {
            Some(last) if last.hole == e.hole && last.zero == e.zero => last.len += n,
            _ => out.push(Extent { len: n, ..e }),
        }
    }
    if one {
        out.truncate(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(len: u64, hole: bool, zero: bool) -> Extent {
        Extent { len, hole, zero }
    }

    #[test]
    fn extents_are_merged_clamped_and_never_empty() {
        let raw = vec![
            ext(10, true, true),
            ext(0, false, false),
            ext(5, true, true),
            ext(100, false, false),
        ];
        assert_eq!(
            clamp_extents(raw.clone(), 50, false),
            vec![ext(15, true, true), ext(35, false, false)]
        );
        assert_eq!(
            clamp_extents(raw.clone(), 50, true),
            vec![ext(15, true, true)]
        );
        assert_eq!(clamp_extents(raw, 7, false), vec![ext(7, true, true)]);
    }

    #[test]
    fn do_not_fragment_reads_come_as_one_piece() {
        let pieces = vec![Piece::Data(Bytes::from_static(b"ab")), Piece::Zeros(2)];
        assert_eq!(
            whole(pieces),
            vec![Piece::Data(Bytes::from_static(b"ab\0\0"))]
        );
        assert_eq!(
            whole(vec![Piece::Zeros(3)]),
            vec![Piece::Data(Bytes::from_static(b"\0\0\0"))]
        );
    }
}
