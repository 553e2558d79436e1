//! Appending to the bucket's log (`docs/design.md`, "The log"): what this server committed is
//! queued here as events, at no cost to the commit, and written as one record about once a
//! second by the housekeeper ([`LogWriter::flush`]). A record that cannot be written, or whose
//! PUT returned too late for the writer rule, leaves its events queued for the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherflow_store::{Error, Result};
use bytes::Bytes;

use crate::log_record::{self, Event, LogRecord, MAX_EVENTS};
use crate::remote::Remote;
use crate::sync::lock;

/// How long a listing of the markers places records when there is no grace period (one server
/// alone on its bucket: no other server reads the log or advances its epochs).
const ALONE_PLACEMENT: Duration = Duration::from_secs(60);

/// The epoch a listing of the markers showed current, and when that listing began.
#[derive(Debug, Clone, Copy)]
struct Placement {
    epoch: u64,
    listed: Instant,
}

#[derive(Debug, Default)]
struct State {
    queue: Vec<Event>,
    next_seq: u64,
    placement: Option<Placement>,
}

/// This server's end of the log; see the module documentation.
#[derive(Debug)]
pub(crate) struct LogWriter {
    remote: Arc<Remote>,
    writer: String,
    /// Whether events are kept at all (`S3Options::log_every`).
    enabled: bool,
    /// How old the listing of markers that places a record may be (G/4)...
    place_within: Duration,
    /// ...and how soon after that listing began the record's PUT must have returned (G/2);
    /// `None` with no grace period, where this server is the bucket's one writer and reader.
    return_within: Option<Duration>,
    state: std::sync::Mutex<State>,
}

impl LogWriter {
    /// A writer for `writer` (the process's id); `grace` is the collection grace G. Disabled,
    /// it keeps nothing and writes nothing.
    pub fn new(remote: Arc<Remote>, writer: String, grace: Duration, enabled: bool) -> LogWriter {
        LogWriter {
            remote,
            writer,
            enabled,
            place_within: if grace.is_zero() {
                ALONE_PLACEMENT
            } else {
                grace / 4
            },
            return_within: (!grace.is_zero()).then_some(grace / 2),
            state: std::sync::Mutex::default(),
        }
    }

    /// Whether events are kept (a caller may skip building one otherwise).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Queues what a commit did; written with the next record.
    pub fn note(&self, event: Event) {
        if self.enabled {
            lock(&self.state).queue.push(event);
        }
    }

    /// Writes the queued events, [`MAX_EVENTS`] to a record. On a failure the events not
    /// written stay queued, ahead of newer ones, and the error is returned.
    pub fn flush(&self) -> Result<()> {
        loop {
            let (events, seq) = {
                let mut state = lock(&self.state);
                if state.queue.is_empty() {
                    return Ok(());
                }
                let n = state.queue.len().min(MAX_EVENTS);
                let seq = state.next_seq;
                state.next_seq += 1;
                (state.queue.drain(..n).collect::<Vec<_>>(), seq)
            };
            if let Err(e) = self.append(seq, &events) {
                let mut state = lock(&self.state);
                let newer = std::mem::replace(&mut state.queue, events);
                state.queue.extend(newer);
                return Err(e);
            }
        }
    }

    /// Writes one record of `events` under number `seq`, into the current epoch.
    fn append(&self, seq: u64, events: &[Event]) -> Result<()> {
        let placement = self.placement()?;
        let record = LogRecord {
            writer: self.writer.clone(),
            seq,
            epoch: placement.epoch,
            events: events.to_vec(),
        };
        let key = record.key();
        self.remote.put(&key, Bytes::from(record.encode()), true)?;
        if let Some(within) = self.return_within {
            let took = placement.listed.elapsed();
            if took > within {
                // Readers may ignore it once its epoch is settled: the events go again.
                return Err(Error::Unavailable(format!(
                    "{key} was written {took:?} after the listing that placed it (more than \
                     {within:?}); its events are written again"
                )));
            }
        }
        Ok(())
    }

    /// The highest epoch shown by a listing of the markers at most G/4 old (listing again if
    /// the last one is older). A bucket without a marker gets epoch 0's.
    fn placement(&self) -> Result<Placement> {
        if let Some(p) = lock(&self.state).placement {
            if p.listed.elapsed() <= self.place_within {
                return Ok(p);
            }
        }
        let known = lock(&self.state).placement.map(|p| p.epoch);
        let mut placement = self.list_markers(known)?;
        if placement.is_none() {
            match self
                .remote
                .create(&log_record::epoch_marker(0), Bytes::new())
            {
                Ok(_) | Err(Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
            placement = self.list_markers(known)?;
        }
        let placement = placement.ok_or_else(|| {
            Error::Unavailable("the log's first epoch marker was written but is not listed".into())
        })?;
        lock(&self.state).placement = Some(placement);
        Ok(placement)
    }

    /// The highest marker, listing from `known` on (markers below it are not read again).
    fn list_markers(&self, known: Option<u64>) -> Result<Option<Placement>> {
        let listed = Instant::now();
        let markers = match known {
            // The markers below the last one seen are not listed again.
            Some(e) if e > 0 => self
                .remote
                .list_after(log_record::EPOCHS, &log_record::epoch_marker(e - 1))?,
            _ => self.remote.list(log_record::EPOCHS)?,
        };
        Ok(markers
            .iter()
            .filter_map(|l| log_record::parse_epoch_marker(&l.key))
            .max()
            .map(|epoch| Placement { epoch, listed }))
    }
}
