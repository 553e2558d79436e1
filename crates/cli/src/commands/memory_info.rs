//! `aetherflow memory-info`: the virtual memory configuration, framed.

use std::io::{self, Write};

use aetherflow_engine::units::format_bytes;
use aetherflow_engine::ChunkParams;

use crate::cli::MemoryInfoArgs;
use crate::exit::SUCCESS;

/// Logical address space offered by default.
const DEFAULT_CAPACITY: u64 = 100 << 40;
/// Decompressed-block cache by default.
const DEFAULT_CACHE: u64 = 50 << 20;

pub fn run(args: MemoryInfoArgs) -> anyhow::Result<u8> {
    let chunking = ChunkParams::DEFAULT;
    let machine_memory = machine_memory_bytes();
    let mut out = io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "virtualCapacity": DEFAULT_CAPACITY,
            "physicalUsed": null,
            "store": null,
            "cacheLimit": DEFAULT_CACHE,
            "machineMemory": machine_memory,
            "chunking": chunking,
            "algorithms": {"chunking": "FastCDC 2020", "compression": format!("zstd {}", aetherflow_engine::zstd_version()),
                "identity": "BLAKE3 (keyed under a seed)", "content": "SHA-256", "kdf": "Argon2id", "aead": "XChaCha20-Poly1305"},
        });
        writeln!(out, "{json}")?;
        return Ok(SUCCESS);
    }
    let rows = [
        (
            "Virtual capacity",
            format!("{} (logical)", format_bytes(DEFAULT_CAPACITY)),
        ),
        (
            "Physical memory used",
            "no store named (nothing measured)".to_string(),
        ),
        (
            "Machine memory",
            machine_memory.map_or("unknown".into(), format_bytes),
        ),
        (
            "Cache size",
            format!("{} of decompressed blocks", format_bytes(DEFAULT_CACHE)),
        ),
        (
            "Engine",
            format!("aetherflow {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "Chunking",
            format!("FastCDC 2020, {} avg", format_bytes(chunking.avg.into())),
        ),
        (
            "Compression",
            format!(
                "zstd {} (level 3 default)",
                aetherflow_engine::zstd_version()
            ),
        ),
        (
            "Integrity",
            "BLAKE3 per chunk, SHA-256 per content".to_string(),
        ),
        (
            "Encryption",
            "XChaCha20-Poly1305, Argon2id seed".to_string(),
        ),
        (
            "Features",
            "thin provisioning, dedup, zero runs, holes".to_string(),
        ),
    ];
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let width = rows
        .iter()
        .map(|(_, v)| v.chars().count())
        .max()
        .unwrap_or(0)
        + label_width
        + 2;
    let title = "AetherFlow virtual memory";
    writeln!(out, "╔{}╗", "═".repeat(width + 2))?;
    writeln!(out, "║ {title:<width$} ║")?;
    writeln!(out, "╠{}╣", "═".repeat(width + 2))?;
    for (label, value) in rows {
        let line = format!("{label:<label_width$}  {value}");
        writeln!(out, "║ {line:<width$} ║")?;
    }
    writeln!(out, "╚{}╝", "═".repeat(width + 2))?;
    Ok(SUCCESS)
}

/// Total RAM from /proc/meminfo, measured rather than assumed.
fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
