//! What the protocol serves: a small table of calls, as nbdkit's plugins are. The protocol layer
//! knows nothing of how an export stores its bytes; an export knows nothing of the wire.
//!
//! Every call may block (they run on the blocking pool), is made with a range already checked
//! against the export's size, and answers with an [`Errno`] the client understands.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// The errors NBD carries to a client (`NBD_E*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// Operation not permitted: a write to a read-only export.
    Perm,
    /// The store failed.
    Io,
    /// Out of memory: never used if anything else fits.
    NoMem,
    /// A request the protocol or the export refuses as asked.
    Inval,
    /// No space left: past the end of the export, or the store is full.
    NoSpc,
    /// A request too large to answer (a read over the maximum payload).
    Overflow,
    /// A fast zero that cannot be fast.
    NotSup,
    /// The server is shutting down.
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }
}

/// A failed request: the errno for the client, and a message (sent in structured replies,
/// which carry one, and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub errno: Errno,
    pub message: String,
}

impl ExportError {
    pub fn new(errno: Errno, message: impl Into<String>) -> ExportError {
        ExportError {
            errno,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.errno, self.message)
    }
}

impl std::error::Error for ExportError {}

/// Result alias for export calls.
pub type ExportResult<T> = std::result::Result<T, ExportError>;

/// The size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest request granularity: 1 lets clients read and write any byte range.
    pub minimum: u32,
    /// What the export handles best (its chunk size).
    pub preferred: u32,
    /// Largest payload of a read or write.
    pub maximum: u32,
}

/// What the handshake tells a client about an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub read_only: bool,
    pub block: BlockSizes,
    /// FLUSH or FUA on any connection makes durable every write answered on any connection.
    pub multi_conn: bool,
    /// Description for `NBD_INFO_DESCRIPTION` and `NBD_OPT_LIST`.
    pub description: String,
}

/// One piece of a read, in order: bytes, or a run of zeros the client may keep sparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    Zeros(u64),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(b) => b.len() as u64,
            Piece::Zeros(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One extent of `base:allocation`: `len` bytes in the state `hole` (never written, or trimmed)
/// and `zero` (reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub hole: bool,
    pub zero: bool,
}

/// An export: the calls the transmission phase makes.
pub trait Export: Send + Sync + 'static {
    fn info(&self) -> ExportInfo;

    /// The bytes of `offset..offset + len`, as pieces that cover the range exactly.
    fn read(&self, offset: u64, len: u32) -> ExportResult<Vec<Piece>>;

    /// [`Export::read`] if the export can answer from memory at once, without waiting for a
    /// disk or the network; `None` to have the read run on the blocking pool. A read answered
    /// here skips two thread handoffs, which cost more than the read itself when its data is
    /// cached.
    fn read_from_memory(&self, _offset: u64, _len: u32) -> Option<ExportResult<Vec<Piece>>> {
        None
    }

    /// Writes `data` at `offset`; with `fua`, durable before this returns.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> ExportResult<()>;

    /// [`Export::write`] without FUA if the export can do it in memory at once, without
    /// waiting; `None`, with nothing written, to have the write run on the blocking pool. As
    /// for [`Export::read_from_memory`], a small write answered here skips two thread handoffs.
    fn write_to_memory(&self, _offset: u64, _data: &[u8]) -> Option<ExportResult<()>> {
        None
    }

    /// Makes `offset..offset + len` read as zeros. `punch`: the space may be deallocated (a
    /// hole). `fast`: fail with [`Errno::NotSup`] unless this is cheaper than writing zeros.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        punch: bool,
        fast: bool,
        fua: bool,
    ) -> ExportResult<()>;

    /// The client no longer needs `offset..offset + len` (advisory).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()>;

    /// Makes every write already answered durable (on every connection).
    fn flush(&self) -> ExportResult<()>;

    /// Prepares `offset..offset + len` for reading soon (advisory).
    fn cache(&self, offset: u64, len: u64) -> ExportResult<()>;

    /// `base:allocation` from `offset`: extents in order, covering at least one byte and at
    /// most `len` (the protocol layer clamps and splits what it sends).
    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>>;
}

/// Why an export cannot be opened by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No export has this name.
    Unknown,
    /// It exists but cannot be served now (a seeded volume still locked, say): the message
    /// says why, to the client and the log.
    Refused(String),
}

/// The exports a server offers, by name. The empty name (a client's default) may name one.
pub trait Exports: Send + Sync + 'static {
    /// Every export's name and description, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<(String, String)>;

    /// Opens an export for one connection; dropping the handle closes it.
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError>;
}
