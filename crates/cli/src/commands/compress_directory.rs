//! `aetherflow compress-directory DIR OUT.af`

use std::io::{self, BufWriter, Write};
use std::path::Path;

use aetherflow_engine::archive::{archive_directory, ArchiveOptions, ArchiveSummary};
use aetherflow_engine::units::{format_bytes, format_ratio};
use aetherflow_engine::CompressOptions;
use anyhow::Context;
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::cli::CompressDirectoryArgs;
use crate::exit::{UsageError, PARTIAL, SUCCESS};
use crate::files::{is_dash, stdout_for_binary, NamedWriter, PendingOutput};
use crate::progress::Bar;

pub fn run(args: CompressDirectoryArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    if args.json && is_dash(&args.output) {
        return Err(UsageError(
            "--json prints to stdout, which is the output here; name an output file".into(),
        )
        .into());
    }
    let exclude = globs(&args.exclude)?;
    let name = args.dir.display().to_string();
    if args.verbose {
        eprintln!("[AetherFlow] Reading {name}...");
    }
    let matches =
        |rel: &Path| exclude.is_match(rel) || rel.file_name().is_some_and(|n| exclude.is_match(n));
    let options = ArchiveOptions {
        compress: CompressOptions {
            level: args.level,
            threads: super::threads(args.threads),
            seed: seed.as_ref(),
            ..CompressOptions::default()
        },
        exclude: &matches,
        ..ArchiveOptions::default()
    };
    let bar = Bar::for_entries("archiving", args.verbose);
    let context = || format!("archiving {name}");
    let summary = if is_dash(&args.output) {
        let stdout = stdout_for_binary()?;
        let mut out = NamedWriter {
            inner: BufWriter::with_capacity(1 << 20, stdout.lock()),
            name: "stdout".into(),
        };
        archive_directory(&args.dir, &mut out, &options, &bar).with_context(context)?
    } else {
        let pending = PendingOutput::create(&args.output)?;
        let mut out = NamedWriter {
            inner: BufWriter::with_capacity(1 << 20, pending.file()),
            name: args.output.display().to_string(),
        };
        let summary =
            archive_directory(&args.dir, &mut out, &options, &bar).with_context(context)?;
        out.flush()?;
        drop(out);
        pending.commit(args.sync)?;
        summary
    };
    bar.finish();
    if args.verbose {
        print_summary(&summary);
    }
    if summary.is_partial() {
        eprintln!(
            "aetherflow: warning: the archive is partial: {} entries could not be read, {} changed \
             while being read (named above)",
            summary.unreadable.len(),
            summary.changed.len()
        );
    }
    if args.json {
        let json = serde_json::json!({
            "success": true,
            "partial": summary.is_partial(),
            "input": name,
            "output": args.output.display().to_string(),
            "originalBytes": summary.file_bytes,
            "compressedBytes": summary.compress.file_bytes,
            "ratio": aetherflow_engine::units::ratio(summary.file_bytes, summary.compress.file_bytes),
            "archive": summary,
        });
        writeln!(io::stdout(), "{json}")?;
    }
    Ok(if summary.is_partial() {
        PARTIAL
    } else {
        SUCCESS
    })
}

fn globs(patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob =
            Glob::new(pattern).map_err(|e| UsageError(format!("--exclude {pattern}: {e}")))?;
        set.add(glob);
    }
    Ok(set
        .build()
        .map_err(|e| UsageError(format!("--exclude: {e}")))?)
}

fn print_summary(summary: &ArchiveSummary) {
    let original = summary.file_bytes;
    let stored = summary.compress.file_bytes;
    let t = &summary.compress.totals;
    eprintln!("✓ Compression successful!");
    eprintln!(
        "  Entries: {} files, {} folders, {} symlinks, {} hard links ({} skipped)",
        summary.files,
        summary.directories,
        summary.symlinks,
        summary.hard_links,
        summary.skipped.len()
    );
    eprintln!("  Original size: {}", format_bytes(original));
    eprintln!("  Compressed size: {}", format_bytes(stored));
    eprintln!("  Compression ratio: {}", format_ratio(original, stored));
    let reduction = if original == 0 {
        0.0
    } else {
        (1.0 - stored as f64 / original as f64) * 100.0
    };
    eprintln!("  Size reduction: {reduction:.2}%");
    eprintln!(
        "  Duplicate content: {}; zeros and holes: {}",
        format_bytes(t.reference_bytes),
        format_bytes(t.zero_bytes + t.hole_bytes)
    );
    if summary.compress.encrypted {
        eprintln!(
            "  Encrypted: XChaCha20-Poly1305 (file names too), key from the seed by Argon2id"
        );
    }
}
