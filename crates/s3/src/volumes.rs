//! Volumes on a shared bucket: one server at a time writes a volume, holding its lease; any
//! server reads its snapshots.
//!
//! **Leases.** A writable volume's head names the server that writes it and until when (in the
//! bucket's clock). A server takes the lease with a conditional write of the head (If-Match on
//! the version it read), so two servers cannot both take it; it renews the lease a third of the
//! way through, and releases it when the volume closes. Another server's live lease refuses the
//! volume ([`Error::Held`]). A lease that ran out (its server died or lost the bucket) may be
//! taken over: the taker seals the old top layer at what the bucket holds of it and writes
//! above it, so that a late delta of the old writer is never read.
//!
//! **Fencing the writer itself.** A server acknowledges a commit only while its lease is valid
//! by its own clock, with a margin: past it (renewals failing), commits fail and the client sees
//! an I/O error, never an acknowledged write another server may not see.
//!
//! **Commits.** Each commit is one delta object, created (never overwritten) under the next
//! sequence number of the volume's top layer, after the packs holding its new chunks are in
//! the bucket: a delta never names a chunk that is not there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aetherflow_store::{Error, MapEntry, Result, VolumeRecord, VolumeUsage, What};
use bytes::Bytes;

use crate::log_record::Event;
use crate::log_writer::LogWriter;
use crate::remote::Remote;
use crate::sync::lock;
use crate::view::View;
use crate::volume_objects::{
    delta_key, new_layer, volume_key, ChainLink, Delta, Head, LayerId, Lease,
};

/// A lease this server holds.
#[derive(Debug, Clone)]
struct Held {
    head: Head,
    etag: String,
    /// Commits are acknowledged until then (the lease's end by this server's clock, less a
    /// margin for clocks and requests in flight).
    deadline: Instant,
    /// The next sequence number of the top layer.
    next_seq: u64,
    /// Another server changed the head: this one no longer writes the volume.
    lost: bool,
}

/// The volumes this server writes, and how it takes, renews and gives back their leases.
#[derive(Debug)]
pub(crate) struct Leases {
    remote: Arc<Remote>,
    view: Arc<View>,
    log: Arc<LogWriter>,
    writer_id: String,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
    /// The bucket's clock minus this server's, learned from an object written now.
    skew_ms: Mutex<Option<i64>>,
}

/// The margin a writer keeps before its lease ends.
fn margin(ttl: Duration) -> Duration {
    ttl / 3
}

fn local_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn held_elsewhere(name: &str, lease: &Lease, now_ms: i64) -> Error {
    Error::Held(format!(
        "volume {name} is open for writing on another server (writer {}), whose hold lasts \
         another {} s unless renewed: close it there, or serve its snapshots instead",
        lease.owner,
        ((lease.expires_ms - now_ms).max(0) + 999) / 1000
    ))
}

impl Leases {
    pub fn new(
        remote: Arc<Remote>,
        view: Arc<View>,
        log: Arc<LogWriter>,
        writer_id: String,
        ttl: Duration,
    ) -> Leases {
        Leases {
            remote,
            view,
            log,
            writer_id,
            ttl,
            held: Mutex::default(),
            skew_ms: Mutex::default(),
        }
    }

    /// The bucket's clock now, by this server's clock and the skew measured once.
    fn bucket_now(&self) -> Result<i64> {
        let mut skew = lock(&self.skew_ms);
        if skew.is_none() {
            let before = local_ms();
            let bucket = self.remote.bucket_now(&self.writer_id)?;
            *skew = Some(bucket - (before + local_ms()) / 2);
        }
        Ok(local_ms() + skew.expect("measured"))
    }

    /// The head of a volume as the bucket has it now, with its ETag.
    fn fetch(&self, name: &str) -> Result<(Head, String, u64)> {
        let (bytes, etag) = match self.remote.get_with_etag(&volume_key(name)) {
            Err(Error::NotFound(_)) => {
                self.view.change(|c| c.remove_volume(name));
                return Err(Error::NotFound(What::Volume(name.to_string())));
            }
            other => other?,
        };
        let head = Head::decode(name, &bytes)?;
        let etag = etag.ok_or_else(|| {
            Error::Unavailable("the object store gives no ETags: volumes need them".into())
        })?;
        self.view.change(|c| {
            c.put_volume(
                name,
                head.clone(),
                Some(etag.clone()),
                None,
                bytes.len() as u64,
            )
        });
        Ok((head, etag, bytes.len() as u64))
    }

    /// Appends `event` to the log, waiting for its record. If that fails, the event goes again
    /// with the next record (and so before any later commit of this server is acknowledged),
    /// and the error says so.
    fn tell(&self, event: Event) -> Result<()> {
        match self.log.commit(event.clone()) {
            (_, Ok(())) => Ok(()),
            (_, Err(e)) => {
                self.log.note(event);
                Err(Error::Unavailable(format!(
                    "{e}; other servers learn of it with this server's next record"
                )))
            }
        }
    }

    /// Writes a new version of a head over the one whose ETag is `etag`; `tell` logs it for
    /// other servers (a change of the lease alone is not: a server about to write reads the
    /// head fresh anyway). The head is replaced even if the log cannot say so yet: it does
    /// with the next record, which any later commit of this server waits for.
    fn replace(&self, name: &str, head: &Head, etag: &str, tell: bool) -> Result<String> {
        let body = head.encode();
        let len = body.len() as u64;
        let new = match self
            .remote
            .put_if_match(&volume_key(name), Bytes::from(body), etag)?
        {
            Some(e) => e,
            None => self.fetch(name)?.1,
        };
        self.view
            .change(|c| c.put_volume(name, head.clone(), Some(new.clone()), None, len));
        if tell {
            if let Err(e) = self.tell(Event::HeadChanged { name: name.into() }) {
                tracing::warn!("volume {name}: {e}");
            }
        }
        Ok(new)
    }

    /// The sequence numbers the bucket holds of a layer, listed now.
    fn listed_seqs(&self, layer: LayerId) -> Result<Vec<u64>> {
        Ok(self
            .listed_deltas(layer)?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect())
    }

    /// The deltas (sequence number, size) the bucket holds of a layer, listed now, in order.
    fn listed_deltas(&self, layer: LayerId) -> Result<Vec<(u64, u64)>> {
        let listed = self.remote.list(&crate::volume_objects::layer_dir(layer))?;
        let mut seqs: Vec<(u64, u64)> = listed
            .iter()
            .filter_map(|l| Some((crate::volume_objects::parse_delta_key(&l.key)?, l.size)))
            .filter(|((l, _), _)| *l == layer)
            .map(|((_, s), size)| (s, size))
            .collect();
        seqs.sort_unstable();
        for l in &listed {
            if let Some((layer, seq)) = crate::volume_objects::parse_delta_key(&l.key) {
                self.view
                    .change(|c| c.note_delta(layer, seq, l.size, Some(l.modified_ms)));
            }
        }
        Ok(seqs)
    }

    /// The head of a volume, read now (and recorded in the catalog).
    pub fn head_now(&self, name: &str) -> Result<Head> {
        Ok(self.fetch(name)?.0)
    }

    /// Lists a layer's deltas now, into the catalog.
    pub fn list_layer(&self, layer: LayerId) -> Result<()> {
        self.listed_seqs(layer).map(|_| ())
    }

    /// Takes (or renews) the lease of a writable volume; a snapshot needs none.
    pub fn acquire(&self, name: &str) -> Result<()> {
        if let Some(h) = lock(&self.held).get(name) {
            if !h.lost {
                return Ok(());
            }
        }
        for _ in 0..4 {
            let (head, etag, _) = self.fetch(name)?;
            if head.record.read_only {
                return Ok(());
            }
            let now = self.bucket_now()?;
            let mut chain = head.chain.clone();
            match &head.lease {
                Some(l) if l.owner != self.writer_id && l.expires_ms > now => {
                    return Err(held_elsewhere(name, l, now));
                }
                Some(l) if l.owner != self.writer_id => {
                    // Taken over from a server whose lease ran out: its layer ends with what
                    // the bucket holds of it now.
                    let top = chain[0].layer;
                    let deltas = self.listed_deltas(top)?;
                    let count = deltas.last().map_or(0, |(s, _)| s + 1);
                    // The sealed layer holds what the bucket holds, which the log may not
                    // say yet (a writer that stopped between a delta and its record): it goes
                    // with the record of the new head, so every server builds the same layer.
                    for (seq, size) in deltas {
                        self.log.note(Event::DeltaAdded {
                            layer: top,
                            seq,
                            size,
                        });
                    }
                    tracing::warn!(
                        "volume {name}: taking over from writer {} (its hold ran out); its \
                         layer is sealed after {count} commits",
                        l.owner
                    );
                    chain[0].sealed = Some(count);
                    chain.insert(
                        0,
                        ChainLink {
                            layer: new_layer(),
                            sealed: None,
                        },
                    );
                }
                _ => {}
            }
            let next_seq = self
                .listed_seqs(chain[0].layer)?
                .last()
                .map_or(0, |s| s + 1);
            let started = Instant::now();
            let new_head = Head {
                lease: Some(Lease {
                    owner: self.writer_id.clone(),
                    expires_ms: now + self.ttl.as_millis() as i64,
                }),
                chain,
                ..head
            };
            match self.replace(name, &new_head, &etag, true) {
                Ok(etag) => {
                    lock(&self.held).insert(
                        name.to_string(),
                        Held {
                            head: new_head,
                            etag,
                            deadline: started + self.ttl - margin(self.ttl),
                            next_seq,
                            lost: false,
                        },
                    );
                    return Ok(());
                }
                Err(Error::AlreadyExists(_)) => continue, // the head changed meanwhile
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(format!(
            "volume {name}: its head kept changing while this server tried to open it"
        )))
    }

    /// Gives the lease back (the volume closed here).
    pub fn release(&self, name: &str) {
        let Some(h) = lock(&self.held).remove(name) else {
            return;
        };
        if h.lost {
            return;
        }
        let head = Head {
            lease: None,
            ..h.head
        };
        if let Err(e) = self.replace(name, &head, &h.etag, false) {
            tracing::warn!(
                "volume {name}: giving its hold back failed ({e}); it runs out by itself"
            );
        }
    }

    /// Renews every lease held (the housekeeper's duty, a third of the way through a lease).
    pub fn renew_all(&self) -> Result<()> {
        let names: Vec<String> = lock(&self.held)
            .iter()
            .filter(|(_, h)| !h.lost && h.deadline < Instant::now() + self.ttl / 3)
            .map(|(n, _)| n.clone())
            .collect();
        let mut failed = None;
        for name in names {
            if let Err(e) = self.renew(&name) {
                tracing::warn!("volume {name}: renewing its hold failed: {e}");
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn renew(&self, name: &str) -> Result<()> {
        let Some(h) = lock(&self.held).get(name).cloned() else {
            return Ok(());
        };
        let started = Instant::now();
        let now = self.bucket_now()?;
        let head = Head {
            lease: Some(Lease {
                owner: self.writer_id.clone(),
                expires_ms: now + self.ttl.as_millis() as i64,
            }),
            ..h.head.clone()
        };
        match self.replace(name, &head, &h.etag, false) {
            Ok(etag) => {
                if let Some(held) = lock(&self.held).get_mut(name) {
                    held.head = head;
                    held.etag = etag;
                    held.deadline = started + self.ttl - margin(self.ttl);
                }
                Ok(())
            }
            Err(Error::AlreadyExists(_)) => {
                tracing::error!(
                    "volume {name}: another server changed its head; this one stops writing it"
                );
                if let Some(held) = lock(&self.held).get_mut(name) {
                    held.lost = true;
                }
                Err(Error::Held(format!(
                    "volume {name} was taken over by another server"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The lease of a volume about to be written: valid now (renewed here if it is close to
    /// its end), or the error a client should see.
    fn writable(&self, name: &str) -> Result<Held> {
        let h = lock(&self.held).get(name).cloned();
        let h = match h {
            Some(h) => h,
            None => {
                self.acquire(name)?;
                lock(&self.held).get(name).cloned().ok_or_else(|| {
                    Error::Refused(aetherflow_store::volume::snapshot_refusal(name))
                })?
            }
        };
        if h.lost {
            return Err(Error::Held(format!(
                "volume {name} was taken over by another server: this one no longer writes it"
            )));
        }
        if h.deadline <= Instant::now() + margin(self.ttl) / 2 {
            self.renew(name)?;
            return lock(&self.held)
                .get(name)
                .cloned()
                .ok_or_else(|| Error::Held(format!("volume {name} is no longer held here")));
        }
        Ok(h)
    }

    /// Commits one delta to a writable volume's top layer (the chunks it names are in the
    /// bucket already). `cleared` ranges go first, then `rows`.
    pub fn commit(
        &self,
        name: &str,
        cleared: Vec<(u64, u64)>,
        rows: Vec<(u64, MapEntry)>,
    ) -> Result<()> {
        let h = self.writable(name)?;
        let record = &h.head.record;
        let chunks = record.chunks();
        if let Some((i, _)) = rows.iter().find(|(i, _)| *i >= chunks) {
            return Err(Error::Refused(format!(
                "chunk {i} is past the end of volume {name}"
            )));
        }
        let layer = h.head.chain[0].layer;
        let seq = {
            let mut held = lock(&self.held);
            let held = held.get_mut(name).expect("held");
            let seq = held.next_seq;
            held.next_seq += 1;
            seq
        };
        let delta = Delta {
            layer,
            seq,
            size: record.size,
            chunk_size: record.chunk_size,
            cleared,
            rows,
        };
        let body = delta.encode();
        let len = body.len() as u64;
        match self
            .remote
            .create(&delta_key(layer, seq), Bytes::from(body))
        {
            Err(Error::AlreadyExists(_)) => {
                if let Some(held) = lock(&self.held).get_mut(name) {
                    held.lost = true;
                }
                return Err(Error::Held(format!(
                    "volume {name}: another server wrote its layer; this one no longer writes it"
                )));
            }
            other => {
                other?;
            }
        }
        if Instant::now() >= h.deadline {
            // Written, but after this server's hold may have passed to another: the client is
            // told it failed (it did not, or another server fenced it off). The log says it
            // all the same: a server that took over seals the layer after it if it came
            // first, and every server must then build the layer alike (this one too).
            let written = self.bucket_now().ok();
            self.view.change(|c| {
                c.note_delta(layer, seq, len, written);
                c.apply_delta(&delta);
            });
            self.log.note(Event::DeltaAdded {
                layer,
                seq,
                size: len,
            });
            return Err(Error::Unavailable(format!(
                "volume {name}: the commit took longer than this server's hold on the volume"
            )));
        }
        // No older than now: what the collection of a layer no volume names goes by.
        let written = self.bucket_now().ok();
        self.view.change(|c| {
            c.note_delta(layer, seq, len, written);
            c.apply_delta(&delta);
        });
        self.tell(Event::DeltaAdded {
            layer,
            seq,
            size: len,
        })
        .map_err(|e| Error::Unavailable(format!("volume {name}: a commit is not logged: {e}")))
    }

    /// Clears `chunks` of a writable volume: the top layer's rows in the range go, and hole rows
    /// hide what lower layers hold there.
    pub fn clear(&self, name: &str, chunks: std::ops::Range<u64>) -> Result<()> {
        let h = self.writable(name)?;
        let end = chunks.end.min(h.head.record.chunks());
        if chunks.start >= end {
            return Ok(());
        }
        let below: Vec<LayerId> = h.head.chain[1..].iter().map(|l| l.layer).collect();
        let holes: Vec<(u64, MapEntry)> = self
            .view
            .read(|c| c.rows_below(&below, chunks.start..end))
            .into_iter()
            .map(|i| (i, MapEntry::Hole))
            .collect();
        self.commit(name, vec![(chunks.start, end)], holes)
    }

    /// Creates a volume with nothing written.
    pub fn create(&self, record: &VolumeRecord) -> Result<()> {
        aetherflow_store::volume::validate_name(&record.name).map_err(Error::Refused)?;
        let head = Head {
            record: VolumeRecord {
                written: 0,
                zeroed: 0,
                ..record.clone()
            },
            chain: vec![ChainLink {
                layer: new_layer(),
                sealed: None,
            }],
            lease: None,
        };
        self.create_head(&record.name, &head)
    }

    fn create_head(&self, name: &str, head: &Head) -> Result<()> {
        let body = head.encode();
        let len = body.len() as u64;
        let etag = match self.remote.create(&volume_key(name), Bytes::from(body)) {
            Err(Error::AlreadyExists(_)) => {
                return Err(Error::AlreadyExists(What::Volume(name.to_string())))
            }
            other => other?,
        };
        self.view
            .change(|c| c.put_volume(name, head.clone(), etag, None, len));
        self.tell(Event::HeadChanged { name: name.into() })
            .map_err(|e| Error::Unavailable(format!("volume {name} was created: {e}")))
    }

    /// A snapshot of `source` (held here, or taken for the moment), or with `writable` a clone
    /// of a snapshot. `check_layers` refuses layers condemned for deletion.
    pub fn snapshot(
        &self,
        source: &str,
        name: &str,
        writable: bool,
        created: u64,
        check_layers: &dyn Fn(&[LayerId]) -> Result<()>,
    ) -> Result<VolumeRecord> {
        aetherflow_store::volume::validate_name(name).map_err(Error::Refused)?;
        match self.remote.head(&volume_key(name)) {
            Ok(_) => return Err(Error::AlreadyExists(What::Volume(name.to_string()))),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let (src, _, _) = self.fetch(source)?;
        if writable && !src.record.read_only {
            return Err(Error::Refused(format!(
                "volume {source} is not a snapshot: snapshot it first, then clone the snapshot"
            )));
        }
        let record = VolumeRecord {
            name: name.to_string(),
            read_only: !writable,
            origin: Some(source.to_string()),
            created,
            ..src.record.clone()
        };
        let chain = if src.record.read_only {
            // A snapshot of a snapshot shares its layers; a clone writes above them.
            let layers: Vec<LayerId> = src.chain.iter().map(|l| l.layer).collect();
            check_layers(&layers)?;
            let mut chain = src.chain.clone();
            if writable {
                chain.insert(
                    0,
                    ChainLink {
                        layer: new_layer(),
                        sealed: None,
                    },
                );
            }
            chain
        } else {
            self.freeze(source)?
        };
        let head = Head {
            record: record.clone(),
            chain,
            lease: None,
        };
        self.create_head(name, &head)?;
        Ok(record)
    }

    /// Freezes a writable volume's top layer (sealed at what was committed) and gives it a new
    /// empty one; returns the frozen chain, for a snapshot.
    fn freeze(&self, name: &str) -> Result<Vec<ChainLink>> {
        let was_held = lock(&self.held).contains_key(name);
        let h = self.writable(name)?;
        let mut frozen = h.head.chain.clone();
        frozen[0].sealed = Some(h.next_seq);
        let mut chain = frozen.clone();
        chain.insert(
            0,
            ChainLink {
                layer: new_layer(),
                sealed: None,
            },
        );
        let head = Head {
            chain,
            ..h.head.clone()
        };
        let result = self.replace(name, &head, &h.etag, true);
        match result {
            Ok(etag) => {
                if let Some(held) = lock(&self.held).get_mut(name) {
                    held.head = head;
                    held.etag = etag;
                    held.next_seq = 0;
                }
            }
            Err(Error::AlreadyExists(_)) => {
                if let Some(held) = lock(&self.held).get_mut(name) {
                    held.lost = true;
                }
                return Err(Error::Held(format!(
                    "volume {name} was changed by another server while it was snapshotted"
                )));
            }
            Err(e) => return Err(e),
        }
        if !was_held {
            self.release(name);
        }
        Ok(frozen)
    }

    /// Deletes a volume: refused while another server holds it.
    pub fn delete(&self, name: &str) -> Result<()> {
        let (head, _, _) = self.fetch(name)?;
        if let Some(l) = &head.lease {
            if l.owner != self.writer_id {
                let now = self.bucket_now()?;
                if l.expires_ms > now {
                    return Err(held_elsewhere(name, l, now));
                }
            }
        }
        lock(&self.held).remove(name);
        self.remote.delete(&volume_key(name))?;
        self.view.change(|c| c.remove_volume(name));
        self.tell(Event::HeadChanged { name: name.into() })
            .map_err(|e| Error::Unavailable(format!("volume {name} was deleted: {e}")))
    }
}

/// A volume's record with its figures, from the catalog.
pub(crate) fn record_of(view: &View, name: &str) -> Option<VolumeRecord> {
    view.change(|c| {
        let (written, zeroed) = c.volume_figures(name)?;
        let v = c.volume(name)?;
        Some(VolumeRecord {
            written,
            zeroed,
            ..v.head.record.clone()
        })
    })
}

pub(crate) fn usage_of(view: &View, name: &str) -> Option<VolumeUsage> {
    view.read(|c| c.volume_usage(name))
}
