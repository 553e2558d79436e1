//! The content's SHA-256, computed on a thread of its own.
//!
//! SHA-256 is inherently serial and, at about 1.5 GB/s, as costly as zstd's decoding; done on
//! the writer's thread it made the writer the pipeline's bottleneck. As a stage of its own it
//! runs beside the writes. The channel is bounded, so at most a few chunks wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};
use sha2::{Digest, Sha256};

enum Job {
    Bytes(Vec<u8>),
    Zeros(u64),
}

/// Feeds content, in order, to a hashing thread.
pub(crate) struct ContentHasher {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<[u8; 32]>>,
    /// Set when the hasher is dropped unfinished (the pipeline failed): a long zero run being
    /// hashed (a hostile file may claim an exabyte) stops within 64 KiB instead of running on.
    abandoned: Arc<AtomicBool>,
}

impl std::fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentHasher")
    }
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl ContentHasher {
    pub(crate) fn new() -> ContentHasher {
        let (tx, rx) = bounded::<Job>(4);
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&abandoned);
        let handle = std::thread::spawn(move || {
            let mut sha = Sha256::new();
            for job in rx {
                match job {
                    Job::Bytes(bytes) => sha.update(&bytes),
                    Job::Zeros(mut left) => {
                        while left > 0 && !stop.load(Ordering::Relaxed) {
                            let n = left.min(ZEROS.len() as u64) as usize;
                            sha.update(&ZEROS[..n]);
                            left -= n as u64;
                        }
                    }
                }
            }
            sha.finalize().into()
        });
        ContentHasher {
            tx: Some(tx),
            handle: Some(handle),
            abandoned,
        }
    }

    /// A hasher with no thread, to stand in for one taken out with [`std::mem::replace`].
    pub(crate) fn idle() -> ContentHasher {
        ContentHasher {
            tx: None,
            handle: None,
            abandoned: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The next bytes of the content.
    pub(crate) fn bytes(&self, bytes: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Bytes(bytes));
        }
    }

    /// The next `len` bytes of the content are zeros.
    pub(crate) fn zeros(&self, len: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Zeros(len));
        }
    }

    /// The SHA-256 of everything fed so far.
    pub(crate) fn finish(mut self) -> [u8; 32] {
        drop(self.tx.take());
        self.handle
            .take()
            .expect("finished once")
            .join()
            .expect("the hashing thread does not panic")
    }
}

impl Drop for ContentHasher {
    /// Only an unfinished hasher is dropped with its thread alive: its digest is not wanted.
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256_of_the_same_content() {
        let hasher = ContentHasher::new();
        hasher.bytes(b"abc".to_vec());
        hasher.zeros(100_000);
        hasher.bytes(b"def".to_vec());
        let expected: [u8; 32] = Sha256::new()
            .chain_update(b"abc")
            .chain_update(vec![0u8; 100_000])
            .chain_update(b"def")
            .finalize()
            .into();
        assert_eq!(hasher.finish(), expected);
    }

    #[test]
    fn an_abandoned_hasher_stops_at_once() {
        let hasher = ContentHasher::new();
        hasher.zeros(u64::MAX); // about 2^53 blocks: hashing them would never end
        let started = std::time::Instant::now();
        drop(hasher);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
