//! AetherFlow storage on S3-compatible object storage: several servers, one bucket.
//!
//! | module | idea |
//! |---|---|
//! | [`location`] | the `s3://BUCKET/PREFIX?endpoint=…` URL |
//! | [`remote`] | the bucket, spoken to synchronously, every request counted |
//! | [`keys`] | the layout of objects in the bucket |
//! | [`pack`] | pack objects: many chunks, their index at the end |
//! | [`catalog`] | what this server knows of the bucket: blocks, packs, references |
//! | `view` | the catalog behind its lock, and the listings that refresh it |
//! | [`writer`], `packs` | the open pack that concurrent allocations stage into; uploads |
//! | `chunks`, `prefetch` | reading chunks back, and fetching them ahead |
//! | `reads` | read counts in the bucket |
//! | [`sweep`] | garbage collection that is safe against other servers' commits |
//! | [`log_record`], `log_writer`, `log_reader` | the bucket's log: records of what each server committed, their keys, writing and reading them |
//! | [`log_snapshot`], [`snapshots`] | snapshots of the log's settled epochs: their layout; writing and finding them |
//! | [`volume_objects`], `volumes` | volumes: heads, layer deltas, leases that fence writers |
//! | [`store`] | [`S3Store`]: the `BlockStore` contract, its parts and their lock order |
//! | [`meta`], `housekeeper` | the store's identity object; its background thread |
//! | [`upgrade`] | a store of version 2 turned into version 3, once |
//! | `sync` | locks that outlive a panic; work run once for all who want it |
//! | `wire` | small checked objects read back as untrusted bytes: check, fields, counts |
//!
//! How the pieces fit, and why concurrent servers never lose a live chunk, is in
//! `docs/design.md` ("Object storage").

pub mod catalog;
mod chunks;
mod housekeeper;
pub mod keys;
pub mod location;
mod log_reader;
pub mod log_record;
pub mod log_snapshot;
mod log_writer;
pub mod meta;
pub mod pack;
mod packs;
mod prefetch;
mod reads;
pub mod remote;
pub mod snapshots;
pub mod store;
pub mod sweep;
mod sync;
pub mod upgrade;
mod verify;
mod view;
pub mod volume_objects;
mod volumes;
mod wire;
pub mod writer;

pub use location::S3Location;
pub use remote::{s3_bucket, Timeouts};
pub use snapshots::{LogTrimmed, SnapshotOutcome};
pub use store::{S3Options, S3Store};
