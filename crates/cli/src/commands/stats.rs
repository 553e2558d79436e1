//! `aetherflow stats IN.af`: header, trailer and index only; nothing is decompressed.

use std::io::{self, Write};

use aetherflow_engine::units::{format_bytes, format_ratio};
use aetherflow_engine::{AfFile, Limits};
use anyhow::Context;

use crate::cli::StatsArgs;
use crate::exit::SUCCESS;
use crate::files::open_input;

pub fn run(args: StatsArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    let name = args.input.display().to_string();
    let file = open_input(&args.input)?;
    let af = AfFile::open(file, seed.as_ref(), &Limits::default()).with_context(|| name.clone())?;
    let info = af.info().with_context(|| name.clone())?;
    let mut out = io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&info)?;
        value["file"] = name.into();
        writeln!(out, "{value}")?;
        return Ok(SUCCESS);
    }
    let t = &info.totals;
    let stored = t.zstd_chunks + t.raw_chunks;
    writeln!(out, "File:              {name}")?;
    writeln!(
        out,
        "Format:            AetherFlow .af v{}{}{}",
        info.format_version,
        if info.archive {
            ", directory archive"
        } else {
            ""
        },
        if info.encrypted {
            ", encrypted (XChaCha20-Poly1305, Argon2id)"
        } else {
            ", not encrypted"
        }
    )?;
    writeln!(
        out,
        "Original size:     {} ({} bytes)",
        format_bytes(t.logical_bytes),
        t.logical_bytes
    )?;
    writeln!(
        out,
        "Compressed size:   {} ({} bytes)",
        format_bytes(info.file_bytes),
        info.file_bytes
    )?;
    writeln!(
        out,
        "Compression ratio: {}",
        format_ratio(t.logical_bytes, info.file_bytes)
    )?;
    writeln!(out, "zstd level:        {}", info.level)?;
    writeln!(
        out,
        "Chunking:          FastCDC {} / {} / {} (min / avg / max)",
        format_bytes(info.chunking.min.into()),
        format_bytes(info.chunking.avg.into()),
        format_bytes(info.chunking.max.into())
    )?;
    writeln!(
        out,
        "Unique chunks:     {stored} ({} zstd, {} raw), {} of content",
        t.zstd_chunks,
        t.raw_chunks,
        format_bytes(t.unique_bytes)
    )?;
    writeln!(out, "Stored payload:    {}", format_bytes(t.payload_bytes))?;
    writeln!(
        out,
        "Duplicate chunks:  {} ({})",
        t.reference_chunks,
        format_bytes(t.reference_bytes)
    )?;
    writeln!(
        out,
        "Zero runs:         {} ({})",
        t.zero_runs,
        format_bytes(t.zero_bytes)
    )?;
    writeln!(
        out,
        "Holes:             {} ({})",
        t.hole_runs,
        format_bytes(t.hole_bytes)
    )?;
    match &info.sha256 {
        Some(sha) if t.hole_runs > 0 => writeln!(
            out,
            "SHA-256:           {sha} (of the data; holes excluded)"
        )?,
        Some(sha) => writeln!(out, "SHA-256:           {sha}")?,
        None => writeln!(out, "SHA-256:           (sealed: give the seed to see it)")?,
    }
    Ok(SUCCESS)
}
