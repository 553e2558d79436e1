//! `aetherflow compress IN OUT.af`

use std::io::{self, BufWriter, Write};

use aetherflow_engine::units::{format_bytes, format_ratio};
use aetherflow_engine::{compress, CompressOptions, CompressSummary, Source};
use anyhow::Context;

use crate::cli::CompressArgs;
use crate::exit::{UsageError, SUCCESS};
use crate::files::{display, is_dash, open_input, stdout_for_binary, NamedWriter, PendingOutput};
use crate::progress::Bar;

const OUTPUT_BUFFER: usize = 1 << 20;

pub fn run(args: CompressArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    if args.json && is_dash(&args.output) {
        return Err(UsageError(
            "--json prints to stdout, which is the output here; name an output file".into(),
        )
        .into());
    }
    let name = display(&args.input);
    let out_name = if is_dash(&args.output) {
        "stdout".to_string()
    } else {
        args.output.display().to_string()
    };
    if args.verbose {
        eprintln!("[AetherFlow] Reading {name}...");
    }
    let (source, size) = if is_dash(&args.input) {
        (Source::Stream(Box::new(io::stdin())), None)
    } else {
        let file = open_input(&args.input)?;
        let size = file.metadata()?.len();
        (Source::File(file), Some(size))
    };
    if args.verbose {
        match size {
            Some(size) => eprintln!("[AetherFlow] Compressing {}...", format_bytes(size)),
            None => eprintln!("[AetherFlow] Compressing stdin..."),
        }
    }
    let options = CompressOptions {
        level: args.level,
        threads: super::threads(args.threads),
        seed: seed.as_ref(),
        ..CompressOptions::default()
    };
    let bar = Bar::new("compressing");
    let context = || format!("compressing {name}");
    let summary = if is_dash(&args.output) {
        let stdout = stdout_for_binary()?;
        let mut out = NamedWriter {
            inner: BufWriter::with_capacity(OUTPUT_BUFFER, stdout.lock()),
            name: out_name,
        };
        compress(source, &mut out, &options, &bar).with_context(context)?
    } else {
        let pending = PendingOutput::create(&args.output)?;
        let mut out = NamedWriter {
            inner: BufWriter::with_capacity(OUTPUT_BUFFER, pending.file()),
            name: out_name,
        };
        let summary = compress(source, &mut out, &options, &bar).with_context(context)?;
        out.flush()?;
        drop(out);
        pending.commit(args.sync)?;
        summary
    };
    bar.finish();
    if args.verbose {
        print_summary(&summary);
    }
    if args.json {
        let json = serde_json::json!({
            "success": true,
            "input": name,
            "output": args.output.display().to_string(),
            "originalBytes": summary.totals.logical_bytes,
            "compressedBytes": summary.file_bytes,
            "ratio": aetherflow_engine::units::ratio(summary.totals.logical_bytes, summary.file_bytes),
            "sha256": aetherflow_engine::hex::encode(&summary.sha256),
            "encrypted": summary.encrypted,
            "totals": summary.totals,
        });
        writeln!(io::stdout(), "{json}")?;
    }
    Ok(SUCCESS)
}

fn print_summary(summary: &CompressSummary) {
    let original = summary.totals.logical_bytes;
    let stored = summary.file_bytes;
    let reduction = if original == 0 {
        0.0
    } else {
        (1.0 - stored as f64 / original as f64) * 100.0
    };
    let t = &summary.totals;
    eprintln!("✓ Compression successful!");
    eprintln!("  Original size: {}", format_bytes(original));
    eprintln!("  Compressed size: {}", format_bytes(stored));
    eprintln!("  Compression ratio: {}", format_ratio(original, stored));
    eprintln!("  Size reduction: {reduction:.2}%");
    eprintln!(
        "  Chunks: {} zstd, {} raw, {} duplicate ({}), {} zero runs ({}), {} holes ({})",
        t.zstd_chunks,
        t.raw_chunks,
        t.reference_chunks,
        format_bytes(t.reference_bytes),
        t.zero_runs,
        format_bytes(t.zero_bytes),
        t.hole_runs,
        format_bytes(t.hole_bytes)
    );
    eprintln!(
        "  SHA-256: {}",
        aetherflow_engine::hex::encode(&summary.sha256)
    );
    if summary.encrypted {
        eprintln!("  Encrypted: XChaCha20-Poly1305, key from the seed by Argon2id");
    }
}
