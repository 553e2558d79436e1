//! `aetherflow check --data-dir DIR [--read-data]`: is every block intact?

use std::io::{self, Write};

use aetherflow_vm::{Backend, S3Options, VirtualMemory, VmConfig};
use anyhow::Context;

use crate::cli::CheckArgs;
use crate::exit::{CORRUPT, SUCCESS};

pub fn run(args: CheckArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    let (dir, backend) = match &args.store {
        Some(url) => {
            let location = crate::store_url::s3(url)?;
            // A check only reads: it writes nothing (no read counts, no collection), and a
            // prefix without a store is an error, not a new store.
            (
                location.to_string(),
                Backend::S3(location, S3Options::read_only()),
            )
        }
        None => {
            let dir = args.data_dir.display().to_string();
            if !args.data_dir.join("index.redb").exists() {
                anyhow::bail!("{dir}: no AetherFlow store here (no index.redb)");
            }
            (dir, Backend::Local(args.data_dir.clone()))
        }
    };
    let vm = VirtualMemory::open(VmConfig::new(backend)).with_context(|| dir.clone())?;
    let report = vm
        .check(args.read_data, seed.as_ref())
        .with_context(|| dir.clone())?;
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(out, "Store:            {dir}")?;
        writeln!(out, "Blocks:           {}", report.blocks)?;
        if args.read_data {
            writeln!(
                out,
                "Content verified: {} blocks (SHA-256)",
                report.blocks_verified
            )?;
            if report.seeded_not_opened > 0 {
                writeln!(
                    out,
                    "Not opened:       {} seeded blocks (no or another seed; their stored bytes were checked)",
                    report.seeded_not_opened
                )?;
            }
        } else {
            writeln!(
                out,
                "Checked:          index only (add --read-data to read every chunk)"
            )?;
        }
        for problem in &report.index_problems {
            writeln!(out, "Index problem:    {problem}")?;
        }
        for (chunk, what) in &report.damaged_chunks {
            writeln!(out, "Damaged chunk:    {chunk}: {what}")?;
        }
        for block in &report.damaged_blocks {
            writeln!(out, "Damaged block:    {}: {}", block.id, block.why)?;
        }
        writeln!(
            out,
            "Result:           {}",
            if report.is_clean() {
                "clean"
            } else {
                "DAMAGED"
            }
        )?;
    }
    Ok(if report.is_clean() { SUCCESS } else { CORRUPT })
}
