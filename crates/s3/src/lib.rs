//! AetherFlow storage on S3-compatible object storage: several servers, one bucket.
//!
//! | module | idea |
//! |---|---|
//! | [`location`] | the `s3://BUCKET/PREFIX?endpoint=…` URL |
//! | [`remote`] | the bucket, spoken to synchronously, every request counted |
//! | [`keys`] | the layout of objects in the bucket |
//! | [`pack`] | pack objects: many chunks, their index at the end |
//! | [`catalog`] | what this server knows of the bucket: blocks, packs, references |
//! | [`writer`] | the open pack that concurrent allocations stage into |
//! | `refresh`, `reads` | keeping the catalog and read counts in step with the bucket |
//! | [`sweep`] | garbage collection that is safe against other servers' commits |
//! | [`store`] | [`S3Store`]: the `BlockStore` contract |
//! | `meta`, `housekeeper` | the store's identity object; its background thread |
//!
//! How the pieces fit, and why concurrent servers never lose a live chunk, is in
//! `docs/design.md` ("Object storage").

pub mod catalog;
mod housekeeper;
pub mod keys;
pub mod location;
mod meta;
pub mod pack;
mod prefetch;
mod reads;
mod refresh;
pub mod remote;
pub mod store;
pub mod sweep;
mod verify;
pub mod writer;

pub use location::S3Location;
pub use remote::Timeouts;
pub use store::{S3Options, S3Store};
