//! Progress reporting as a trait: the CLI draws a bar, the server and tests ignore it.

/// Told how far long work has come. Implementations must be cheap: called once per chunk.
pub trait Progress: Sync {
    /// The total amount of input, when it is known up front.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more of the input are done.
    fn advance(&self, bytes: u64);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}
