//! Locking that outlives a panic, and work that runs once for all who want it at the same time.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aetherflow_store::Result;

/// Locks `m`, whether or not a thread panicked while holding it. Every value behind this
/// crate's locks stays consistent between statements that can panic, or is a cache the next
/// refresh rebuilds; a panic in one background pass must not stop every later one.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Flight {
    /// When the last run that succeeded began.
    fresh_since: Option<Instant>,
    running: bool,
}

/// A piece of work (a listing) that is run at most once at a time, without any lock held while
/// it runs: callers that find it running wait for it to end, then decide again.
#[derive(Debug, Default)]
pub(crate) struct SingleFlight {
    state: Mutex<Flight>,
    ended: Condvar,
}

/// Marks the flight as ended when dropped, even by a panic, so that no waiter waits for ever.
struct Landing<'a>(&'a SingleFlight, Instant, bool);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.running = false;
        if self.2 {
            state.fresh_since = Some(self.1);
        }
        self.0.ended.notify_all();
    }
}

impl SingleFlight {
    /// Runs `work` unless a run that began within `max_age` succeeded. If one is running,
    /// waits for it to end first.
    pub fn run_if_stale(&self, max_age: Duration, work: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut state = lock(&self.state);
        loop {
            if state.fresh_since.is_some_and(|t| t.elapsed() < max_age) {
                return Ok(());
            }
            if !state.running {
                break;
            }
            state = self
                .ended
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.running = true;
        drop(state);
        self.fly(work)
    }

    /// When the last successful run began.
    pub fn fresh_since(&self) -> Option<Instant> {
        lock(&self.state).fresh_since
    }

    /// Like [`SingleFlight::run_if_stale`], but returns at once if another run is under way.
    pub fn run_in_passing(
        &self,
        max_age: Duration,
        work: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut state = lock(&self.state);
        if state.running || state.fresh_since.is_some_and(|t| t.elapsed() < max_age) {
            return Ok(());
        }
        state.running = true;
        drop(state);
        self.fly(work)
    }

    fn fly(&self, work: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut landing = Landing(self, Instant::now(), false);
        let result = work();
        landing.2 = result.is_ok();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_share_one_run() {
        let flight = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (flight, runs) = (flight.clone(), runs.clone());
                s.spawn(move || {
                    flight
                        .run_if_stale(Duration::from_secs(60), || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(())
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_or_panicked_run_leaves_the_next_caller_to_run() {
        let flight = SingleFlight::default();
        let failed = flight.run_if_stale(Duration::from_secs(60), || {
            Err(aetherflow_store::Error::Unavailable("down".into()))
        });
        assert!(failed.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            flight.run_if_stale(Duration::from_secs(60), || panic!("a bug"))
        }));
        assert!(panicked.is_err());
        let mut ran = false;
        flight
            .run_if_stale(Duration::from_secs(60), || {
                ran = true;
                Ok(())
            })
            .unwrap();
        assert!(ran);
        flight
            .run_in_passing(Duration::from_secs(60), || panic!("fresh: not run"))
            .unwrap();
    }
}
