//! Keeping the catalog in step with the bucket: listings of packs, blocks and condemnation
//! marks. A listing that fails fails the refresh; the catalog then keeps what it knew.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aetherflow_store::{BlockId, ChunkInfo, Error, Manifest, Result};
use bytes::Bytes;
use std::sync::Arc;

use crate::keys;
use crate::pack;
use crate::store::Inner;

impl Inner {
    /// Refreshes everything if the last full refresh is older than `max_age`.
    pub(crate) fn refresh_if_stale(&self, max_age: Duration) -> Result<()> {
        let mut fresh = self.fresh.lock().expect("freshness lock");
        self.refresh_holding(&mut fresh, max_age)
    }

    /// Like [`Inner::refresh_if_stale`], but returns at once if another thread is refreshing.
    pub(crate) fn refresh_in_passing(&self, max_age: Duration) -> Result<()> {
        match self.fresh.try_lock() {
            Ok(mut fresh) => self.refresh_holding(&mut fresh, max_age),
            Err(_) => Ok(()),
        }
    }

    /// The refresh itself, under the freshness lock (`fresh` is what it guards).
    fn refresh_holding(&self, fresh: &mut Option<Instant>, max_age: Duration) -> Result<()> {
        if fresh.is_some_and(|t| t.elapsed() < max_age) {
            return Ok(());
        }
        let started = Instant::now();
        self.refresh_all()?;
        *fresh = Some(started);
        Ok(())
    }

    /// Refreshes the condemnation marks if their view is older than `max_age`. It has a lock
    /// of its own: a commit never waits for a full refresh, only for one listing of marks.
    pub(crate) fn refresh_condemned_if_stale(&self, max_age: Duration) -> Result<()> {
        let mut fresh = self.marks_fresh.lock().expect("freshness lock");
        if fresh.is_some_and(|t| t.elapsed() < max_age) {
            return Ok(());
        }
        let started = Instant::now();
        self.refresh_condemned()?;
        *fresh = Some(started);
        Ok(())
    }

    /// Packs, then blocks, then marks: each listing complete or the refresh fails.
    pub(crate) fn refresh_all(&self) -> Result<()> {
        self.refresh_packs()?;
        self.refresh_blocks()?;
        self.refresh_condemned_if_stale(Duration::ZERO)
    }

    /// Learns new packs (one ranged GET of each one's index) and forgets deleted ones.
    pub(crate) fn refresh_packs(&self) -> Result<()> {
        let generation = self.catalog.lock().expect("catalog lock").begin_refresh();
        let listed = self.remote.list(keys::PACKS)?;
        let mut names = HashSet::new();
        let mut new = Vec::new();
        {
            let mut catalog = self.catalog.lock().expect("catalog lock");
            for l in &listed {
                let name = &l.key[keys::PACKS.len()..];
                names.insert(name);
                if !catalog.saw_pack(name, l.modified_ms) && !catalog.bad_packs.contains_key(name) {
                    new.push(l);
                }
            }
        }
        let tails = self.remote.get_many_tails(
            &new.iter().map(|l| l.key.clone()).collect::<Vec<_>>(),
            pack::TAIL_GUESS,
        );
        for (l, tail) in new.into_iter().zip(tails) {
            let name = &l.key[keys::PACKS.len()..];
            match tail.and_then(|tail| self.read_index(name, l.size, tail)) {
                Ok(entries) => self.catalog.lock().expect("catalog lock").add_pack(
                    name,
                    l.size,
                    Some(l.modified_ms),
                    entries,
                    None,
                ),
                Err(Error::Corrupt(why)) => {
                    tracing::error!("pack {name}: {why}");
                    self.catalog
                        .lock()
                        .expect("catalog lock")
                        .bad_packs
                        .insert(name.to_string(), why);
                }
                // Deleted between the listing and the read: the next listing forgets it.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.catalog
            .lock()
            .expect("catalog lock")
            .confirm_packs(&names, generation);
        Ok(())
    }

    /// A pack's entries, from its tail (`TAIL_GUESS` bytes of it, read already).
    fn read_index(
        &self,
        name: &str,
        size: u64,
        (mut tail, size_now): (Bytes, u64),
    ) -> Result<Vec<(u64, ChunkInfo)>> {
        let key = keys::pack(name);
        if size_now != size {
            return Err(Error::Corrupt(format!(
                "pack {name} changed size from {size} to {size_now} bytes"
            )));
        }
        let span = pack::index_span(name, size, &tail)?;
        if span > tail.len() as u64 {
            tail = self.remote.get_range(&key, size - span..size)?;
        }
        pack::parse_index(name, size, &tail)
    }

    /// Learns blocks other servers allocated (fetching their manifests, many at once) and
    /// forgets the ones they freed.
    pub(crate) fn refresh_blocks(&self) -> Result<()> {
        let generation = self.catalog.lock().expect("catalog lock").begin_refresh();
        let listed = self.remote.list(keys::BLOCKS)?;
        let mut ids = HashSet::new();
        let mut new = Vec::new();
        {
            let mut catalog = self.catalog.lock().expect("catalog lock");
            for l in &listed {
                let Ok(id) = l.key[keys::BLOCKS.len()..].parse::<BlockId>() else {
                    continue;
                };
                ids.insert(id);
                if !catalog.saw_block(id) {
                    new.push(id);
                }
            }
        }
        let keys: Vec<String> = new.iter().map(|id| keys::block(*id)).collect();
        let bodies = self.remote.get_many(&keys);
        for (id, body) in new.into_iter().zip(bodies) {
            let body = match body {
                Ok(b) => b,
                Err(Error::NotFound(_)) => continue, // freed since the listing
                Err(e) => return Err(e),
            };
            let mut catalog = self.catalog.lock().expect("catalog lock");
            match Manifest::decode(&body, &format_args!("block {id}")) {
                Ok(m) => {
                    catalog.add_block(id, Arc::new(m), body.len() as u64);
                }
                Err(e) => {
                    tracing::error!("block {id}: manifest unreadable: {e}");
                    catalog.damaged_blocks.insert(id, e.to_string());
                }
            }
        }
        self.catalog
            .lock()
            .expect("catalog lock")
            .confirm_blocks(&ids, generation);
        Ok(())
    }

    /// Learns which packs are condemned, and since when in the bucket's clock.
    pub(crate) fn refresh_condemned(&self) -> Result<()> {
        let generation = self.catalog.lock().expect("catalog lock").begin_refresh();
        let listed = self.remote.list(keys::CONDEMNED)?;
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let mut names = HashSet::new();
        for l in &listed {
            let name = &l.key[keys::CONDEMNED.len()..];
            names.insert(name);
            catalog.condemn(name, Some(l.modified_ms), None);
        }
        catalog.confirm_condemned(&names, generation);
        Ok(())
    }
}
