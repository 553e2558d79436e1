//! Content the scenarios send: deterministic text-like data (so runs are comparable) and stamps
//! that make blocks distinct without changing how they compress.

use std::sync::atomic::AtomicU64;

use base64::Engine;

/// xorshift64*: deterministic, fast, good enough for picking words.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "block", "store", "memory",
    "request", "server", "client", "latency", "compressed", "chunk", "index", "cache", "river",
    "morning", "letter", "window", "garden", "history", "question", "answer", "number", "system",
    "people", "between", "through", "another", "because", "against", "without", "something",
];

const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const PATHS: &[&str] = &[
    "/api/memory/allocate",
    "/api/memory/read",
    "/api/memory/stats",
    "/healthz",
    "/metrics",
    "/api/memory/export",
];

/// Text-like content: prose paragraphs and log lines, with some repeated boilerplate, so that
/// it compresses like real text (3–5x) and has repeats for dedup to find.
pub fn text_corpus(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 4096);
    let boiler = b"-- This message and any attachments are confidential. If you received it in \
                   error, please tell the sender and delete it. --\n";
    let mut t = 1_700_000_000u64;
    while out.len() < len {
        match rng.below(10) {
            0..=4 => {
                // A paragraph of prose.
                let words = 40 + rng.below(120);
                for i in 0..words {
                    let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                    if i == 0 {
                        let mut c = w.as_bytes().to_vec();
                        c[0] = c[0].to_ascii_uppercase();
                        out.extend_from_slice(&c);
                    } else {
                        out.push(b' ');
                        out.extend_from_slice(w.as_bytes());
                    }
                    if rng.below(14) == 0 {
                        out.extend_from_slice(b". ");
                    }
                }
                out.extend_from_slice(b".\n\n");
            }
            5..=8 => {
                // A burst of log lines.
                for _ in 0..(5 + rng.below(30)) {
                    t += rng.below(3);
                    let line = format!(
                        "{t} {} req={:08x} path={} status={} bytes={} ms={}\n",
                        LEVELS[rng.below(LEVELS.len() as u64) as usize],
                        rng.next() as u32,
                        PATHS[rng.below(PATHS.len() as u64) as usize],
                        [200, 200, 200, 201, 404, 500][rng.below(6) as usize],
                        rng.below(1 << 20),
                        rng.below(900),
                    );
                    out.extend_from_slice(line.as_bytes());
                }
            }
            _ => out.extend_from_slice(boiler),
        }
    }
    out.truncate(len);
    out
}

/// Makes `data` unlike any other stamped block: 16 bytes of hex every 16 KiB, so every
/// content-defined chunk (at least 64 KiB on the server) differs, while the text stays text.
pub fn stamp(data: &mut [u8], tag: u64) {
    let mark = format!("{tag:016x}");
    let mut at = 0;
    while at + 16 <= data.len() {
        data[at..at + 16].copy_from_slice(mark.as_bytes());
        at += 16 << 10;
    }
}

/// The first `total` bytes of `source` repeated, handed to `each` a copy at a time (the last one
/// cut short) until it returns false. Copy k has `[copy k]` every 32 KiB, so copies do not
/// deduplicate against each other (chunks are at least 64 KiB) yet compress like the source;
/// the same bytes every run.
pub fn stamped_copies(source: &[u8], total: u64, mut each: impl FnMut(&[u8]) -> bool) {
    assert!(
        source.len() >= 1 << 20,
        "the source should be at least 1 MiB"
    );
    let mut copy = source.to_vec();
    let mut written = 0u64;
    let mut k = 0u64;
    while written < total {
        copy.copy_from_slice(source);
        let mark = format!("[copy {k:08}]");
        let mut at = (k as usize * 4099) % (32 << 10);
        while at + mark.len() <= copy.len() {
            copy[at..at + mark.len()].copy_from_slice(mark.as_bytes());
            at += 32 << 10;
        }
        let n = (total - written).min(copy.len() as u64) as usize;
        if !each(&copy[..n]) {
            return;
        }
        written += n as u64;
        k += 1;
    }
}

/// A global counter that makes every stamped block unique across threads and phases.
pub static STAMP: AtomicU64 = AtomicU64::new(1);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn json_allocate_body(data: &[u8]) -> Vec<u8> {
    let encoded = b64(data);
    let mut body = Vec::with_capacity(encoded.len() + 16);
    body.extend_from_slice(b"{\"data\":\"");
    body.extend_from_slice(encoded.as_bytes());
    body.extend_from_slice(b"\"}");
    body
}
