//! What every handler shares: the memory manager, the configuration, the metrics.

use std::sync::Arc;
use std::time::Duration;

use aetherflow_vm::VirtualMemory;

use crate::metrics::Metrics;

/// Server settings that are not the memory manager's. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct ServerConfig {
    /// Bearer token every route but `/healthz` requires; `None` leaves the API open (loopback).
    pub token: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413 before they are read.
    pub max_body: u64,
    /// A client must send its whole request head within this time.
    pub header_timeout: Duration,
    /// A request body may pause at most this long between two pieces.
    pub body_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .field("max_body", &self.max_body)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            max_body: 1 << 30,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Shared state of all handlers (cheap to clone).
#[derive(Debug, Clone)]
pub struct AppState {
    pub vm: Arc<VirtualMemory>,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    /// Requests that hold a whole body or block in memory (JSON allocate and read, compress,
    /// decompress) take a permit first: more of them at once than the cores can serve only adds
    /// memory, not throughput.
    pub heavy: Arc<tokio::sync::Semaphore>,
    /// Streamed requests (raw uploads and reads, export, import) each hold a blocking thread
    /// for as long as the client keeps the transfer going; this bounds how many at once, so that
    /// slow clients cannot take every thread of the blocking pool.
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// Streamed transfers served at once; more wait for a turn.
const MAX_STREAMS: usize = 64;

impl AppState {
    pub fn new(vm: VirtualMemory, config: ServerConfig) -> AppState {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AppState {
            vm: Arc::new(vm),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            heavy: Arc::new(tokio::sync::Semaphore::new((2 * cores).max(4))),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Waits for a permit to run a memory-heavy request; see [`AppState::heavy`].
    pub async fn heavy_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.heavy)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits for a turn to run a streamed transfer; see [`AppState::streams`].
    pub async fn stream_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.streams)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Runs blocking work (compression, hashing, disk I/O) off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&VirtualMemory) -> T + Send + 'static,
    ) -> T {
        let vm = Arc::clone(&self.vm);
        tokio::task::spawn_blocking(move || work(&vm))
            .await
            .expect("blocking task panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = ServerConfig {
            token: Some("s3cr3t-token-value".into()),
            ..ServerConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-token-value"), "{shown}");
        assert!(shown.contains("token: Some(\"(hidden)\")"), "{shown}");
        assert!(format!("{:?}", ServerConfig::default()).contains("token: None"));
    }
}
