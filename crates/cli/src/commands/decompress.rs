//! `aetherflow decompress IN.af OUT`

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use aetherflow_engine::archive::{extract_all, extract_path, ExtractOptions, ExtractSummary};
use aetherflow_engine::format::header::Header;
use aetherflow_engine::units::format_bytes;
use aetherflow_engine::{
    decompress, AfFile, AfSource, DecompressOptions, Error, Limits, Progress, Seed, Sink,
};
use anyhow::Context;

use crate::cli::DecompressArgs;
use crate::exit::{UsageError, SUCCESS};
use crate::files::{display, is_dash, open_input, stdout_for_binary, NamedWriter, PendingOutput};
use crate::progress::Bar;

/// Bytes read from stdin to tell a directory archive from a single file.
const PEEK: usize = 48;

pub fn run(args: DecompressArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    let name = display(&args.input);
    if args.verbose {
        eprintln!("[AetherFlow] Reading {name}...");
    }
    let (source, size) = if is_dash(&args.input) {
        let mut stdin = io::stdin();
        let mut peek = Vec::with_capacity(PEEK);
        (&mut stdin).take(PEEK as u64).read_to_end(&mut peek)?;
        if is_archive(&mut &peek[..]) {
            // A restore needs the table and references at random: keep the stream in a file.
            let mut spool = tempfile::tempfile().context("cannot buffer stdin")?;
            spool.write_all(&peek)?;
            io::copy(&mut stdin, &mut spool).context("cannot buffer stdin")?;
            return run_archive(args, spool, seed.as_ref(), &name);
        }
        let chained = io::Cursor::new(peek).chain(stdin);
        (AfSource::Stream(Box::new(chained)), None)
    } else {
        let mut file = open_input(&args.input)?;
        if is_archive(&mut file) {
            return run_archive(args, file, seed.as_ref(), &name);
        }
        file.seek(SeekFrom::Start(0))?;
        let size = file.metadata()?.len();
        (AfSource::File(file), Some(size))
    };
    if args.path.is_some() || args.force {
        return Err(UsageError(format!(
            "--path and --force apply to directory archives; {name} is a single file"
        ))
        .into());
    }
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

/// True when `input` starts with the header of a directory archive (anything else, damage
/// included, is left to the single-file path to report).
fn is_archive(input: &mut impl Read) -> bool {
    Header::read(input, &Limits::default()).is_ok_and(|h| h.archive)
}

fn run_archive(
    args: DecompressArgs,
    mut file: File,
    seed: Option<&Seed>,
    name: &str,
) -> anyhow::Result<u8> {
    if is_dash(&args.output) {
        return Err(UsageError(format!(
            "{name} is a directory archive: name the folder to restore into instead of -"
        ))
        .into());
    }
    file.seek(SeekFrom::Start(0))?;
    let options = ExtractOptions {
        decompress: DecompressOptions {
            threads: super::threads(args.threads),
            seed,
            ..Default::default()
        },
        force: args.force,
    };
    let bar = Bar::for_entries("restoring", args.verbose);
    let summary = match &args.path {
        Some(rel) => {
            let limits = Limits::default();
            let af = match AfFile::open(file.try_clone()?, seed, &limits) {
                Ok(af) => af,
                Err(Error::Corrupt(what)) => {
                    bar.warn(&format!(
                        "{name} is damaged ({what}); restoring from what precedes the damage"
                    ));
                    AfFile::salvage(file, seed, &limits).with_context(|| name.to_string())?
                }
                Err(e) => return Err(anyhow::Error::new(e).context(name.to_string())),
            };
            extract_path(&af, rel, &args.output, &options, &bar)
        }
        None => extract_all(AfSource::File(file), &args.output, &options, &bar),
    }
    .with_context(|| name.to_string())?;
    bar.finish();
    if seed.is_some() && summary.decompress.as_ref().is_some_and(|d| !d.encrypted) {
        eprintln!("aetherflow: note: {name} is not encrypted; the seed was not needed");
    }
    if args.verbose {
        print_archive_summary(&summary);
    }
    Ok(SUCCESS)
}

fn print_archive_summary(summary: &ExtractSummary) {
    match &summary.decompress {
        Some(d) => eprintln!(
            "✓ Decompression successful! SHA-256 verified.\n  SHA-256: {}",
            aetherflow_engine::hex::encode(&d.sha256)
        ),
        None => eprintln!("✓ Restored; every chunk verified."),
    }
    eprintln!(
        "  Entries: {} ({} of file content)",
        summary.entries,
        format_bytes(summary.file_bytes)
    );
    if !summary.not_restored.is_empty() {
        eprintln!(
            "  Not restored: {} (unreadable when archived)",
            summary.not_restored.len()
        );
    }
}
