//! Read-ahead for sequential readers of a volume on a remote store.
//!
//! A client reading a volume front to back (`nbdcopy`, `dd`, a filesystem scanning a file)
//! asks for a few hundred KiB at a time. Against object storage, fetching only what each
//! request names costs a round trip per request and GETs of a few chunks each; told what comes
//! next, the store fetches several MiB of back-to-back records with one GET while the client
//! is still on the previous requests. Random readers must not pay for it: a stream starts
//! fetching only when a read begins at the very chunk after an earlier read ended, so a random
//! read, a re-read or a step back fetches nothing; once it fetches, a stream asks for the next
//! window when its reader is within half a window of what was asked for.

use std::ops::Range;

/// Sequential streams followed at once: `nbdcopy` reads a volume with several connections,
/// each at its own place.
const STREAMS: usize = 8;

/// One sequential reader, as far as reads tell.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The first chunk not asked for yet (before the stream fetches anything: the chunk after
    /// its last read).
    until: u64,
    /// Whether it has fetched ahead yet.
    fetching: bool,
    /// When it last read (a count of reads), to replace the stream idle longest.
    used: u64,
}

impl Stream {
    /// Whether a read starting at `first` continues this stream: the very next chunk for a
    /// stream that has fetched nothing (a re-read or a step back is not a sequential reader),
    /// anywhere within the window it asked for once it fetches (requests in flight together
    /// arrive out of order).
    fn continued_by(&self, first: u64, window: u64) -> bool {
        if self.fetching {
            first <= self.until && first.saturating_add(window) >= self.until
        } else {
            first == self.until
        }
    }
}

/// Chunks to fetch ahead of sequential readers, and when to ask for more.
#[derive(Debug)]
pub(super) struct ReadAhead {
    /// Chunks fetched ahead at once.
    window: u64,
    streams: Vec<Stream>,
    reads: u64,
}

impl ReadAhead {
    /// Read-ahead of `window` chunks at a time.
    pub fn new(window: u64) -> ReadAhead {
        ReadAhead {
            window,
            streams: Vec::with_capacity(STREAMS),
            reads: 0,
        }
    }

    /// As a read of chunks `first..=last` begins: the chunks to fetch now, if any (this
    /// read's own among them, so that they share the GETs of what follows).
    pub fn on_read(&mut self, first: u64, last: u64) -> Option<Range<u64>> {
        self.reads += 1;
        let (window, reads) = (self.window, self.reads);
        let next = last.saturating_add(1);
        let Some(stream) = self
            .streams
            .iter_mut()
            .find(|s| s.continued_by(first, window))
        else {
            // Not a continuation: a stream that only a read of the chunk after this one sets
            // going. It takes the place of the stream idle longest (or of one that already
            // waits for that chunk).
            let fresh = Stream {
                until: next,
                fetching: false,
                used: reads,
            };
            if let Some(same) = self.streams.iter_mut().find(|s| s.until == next) {
                *same = fresh;
            } else if self.streams.len() < STREAMS {
                self.streams.push(fresh);
            } else if let Some(idle) = self.streams.iter_mut().min_by_key(|s| s.used) {
                *idle = fresh;
            }
            return None;
        };
        stream.used = reads;
        // Ahead by more than half a window: enough is on its way.
        if stream.fetching && stream.until > last.saturating_add(window / 2) {
            return None;
        }
        let from = stream.until.max(first);
        let to = next.saturating_add(window);
        stream.until = to;
        stream.fetching = true;
        (from < to).then_some(from..to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_reader_is_kept_a_window_ahead() {
        let mut ra = ReadAhead::new(64);
        // The first read of a stream only sets the frontier (it could be a random read).
        assert_eq!(ra.on_read(0, 3), None);
        assert_eq!(ra.on_read(4, 7), Some(4..72));
        // Within the window already asked for: nothing more until half of it is read.
        assert_eq!(ra.on_read(8, 11), None);
        assert_eq!(ra.on_read(36, 39), None);
        assert_eq!(ra.on_read(40, 43), Some(72..108));
        // Requests that arrive out of order (several in flight) count as sequential too.
        assert_eq!(ra.on_read(52, 55), None);
        assert_eq!(ra.on_read(48, 51), None);
    }

    #[test]
    fn interleaved_sequential_readers_each_get_their_own_stream() {
        let mut ra = ReadAhead::new(64);
        let starts = [0u64, 10_000, 20_000, 30_000];
        for s in starts {
            assert_eq!(ra.on_read(s, s + 3), None);
        }
        for s in starts {
            assert_eq!(
                ra.on_read(s + 4, s + 7),
                Some(s + 4..s + 72),
                "stream at {s}"
            );
        }
    }

    #[test]
    fn a_re_read_or_a_step_back_fetches_nothing_ahead() {
        let mut ra = ReadAhead::new(64);
        assert_eq!(ra.on_read(100, 100), None);
        assert_eq!(ra.on_read(100, 100), None, "the same chunk again");
        assert_eq!(ra.on_read(80, 80), None, "a step back");
        assert_eq!(
            ra.on_read(99, 100),
            None,
            "a read that ends where one ended"
        );
        // Small reads within one chunk, then the next chunk: a sequential reader after all.
        assert_eq!(ra.on_read(101, 101), Some(101..166));
    }

    #[test]
    fn random_reads_fetch_nothing_ahead() {
        let mut ra = ReadAhead::new(64);
        for (i, first) in [5_000u64, 90, 77_000, 1_234, 400, 60_000]
            .into_iter()
            .enumerate()
        {
            assert_eq!(ra.on_read(first, first), None, "read {i} at {first}");
        }
    }

    #[test]
    fn the_end_of_the_address_space_does_not_overflow() {
        let mut ra = ReadAhead::new(64);
        assert_eq!(ra.on_read(u64::MAX - 1, u64::MAX - 1), None);
        assert_eq!(ra.on_read(u64::MAX, u64::MAX), None);
    }
}
