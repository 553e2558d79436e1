//! Garbage collection that is safe while other servers allocate from the same bucket.
//!
//! No server knows what the others are about to commit, so nothing is deleted the moment it
//! looks unused. A pass works in two phases, a grace period apart:
//!
//! 1. **Condemn.** A pack older than the grace period whose chunks no block refers to gets a
//!    mark `gc/condemned/PACK`. A pack mostly dead is first compacted: its live chunks are
//!    copied into a new pack, then it is condemned.
//! 2. **Delete.** A pack condemned at least a grace period ago is deleted, unless a fresh
//!    listing of every block (started after the grace period ran out) finds a block that
//!    needs a chunk only it holds; then the mark is lifted instead.
//!
//! Commits keep their side of the bargain: before a manifest that relies on chunks found
//! earlier is written, the committing server looks at marks no older than a quarter of the
//! grace period, and copies any chunk whose only copies are condemned into a new pack (a
//! condemned pack is still there for a whole grace period). A commit that did not see a mark
//! therefore lands before the delete phase lists the blocks, and is seen by it. Inside one
//! process, epochs (`aetherflow_store::epoch`) give the same guarantee without waiting.
//!
//! A listing that fails aborts the pass: an error never passes for an empty bucket. A block
//! whose manifest cannot be read stops collection altogether, since what it refers to is
//! unknown.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherflow_store::epoch::EpochGate;
use aetherflow_store::{ChunkId, ChunkInfo, Error, Result};
use bytes::Bytes;

use crate::chunks::read_chunk;
use crate::keys;
use crate::log_record::Event;
use crate::log_writer::LogWriter;
use crate::pack;
use crate::packs::PackWriter;
use crate::remote::Remote;
use crate::store::S3Options;
use crate::sync::lock;
use crate::view::View;
use crate::volume_objects::{self, LayerId};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Packs marked for deletion.
    pub condemned: u64,
    /// Of those, packs whose live chunks were first copied out.
    pub compacted: u64,
    /// Packs deleted.
    pub deleted: u64,
    pub bytes_deleted: u64,
    /// Condemned packs found still needed, and kept.
    pub pardoned: u64,
    /// Volume layers no volume refers to, marked for deletion.
    pub layers_condemned: u64,
    /// Layers deleted (their deltas).
    pub layers_deleted: u64,
}

/// What phase 1 decided for one pack.
enum Verdict {
    Dead,
    Compact(Vec<(u64, ChunkInfo)>),
}

/// Garbage collection for one store; see the module documentation.
#[derive(Debug)]
pub(crate) struct Sweeper {
    remote: Arc<Remote>,
    view: Arc<View>,
    packs: Arc<PackWriter>,
    gate: Arc<EpochGate>,
    log: Arc<LogWriter>,
    options: S3Options,
    /// One pass at a time in this process. Held across requests: no commit or read takes it.
    running: Mutex<()>,
    /// The catalog's count of released chunks when the last complete pass began.
    swept_at: Mutex<Option<u64>>,
}

impl Sweeper {
    pub fn new(
        remote: Arc<Remote>,
        view: Arc<View>,
        packs: Arc<PackWriter>,
        gate: Arc<EpochGate>,
        log: Arc<LogWriter>,
        options: S3Options,
    ) -> Sweeper {
        Sweeper {
            remote,
            view,
            packs,
            gate,
            log,
            options,
            running: Mutex::default(),
            swept_at: Mutex::default(),
        }
    }

    /// A pass if some chunk lost its last reference since the last one.
    pub fn sweep_if_released(&self) -> Result<()> {
        let released = self.view.read(|c| c.released());
        if *lock(&self.swept_at) == Some(released) {
            return Ok(());
        }
        self.sweep().map(|_| ())
    }

    pub fn sweep(&self) -> Result<SweepReport> {
        let _one = lock(&self.running);
        let released = self.view.read(|c| c.released());
        // The clock is read before the listings, so a listing used to delete always began
        // after the grace period of what it deletes ran out.
        let now = if self.options.grace.is_zero() {
            None
        } else {
            Some(self.bucket_now()?)
        };
        self.view.refresh_if_stale(Duration::ZERO)?;
        if self.view.behind() {
            return Err(Error::Unavailable(
                "this server is building its catalog again from a snapshot of the log;                  nothing is collected until it has caught up"
                    .into(),
            ));
        }
        if let Some((key, why)) = self.view.damaged_records().into_iter().next() {
            return Err(Error::Corrupt(format!(
                "the log record {key} cannot be read ({why}): the blocks it holds are unknown, \
                 so nothing is collected until it is removed from the bucket (`check` names \
                 every such record)"
            )));
        }
        let mut report = SweepReport::default();
        // Layers first: what a deleted layer held may leave packs dead in this same pass.
        let damaged = self.view.read(|c| c.damaged_volumes().count());
        if damaged == 0 {
            self.collect_layers(now, &mut report)?;
        } else {
            tracing::warn!("{damaged} volume heads cannot be read; no volume layer is collected until they are repaired or deleted");
        }
        self.condemn_garbage(now, &mut report)?;
        self.delete_condemned(now, &mut report)?;
        *lock(&self.swept_at) = Some(released);
        Ok(report)
    }

    /// Whether something the bucket stamped `at_ms` is a grace period old at `now` (with a
    /// second of slack for clocks that keep whole seconds). Without a grace period, always.
    fn past_grace(&self, at_ms: Option<i64>, now: Option<i64>) -> bool {
        let Some(now) = now else { return true };
        let grace = self.options.grace.as_millis() as i64;
        at_ms.is_some_and(|at| at + grace + 1000 <= now)
    }

    /// The bucket's clock: the modification time of an object written now.
    fn bucket_now(&self) -> Result<i64> {
        self.remote.bucket_now(self.packs.writer_id())
    }

    fn condemn_garbage(&self, now: Option<i64>, report: &mut SweepReport) -> Result<()> {
        let verdicts = self.view.read(|catalog| {
            let mut verdicts = Vec::new();
            for name in catalog.pack_names() {
                let p = catalog.pack(&name).expect("listed");
                if p.condemned.is_some()
                    || p.sealed.is_some_and(|s| !self.gate.is_settled(s))
                    || !self.past_grace(p.modified_ms, now)
                {
                    continue;
                }
                let mut seen = HashSet::new();
                let live: Vec<(u64, ChunkInfo)> = p
                    .chunks
                    .iter()
                    .filter(|(_, i)| {
                        catalog.is_live(&i.id)
                            && catalog.keeper(&i.id).as_deref() == Some(&*name)
                            && seen.insert(i.id)
                    })
                    .copied()
                    .collect();
                let live_bytes: u64 = live.iter().map(|(_, i)| pack::record_len(i)).sum();
                if live.is_empty() {
                    verdicts.push((name, Verdict::Dead));
                } else if (live_bytes as f64) < self.options.compact_below * p.size as f64 {
                    verdicts.push((name, Verdict::Compact(live)));
                }
            }
            verdicts
        });
        for (name, verdict) in verdicts {
            if let Verdict::Compact(live) = verdict {
                if !self.copy_out(&name, &live)? {
                    continue;
                }
                report.compacted += 1;
            }
            self.condemn(&name)?;
            report.condemned += 1;
        }
        Ok(())
    }

    /// Copies a pack's live chunks into a new pack; `false` (and nothing copied) if the pack
    /// is gone or one of them fails its check, so that a damaged chunk is never dropped.
    fn copy_out(&self, name: &str, live: &[(u64, ChunkInfo)]) -> Result<bool> {
        let bytes = match self.remote.get(&keys::pack(name)) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut copies = Vec::with_capacity(live.len());
        for (offset, info) in live {
            // Lengths come from the pack's index and the object from the bucket: either may
            // be damaged, so the record is cut out of what is really there.
            let record = pack::record_at(&bytes, *offset, info);
            match pack::check_record(name, *offset, record, info) {
                Ok(payload) => copies.push((*info, payload)),
                Err(e) => {
                    tracing::error!("not compacting pack {name}: {e}");
                    return Ok(false);
                }
            }
        }
        self.packs.write_now(&copies)?;
        Ok(true)
    }

    /// Marks a pack condemned: the mark goes to the bucket first, then into this server's view
    /// under the epoch gate (no request is made under the gate). Allocations that found the
    /// pack's chunks before the view changed are older than the stamp, and the pack outlives
    /// them.
    fn condemn(&self, name: &str) -> Result<()> {
        self.remote
            .put(&keys::condemned(name), Bytes::new(), false)?;
        self.gate
            .record(|stamp| self.view.change(|c| c.condemn(name, None, Some(stamp))));
        Ok(())
    }

    fn delete_condemned(&self, now: Option<i64>, report: &mut SweepReport) -> Result<()> {
        let due: Vec<Arc<str>> = self.view.read(|catalog| {
            catalog
                .pack_names()
                .into_iter()
                .filter(|name| {
                    let c = catalog.pack(name).and_then(|p| p.condemned);
                    c.is_some_and(|c| {
                        c.stamp.is_none_or(|s| self.gate.is_settled(s))
                            && self.past_grace(c.at_ms, now)
                    })
                })
                .collect()
        });
        for name in due {
            let state = self.view.read(|catalog| {
                // Another server's sweep may have deleted it since (a refresh forgot it).
                let p = catalog.pack(&name)?;
                let needed = p
                    .chunks
                    .iter()
                    .any(|(_, i)| catalog.is_live(&i.id) && catalog.usable_home(&i.id).is_none());
                Some((needed, p.size))
            });
            let Some((needed, size)) = state else {
                continue;
            };
            if needed {
                tracing::info!("pack {name} is needed after all; its condemnation is lifted");
                self.remote.delete(&keys::condemned(&name))?;
                self.view.change(|c| c.pardon(&name));
                report.pardoned += 1;
                continue;
            }
            // The log says so first: a server that reads the record no longer reads from
            // the pack; one that has not read it yet finds the pack gone and waits for it.
            self.view.note_pack_deleted(&name);
            self.log
                .commit(Event::PackDeleted {
                    name: name.to_string(),
                })
                .1?;
            self.remote.delete(&keys::pack(&name))?;
            self.remote.delete(&keys::condemned(&name))?;
            self.view.change(|c| c.remove_pack(&name));
            report.deleted += 1;
            report.bytes_deleted += size;
        }
        Ok(())
    }

    /// Volume layers no head names: condemned once every delta is a grace period old, deleted
    /// a grace period after that unless a head names them again (then pardoned). A layer with
    /// no delta holds nothing in the bucket and is simply forgotten.
    fn collect_layers(&self, now: Option<i64>, report: &mut SweepReport) -> Result<()> {
        let orphans: Vec<(LayerId, bool, bool, Option<i64>)> = self.view.read(|c| {
            c.orphan_layers()
                .into_iter()
                .filter_map(|id| {
                    let l = c.layer(id)?;
                    Some((
                        id,
                        l.delta_seqs().is_empty(),
                        l.condemned().is_some(),
                        l.modified_ms(),
                    ))
                })
                .collect()
        });
        for (layer, empty, condemned, modified) in orphans {
            if empty {
                self.view.change(|c| c.remove_layer(layer));
            } else if !condemned && self.past_grace(modified, now) {
                self.remote.put(
                    &volume_objects::condemned_layer_key(layer),
                    Bytes::new(),
                    false,
                )?;
                self.gate.record(|stamp| {
                    self.view
                        .change(|c| c.condemn_layer(layer, None, Some(stamp)))
                });
                report.layers_condemned += 1;
            }
        }
        let due: Vec<LayerId> = self.view.read(|c| {
            c.layer_ids()
                .into_iter()
                .filter(|id| {
                    c.layer(*id).and_then(|l| l.condemned()).is_some_and(|m| {
                        m.stamp.is_none_or(|s| self.gate.is_settled(s))
                            && self.past_grace(m.at_ms, now)
                    })
                })
                .collect()
        });
        for layer in due {
            let named = self.view.read(|c| !c.orphan_layers().contains(&layer));
            if named {
                tracing::info!("volume layer {layer:032x} is named by a volume after all; kept");
                self.remote
                    .delete(&volume_objects::condemned_layer_key(layer))?;
                self.view.change(|c| c.pardon_layer(layer));
                continue;
            }
            let seqs = self
                .view
                .read(|c| c.layer(layer).map(|l| l.delta_seqs()).unwrap_or_default());
            // The log says so first, as for packs.
            self.view.note_layer_deleted(layer);
            self.log.commit(Event::LayerDeleted { layer }).1?;
            for seq in seqs {
                self.remote.delete(&volume_objects::delta_key(layer, seq))?;
            }
            self.remote
                .delete(&volume_objects::condemned_layer_key(layer))?;
            self.view.change(|c| c.remove_layer(layer));
            report.layers_deleted += 1;
        }
        Ok(())
    }

    /// Before a commit: copies every chunk it names whose only copies are condemned into a new
    /// pack, so that the block or volume never depends on a pack about to go.
    pub fn rescue_chunks(&self, chunks: impl Iterator<Item = ChunkId>) -> Result<()> {
        let missing: Vec<ChunkId> = self.view.read(|catalog| {
            let mut seen = HashSet::new();
            chunks
                .filter(|c| seen.insert(*c) && catalog.usable_home(c).is_none())
                .collect()
        });
        if missing.is_empty() {
            return Ok(());
        }
        let mut copies = Vec::with_capacity(missing.len());
        for c in missing {
            let got = read_chunk(&self.remote, &self.view, &c).map_err(|e| match e {
                Error::Corrupt(_) | Error::NotFound(_) => Error::Unavailable(format!(
                    "chunk {c:?} was collected while this allocation ran; allocate again ({e})"
                )),
                other => other,
            })?;
            copies.push((got.info, got.payload));
        }
        self.packs.write_now(&copies)
    }
}
