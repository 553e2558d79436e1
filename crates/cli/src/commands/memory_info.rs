//! `aetherflow memory-info`: the virtual memory configuration, framed.

use std::io::{self, Write};

use aetherflow_engine::units::format_bytes;
use aetherflow_engine::ChunkParams;

use aetherflow_vm::{Backend, Stats, VirtualMemory, VmConfig};
use anyhow::Context;

use crate::cli::MemoryInfoArgs;
use crate::exit::SUCCESS;

/// Logical address space offered by default.
const DEFAULT_CAPACITY: u64 = 100 << 40;
/// Decompressed-block cache by default.
const DEFAULT_CACHE: u64 = 50 << 20;

pub fn run(args: MemoryInfoArgs) -> anyhow::Result<u8> {
    let chunking = ChunkParams::DEFAULT;
    let machine_memory = machine_memory_bytes();
    let live = match &args.data_dir {
        Some(dir) => Some(live_figures(dir)?),
        None => None,
    };
    let mut out = io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "virtualCapacity": DEFAULT_CAPACITY,
            "physicalUsed": live.as_ref().map(|s| s.bytes.physical),
            "store": live.as_ref().map(|s| serde_json::json!({
                "dataDir": args.data_dir.as_ref().map(|d| d.display().to_string()),
                "backend": s.backend, "blocks": s.total_blocks, "bytes": s.bytes, "ratios": s.ratios,
            })),
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
            match &live {
                Some(s) => format!(
                    "{} for {} logical in {} blocks ({} overall)",
                    format_bytes(s.bytes.physical),
                    format_bytes(s.bytes.logical),
                    s.total_blocks,
                    s.compression_ratio
                ),
                None => "no store named (nothing measured)".to_string(),
            },
        ),
        (
            "Store",
            match (&live, &args.data_dir) {
                (Some(s), Some(dir)) => format!(
                    "{} ({}), dedup {:.2}x, compression {:.2}x, zeros {}",
                    dir.display(),
                    s.backend,
                    s.ratios.dedup,
                    s.ratios.compression,
                    format_bytes(s.bytes.zero)
                ),
                _ => "none (use --data-dir DIR)".to_string(),
            },
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
            format!(
                "FastCDC 2020, {} avg (.af files), {} avg (blocks)",
                format_bytes(chunking.avg.into()),
                format_bytes(VmConfig::CHUNKING.avg.into())
            ),
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

/// Opens a data directory just long enough to read its figures.
fn live_figures(dir: &std::path::Path) -> anyhow::Result<Stats> {
    if !dir.join("index.redb").exists() {
        anyhow::bail!(
            "{}: no AetherFlow store here (no index.redb)",
            dir.display()
        );
    }
    let vm = VirtualMemory::open(VmConfig::new(Backend::Local(dir.to_path_buf())))
        .with_context(|| dir.display().to_string())?;
    Ok(vm.summary())
}

/// Total RAM from /proc/meminfo, measured rather than assumed.
fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
