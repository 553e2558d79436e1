//! `aetherflow decompress IN.af OUT`

use std::io::{self, BufWriter, Write};

use aetherflow_engine::units::format_bytes;
use aetherflow_engine::{decompress, AfSource, DecompressOptions, Sink};
use anyhow::Context;

use crate::cli::DecompressArgs;
use crate::exit::SUCCESS;
use crate::files::{display, is_dash, open_input, stdout_for_binary, NamedWriter, PendingOutput};
use crate::progress::Bar;

pub fn run(args: DecompressArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    let name = display(&args.input);
    if args.verbose {
        eprintln!("[AetherFlow] Reading {name}...");
    }
    let (source, size) = if is_dash(&args.input) {
        (AfSource::Stream(Box::new(io::stdin())), None)
    } else {
        let file = open_input(&args.input)?;
        let size = file.metadata()?.len();
        (AfSource::File(file), Some(size))
    };
    if args.verbose {
        match size {
            Some(size) => eprintln!("[AetherFlow] Decompressing {}...", format_bytes(size)),
            None => eprintln!("[AetherFlow] Decompressing stdin..."),
        }
    }
    let options = DecompressOptions {
        threads: super::threads(args.threads),
        seed: seed.as_ref(),
        ..Default::default()
    };
    let bar = Bar::new("decompressing");
    let summary = if is_dash(&args.output) {
        let stdout = stdout_for_binary()?;
        let mut out = NamedWriter {
            inner: BufWriter::with_capacity(1 << 20, stdout.lock()),
            name: "stdout".into(),
        };
        let summary = decompress(source, Sink::Stream(&mut out), &options, &bar)
            .with_context(|| name.clone())?;
        out.flush()?;
        summary
    } else {
        // Created only after the header check would be nicer still, but the temporary name is
        // never the target: a failure removes it, and nothing appears under the target name.
        let pending = PendingOutput::create(&args.output)?;
        let summary = decompress(source, Sink::File(pending.file()), &options, &bar)
            .with_context(|| name.clone())?;
        pending.commit(args.sync)?;
        summary
    };
    bar.finish();
    if seed.is_some() && !summary.encrypted {
        eprintln!("aetherflow: note: {name} is not encrypted; the seed was not needed");
    }
    if args.verbose {
        eprintln!("✓ Decompression successful! SHA-256 verified.");
        eprintln!("  Compressed size: {}", format_bytes(summary.file_bytes));
        eprintln!(
            "  Restored size: {}",
            format_bytes(summary.totals.logical_bytes)
        );
        eprintln!(
            "  SHA-256: {}",
            aetherflow_engine::hex::encode(&summary.sha256)
        );
    }
    Ok(SUCCESS)
}
