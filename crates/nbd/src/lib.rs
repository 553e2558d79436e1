//! An NBD server's protocol layer: the fixed newstyle handshake with structured replies,
//! extended headers and `base:allocation` block status, and the transmission phase, over any
//! [`Exports`] (a table of calls, as nbdkit's plugins are). It knows nothing of storage.
//!
//! | module | idea |
//! |---|---|
//! | [`wire`] | the protocol's numbers |
//! | [`export`] | what is served: [`Export`], [`Exports`], errors, extents |
//! | [`handshake`] | options until the client picks an export |
//! | [`request`] | request headers, and what they ask checked against the session |
//! | [`reply`] | replies framed as negotiated (simple, structured, extended) |
//! | [`server`] | [`serve`]: the listener, connections, budgets, shutdown |
//!
//! The protocol is `doc/proto.md` of the NetworkBlockDevice project, with its extended-headers
//! extension (qemu since 8.2, libnbd since 1.18).

pub mod export;
pub mod handshake;
pub mod reply;
pub mod request;
pub mod server;
pub mod wire;

pub use export::{
    BlockSizes, Errno, Export, ExportError, ExportInfo, ExportResult, Exports, Extent, OpenError,
    Piece,
};
pub use server::{serve, serve_connection, Limits, Observer, Unobserved};
