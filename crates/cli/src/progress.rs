//! A progress bar on stderr, drawn only when stderr is a terminal; per-entry lines and warnings
//! for directory archives.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use aetherflow_engine::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    /// Print a line per archive entry (`--verbose`).
    verbose: bool,
    entries: AtomicU64,
    entries_total: AtomicU64,
}

impl Bar {
    pub fn new(verb: &str) -> Bar {
        Bar::for_entries(verb, false)
    }

    /// A bar that also counts archive entries, with one line per entry when `verbose`.
    pub fn for_entries(verb: &str, verbose: bool) -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{verb} {{msg}} {{bar:30}} {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} {{eta}}"
            ))
            .expect("valid template"),
        );
        Bar {
            bar,
            verbose,
            entries: AtomicU64::new(0),
            entries_total: AtomicU64::new(0),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn set_entries(&self, count: u64) {
        self.entries_total.store(count, Ordering::Relaxed);
    }

    fn entry(&self, path: &Path, bytes: u64) {
        let done = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.entries_total.load(Ordering::Relaxed);
        if done % 64 == 0 || done == total {
            self.bar.set_message(format!("{done}/{total} entries"));
        }
        if self.verbose {
            let shown = if path.as_os_str().is_empty() {
                Path::new(".")
            } else {
                path
            };
            self.bar.suspend(|| {
                eprintln!(
                    "  {} ({})",
                    shown.display(),
                    aetherflow_engine::units::format_bytes(bytes)
                )
            });
        }
    }

    fn warn(&self, message: &str) {
        self.bar
            .suspend(|| eprintln!("aetherflow: warning: {message}"));
    }
}
