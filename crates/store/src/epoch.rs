//! Epochs: when garbage may really be deleted while allocations run concurrently.
//!
//! An allocation asks the store which chunks it already holds, writes the others, and commits a
//! manifest that refers to both. Between the question and the commit another thread may free the
//! last block that used one of those chunks. So a freed chunk is not deleted at once: it becomes a
//! *zombie* stamped with the epoch of its death, and is deleted only when every allocation that was
//! running at that epoch has finished. A commit that refers to a zombie revives it.
//!
//! The same rule protects sealed pack files: a pack sealed at epoch `e` is compacted or deleted
//! only when no allocation that might still commit chunks staged into it (one pinned at or before
//! `e`) is left.
//!
//! Each allocation holds a [`Pin`] from before its first question to after its commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The epoch counter and the set of running allocations.
#[derive(Debug, Default)]
pub struct EpochGate {
    current: AtomicU64,
    /// Start epoch → number of pins taken at that epoch still alive.
    pinned: Mutex<BTreeMap<u64, usize>>,
    /// Held from an event's stamp until it is visible and the epoch has moved on, so that no
    /// other event can move the epoch in between (which would leave the stamp too old).
    events: Mutex<()>,
}

impl EpochGate {
    /// A gate whose counter starts at `start` (above every stamp already on disk).
    pub fn starting_at(start: u64) -> Arc<EpochGate> {
        Arc::new(EpochGate {
            current: AtomicU64::new(start),
            pinned: Mutex::default(),
            events: Mutex::default(),
        })
    }

    /// Registers a running allocation until the pin is dropped.
    pub fn pin(self: &Arc<Self>) -> Pin {
        let mut pinned = self.pinned.lock().expect("epoch lock");
        let epoch = self.current.load(Ordering::SeqCst);
        *pinned.entry(epoch).or_default() += 1;
        Pin {
            gate: Arc::clone(self),
            epoch,
        }
    }

    /// Records an event (a death, a seal): `make_visible` receives the event's stamp and makes
    /// the event visible (commits it); then the epoch moves on. Pins taken before the move may
    /// have seen the state before the event, and count as older than it.
    pub fn record<T>(&self, make_visible: impl FnOnce(u64) -> T) -> T {
        let _events = self.events.lock().expect("epoch lock");
        let stamp = self.current.load(Ordering::SeqCst);
        let result = make_visible(stamp);
        let _pinned = self.pinned.lock().expect("epoch lock");
        self.current.fetch_add(1, Ordering::SeqCst);
        result
    }

    /// True when an event stamped `stamp` can no longer be observed by any running allocation.
    pub fn is_settled(&self, stamp: u64) -> bool {
        let pinned = self.pinned.lock().expect("epoch lock");
        match pinned.keys().next() {
            Some(&oldest) => oldest > stamp,
            None => true,
        }
    }
}

/// Proof that an allocation is running; see the module documentation.
#[derive(Debug)]
pub struct Pin {
    gate: Arc<EpochGate>,
    epoch: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pinned = self.gate.pinned.lock().expect("epoch lock");
        if let Some(n) = pinned.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                pinned.remove(&self.epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_settle_when_older_pins_end() {
        let gate = EpochGate::starting_at(5);
        assert!(gate.is_settled(5), "nothing running");
        let early = gate.pin();
        let death = gate.record(|stamp| stamp);
        let late = gate.pin();
        assert!(!gate.is_settled(death), "the early pin may have seen it");
        drop(early);
        assert!(gate.is_settled(death), "the late pin started after it");
        let death2 = gate.record(|stamp| stamp);
        assert!(!gate.is_settled(death2), "late pin still running");
        drop(late);
        assert!(gate.is_settled(death2));
    }
}
