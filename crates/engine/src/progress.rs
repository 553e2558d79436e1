//! Progress reporting as a trait: the CLI draws a bar, the server and tests ignore it.

/// Told how far long work has come. Implementations must be cheap: called once per chunk.
pub trait Progress: Sync {
    /// The total amount of input, when it is known up front.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more of the input are done.
    fn advance(&self, bytes: u64);
    /// The number of entries of a directory archive, when known up front.
    fn set_entries(&self, _count: u64) {}
    /// One entry of a directory archive was archived or restored (`bytes`: a file's size).
    fn entry(&self, _path: &std::path::Path, _bytes: u64) {}
    /// Something was skipped or could not be read, and the work goes on without it.
    fn warn(&self, _message: &str) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}
