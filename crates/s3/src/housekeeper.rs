//! The background thread of a store: keeps the view fresh, renews the holds on volumes it
//! writes, writes read counts, collects garbage. Each of those runs on its own: one that fails (or panics, on a bug) is logged and
//! tried again at its next turn, and never stops the others or the thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::Parts;
use crate::sync::lock;

/// How often the housekeeper wakes, and how often read counts are written.
const TICK: Duration = Duration::from_millis(500);
const FLUSH_READS_EVERY: Duration = Duration::from_secs(10);

/// The background thread: a stop flag it waits on, and its handle.
#[derive(Debug)]
pub(crate) struct Housekeeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

impl Housekeeper {
    /// Stops the thread and waits for it.
    pub fn stop(self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        let _ = self.handle.join();
    }
}

/// Runs one duty, turning a failure or a panic into a log line.
fn duty(name: &str, work: impl FnOnce() -> aetherflow_store::Result<()>) {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{name}: {e}"),
        Err(_) => tracing::error!("{name} panicked (a bug); it runs again at its next turn"),
    }
}

/// Keeps the view fresh (so allocations rarely refresh it themselves), writes read counts,
/// and collects garbage every [`crate::S3Options::sweep_every`].
pub(crate) fn start_housekeeper(parts: Weak<Parts>) -> Housekeeper {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let theirs = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("aetherflow-s3-housekeeper".into())
        .spawn(move || {
            let (mut flushed, mut swept, mut logged, mut snapshot) = (
                Instant::now(),
                Instant::now(),
                Instant::now(),
                Instant::now(),
            );
            loop {
                let stopped = lock(&theirs.0);
                let (stopped, _) = theirs
                    .1
                    .wait_timeout_while(stopped, TICK, |s| !*s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *stopped {
                    return;
                }
                drop(stopped);
                let Some(parts) = parts.upgrade() else { return };
                // A little ahead of the allocations' own deadline, so they rarely meet it.
                let early = parts.options.refresh_every.mul_f64(0.8);
                duty("refreshing the view of the bucket", || {
                    parts.view.refresh_in_passing(early)
                });
                if parts.options.read_only {
                    continue;
                }
                if logged.elapsed() >= parts.options.log_every {
                    logged = Instant::now();
                    duty("appending to the log (kept for the next try)", || {
                        parts.log.flush()
                    });
                }
                duty("renewing the holds on volumes written here", || {
                    parts.leases.renew_all()
                });
                if flushed.elapsed() >= FLUSH_READS_EVERY {
                    flushed = Instant::now();
                    duty("writing read counts (kept for the next try)", || {
                        parts.reads.flush()
                    });
                }
                if parts
                    .options
                    .snapshot_every
                    .is_some_and(|every| snapshot.elapsed() >= every)
                {
                    duty("writing a snapshot of the log", || {
                        parts
                            .write_snapshot()
                            .map(|r| tracing::debug!(?r, "snapshot of the log"))
                    });
                    duty("deleting the log behind a snapshot", || {
                        parts.trim_log().map(|r| tracing::debug!(?r, "log trimmed"))
                    });
                    snapshot = Instant::now();
                }
                if parts
                    .options
                    .sweep_every
                    .is_some_and(|every| swept.elapsed() >= every)
                {
                    duty("sweep aborted", || {
                        parts
                            .sweeper
                            .sweep()
                            .map(|r| tracing::debug!(?r, "sweep done"))
                    });
                    swept = Instant::now();
                }
            }
        })
        .expect("spawning the housekeeper thread");
    Housekeeper { stop, handle }
}
