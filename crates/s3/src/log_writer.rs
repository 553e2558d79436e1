//! Appending to the bucket's log (`docs/design.md`, "The log"). The log is where blocks exist:
//! a commit ([`LogWriter::commit`]) returns once a record holding its events is in the bucket
//! within the writer rule. Commits that arrive while a record is being written share the next
//! one (group commit: one PUT for all of them, with no timer to tune). What is only news for
//! other servers (a pack uploaded, a volume head changed) is queued by [`LogWriter::note`] and
//! rides in the next record, or goes with the housekeeper's [`LogWriter::flush`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar};
use std::time::{Duration, Instant};

use aetherflow_store::{Error, Result};
use bytes::Bytes;

use crate::log_record::{self, Event, LogRecord, Origin, MAX_EVENTS};
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

/// Events queued together: a commit's (waiting under `ticket` for its record), or news.
#[derive(Debug)]
struct Entry {
    events: Vec<Event>,
    ticket: Option<u64>,
    /// When the listing of condemned marks the commit relied on began (see
    /// [`LogWriter::commit_all`]).
    marks_at: Option<Instant>,
    /// An object to delete once the events are in the log (see [`LogWriter::note_then_delete`]).
    then_delete: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Entry>,
    next_seq: u64,
    next_ticket: u64,
    placement: Option<Placement>,
    /// A record is being written (by one of the committing threads or the housekeeper).
    writing: bool,
    /// The news in the record being written.
    news_in_flight: Vec<Event>,
    /// The record each commit went in and how its write ended, until the commit takes it.
    outcomes: HashMap<u64, (u64, std::result::Result<(), String>)>,
}

/// This server's end of the log; see the module documentation.
#[derive(Debug)]
pub(crate) struct LogWriter {
    remote: Arc<Remote>,
    writer: Arc<str>,
    /// How old the listing of markers that places a record may be (G/4)...
    place_within: Duration,
    /// ...and how soon after that listing began the record's PUT must have returned (G/2);
    /// `None` with no grace period, where this server is the bucket's one writer and reader.
    return_within: Option<Duration>,
    /// The newest epoch this server's log reader has listed: a record is never placed below
    /// it, so a record lands in the epoch of what it depends on or a later one (a free after
    /// the block it frees, in reading order).
    seen_epoch: Arc<AtomicU64>,
    state: std::sync::Mutex<State>,
    /// Signalled when a record's write ends.
    written: Condvar,
}

impl LogWriter {
    /// A writer for `writer` (the process's id); `grace` is the collection grace G;
    /// `seen_epoch` is shared with the log reader.
    pub fn new(
        remote: Arc<Remote>,
        writer: String,
        grace: Duration,
        seen_epoch: Arc<AtomicU64>,
    ) -> LogWriter {
        LogWriter {
            remote,
            writer: Arc::from(writer),
            place_within: if grace.is_zero() {
                ALONE_PLACEMENT
            } else {
                grace / 4
            },
            return_within: (!grace.is_zero()).then_some(grace / 2),
            seen_epoch,
            state: std::sync::Mutex::default(),
            written: Condvar::new(),
        }
    }

    /// Queues news for other servers (not a commit: nothing waits for it); written with the
    /// next record.
    pub fn note(&self, event: Event) {
        self.queue_news(event, None);
    }

    /// [`LogWriter::note`], and once the record holding `event` is written, deletes object
    /// `key` (best effort): what only that event makes safe to delete.
    pub fn note_then_delete(&self, event: Event, key: String) {
        self.queue_news(event, Some(key));
    }

    /// This server's id, as its records name it.
    pub fn writer(&self) -> Arc<str> {
        Arc::clone(&self.writer)
    }

    /// The news not known to be in the log yet (queued, or in the record being written):
    /// what this server changed that its reader, which skips its own records, would not
    /// bring back to a catalog built again from the bucket.
    pub fn pending_news(&self) -> Vec<Event> {
        let state = lock(&self.state);
        let queued = state.queue.iter().filter(|e| e.ticket.is_none());
        state
            .news_in_flight
            .iter()
            .cloned()
            .chain(queued.flat_map(|e| e.events.clone()))
            .collect()
    }

    fn queue_news(&self, event: Event, then_delete: Option<String>) {
        lock(&self.state).queue.push_back(Entry {
            events: vec![event],
            ticket: None,
            marks_at: None,
            then_delete,
        });
    }

    /// Appends `event` to the log and returns once a record holding it is in the bucket
    /// within the writer rule, with that record (its origin) and the outcome. On an error the
    /// event may or may not be in the bucket (a PUT that returned too late, or whose answer
    /// was lost): the caller cancels what it must.
    pub fn commit(&self, event: Event) -> (Origin, Result<()>) {
        self.commit_all(vec![event], None)
    }

    /// [`LogWriter::commit`] for several events that go in one record (at most half of
    /// [`MAX_EVENTS`]). `marks_at`: when the listing of condemned marks began that the
    /// commits relied on (that no chunk they name is only in a condemned pack). The record is
    /// then placed by a listing of epochs begun at most G/2 after it, or not written at all:
    /// it returns within G/2 of its placement, so within G of that view of the marks, before
    /// any mark it did not see is G old (docs/design.md, "Garbage collection").
    pub fn commit_all(
        &self,
        events: Vec<Event>,
        marks_at: Option<Instant>,
    ) -> (Origin, Result<()>) {
        assert!(events.len() <= MAX_EVENTS / 2, "{} events", events.len());
        let mut state = lock(&self.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Entry {
            events,
            ticket: Some(ticket),
            marks_at,
            then_delete: None,
        });
        loop {
            if let Some((seq, outcome)) = state.outcomes.remove(&ticket) {
                let origin = Origin {
                    writer: Arc::clone(&self.writer),
                    seq,
                };
                return (origin, outcome.map_err(Error::Unavailable));
            }
            if state.writing {
                state = self.wait_written(state);
                continue;
            }
            drop(state);
            // Failures are the commits' to report; news that failed waits for the next.
            let _ = self.write_one();
            state = lock(&self.state);
        }
    }

    /// Writes what is queued (the housekeeper's call). On a failure the news not written stays
    /// queued, ahead of newer, and the error is returned.
    pub fn flush(&self) -> Result<()> {
        loop {
            let mut state = lock(&self.state);
            while state.writing {
                state = self.wait_written(state);
            }
            if state.queue.is_empty() {
                return Ok(());
            }
            drop(state);
            self.write_one()?;
        }
    }

    /// Waits until the record being written ends.
    fn wait_written<'a>(
        &self,
        state: std::sync::MutexGuard<'a, State>,
    ) -> std::sync::MutexGuard<'a, State> {
        self.written
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the queue's head (at most [`MAX_EVENTS`] events) and writes it as one record;
    /// settles its commits' outcomes.
    fn write_one(&self) -> Result<()> {
        let (batch, seq) = {
            let mut state = lock(&self.state);
            if state.writing || state.queue.is_empty() {
                return Ok(());
            }
            state.writing = true;
            let mut batch = Vec::new();
            let mut n = 0;
            while let Some(entry) = state.queue.front() {
                if n + entry.events.len() > MAX_EVENTS {
                    break;
                }
                n += entry.events.len();
                batch.push(state.queue.pop_front().expect("front"));
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.news_in_flight = batch
                .iter()
                .filter(|e| e.ticket.is_none())
                .flat_map(|e| e.events.clone())
                .collect();
            (batch, seq)
        };
        let events: Vec<Event> = batch.iter().flat_map(|e| e.events.clone()).collect();
        let marks_at = batch.iter().filter_map(|e| e.marks_at).min();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.append(seq, events, marks_at)
        }))
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "writing a log record failed on a bug (logged above)".into(),
            ))
        });
        let mut state = lock(&self.state);
        state.writing = false;
        state.news_in_flight.clear();
        let mut news = Vec::new();
        let mut deletes = Vec::new();
        for entry in batch {
            if result.is_ok() {
                deletes.extend(entry.then_delete.clone());
            }
            match (entry.ticket, &result) {
                (Some(t), Ok(())) => {
                    state.outcomes.insert(t, (seq, Ok(())));
                }
                (Some(t), Err(e)) => {
                    state.outcomes.insert(t, (seq, Err(e.to_string())));
                }
                (None, Err(_)) => news.push(entry),
                (None, Ok(())) => {}
            }
        }
        for entry in news.into_iter().rev() {
            state.queue.push_front(entry);
        }
        drop(state);
        self.written.notify_all();
        for key in deletes {
            if let Err(e) = self.remote.delete(&key) {
                tracing::warn!("{key} stays behind: {e}");
            }
        }
        result
    }

    /// Writes record `seq` of `events` into the current epoch (see [`LogWriter::commit_all`]
    /// for `marks_at`).
    fn append(&self, seq: u64, events: Vec<Event>, marks_at: Option<Instant>) -> Result<()> {
        let placement = self.placement()?;
        if let (Some(seen), Some(within)) = (marks_at, self.return_within) {
            let age = placement.listed.saturating_duration_since(seen);
            if age > within {
                return Err(Error::Unavailable(format!(
                    "the view of condemned packs these commits relied on was {age:?} old when \
                     their record was placed (more than {within:?}): not written"
                )));
            }
        }
        let record = LogRecord {
            writer: self.writer.to_string(),
            seq,
            epoch: placement.epoch,
            events,
        };
        let key = record.key();
        match self.remote.put(&key, Bytes::from(record.encode()), true) {
            // No other writer uses this key: a PUT retried after its answer was lost finds
            // its own record.
            Ok(()) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some(within) = self.return_within {
            let took = placement.listed.elapsed();
            if took > within {
                // Readers may ignore it once its epoch is settled: nothing in it counts.
                return Err(Error::Unavailable(format!(
                    "the log record {key} was written {took:?} after the listing that placed \
                     it (more than {within:?}): not acknowledged"
                )));
            }
        }
        Ok(())
    }

    /// The highest epoch shown by a listing of the markers at most G/4 old (listing again if
    /// the last one is older), or the newest the reader saw if that is higher. A bucket
    /// without a marker gets epoch 0's.
    ///
    /// Why a reader's epoch is safe to use: it was the highest when the reader's listing
    /// began, so marker E+1 was written after that; if the reader's listing began before the
    /// placement listing, that one saw E too. Either way the record returns within G/2 of a
    /// listing that began before marker E+1 existed.
    fn placement(&self) -> Result<Placement> {
        let seen = self.seen_epoch.load(Ordering::Acquire);
        let cached = lock(&self.state).placement;
        if let Some(p) = cached.filter(|p| p.listed.elapsed() <= self.place_within) {
            return Ok(Placement {
                epoch: p.epoch.max(seen),
                ..p
            });
        }
        let known = cached.map(|p| p.epoch.max(seen));
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
        self.seen_epoch.fetch_max(placement.epoch, Ordering::AcqRel);
        Ok(Placement {
            epoch: placement.epoch.max(seen),
            ..placement
        })
    }

    /// The highest marker, listing from `known` on (markers below it are not read again).
    fn list_markers(&self, known: Option<u64>) -> Result<Option<Placement>> {
        let listed = Instant::now();
        let markers = match known {
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
