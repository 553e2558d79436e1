//! The background thread of a store: keeps the catalog fresh, writes read counts, collects
//! garbage.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::Inner;

/// The background thread (refreshes, read counts, garbage collection): a stop flag it waits
/// on, and its handle.
pub(crate) type Housekeeper = (Arc<(Mutex<bool>, Condvar)>, JoinHandle<()>);

/// How often the housekeeper wakes, and how often read counts are written.
const TICK: Duration = Duration::from_millis(500);
const FLUSH_READS_EVERY: Duration = Duration::from_secs(10);

/// Keeps the catalog fresh (so allocations rarely refresh it themselves), writes read counts,
/// and collects garbage every [`S3Options::sweep_every`].
pub(crate) fn start_housekeeper(inner: Weak<Inner>) -> Housekeeper {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let theirs = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("aetherflow-s3-housekeeper".into())
        .spawn(move || {
            let (mut flushed, mut swept) = (Instant::now(), Instant::now());
            loop {
                let stopped = theirs.0.lock().expect("housekeeper lock");
                let (stopped, _) = theirs
                    .1
                    .wait_timeout_while(stopped, TICK, |s| !*s)
                    .expect("housekeeper lock");
                if *stopped {
                    return;
                }
                drop(stopped);
                let Some(inner) = inner.upgrade() else { return };
                // A little ahead of the allocations' own deadline, so they rarely meet it.
                let early = inner.options.refresh_every.mul_f64(0.8);
                if let Err(e) = inner.refresh_in_passing(early) {
                    tracing::warn!("refreshing the view of the bucket: {e}");
                }
                if flushed.elapsed() >= FLUSH_READS_EVERY {
                    flushed = Instant::now();
                    if let Err(e) = inner.flush_reads() {
                        tracing::warn!("writing read counts (kept for the next try): {e}");
                    }
                }
                if inner
                    .options
                    .sweep_every
                    .is_some_and(|every| swept.elapsed() >= every)
                {
                    match inner.sweep() {
                        Ok(r) => tracing::debug!(?r, "sweep done"),
                        Err(e) => tracing::warn!("sweep aborted: {e}"),
                    }
                    swept = Instant::now();
                }
            }
        })
        .expect("spawning the housekeeper thread");
    (stop, handle)
}
