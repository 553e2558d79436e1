//! `aetherflow memory-info`: the virtual memory configuration, framed.

use std::io::{self, Write};

use aetherflow_engine::units::format_bytes;
use aetherflow_engine::ChunkParams;

use aetherflow_vm::{Backend, VirtualMemory, VmConfig};
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
    let (live, source) = match (&args.data_dir, &args.server) {
        (Some(dir), _) => (Some(live_figures(dir)?), Source::Dir(dir.clone())),
        (None, Some(url)) => (
            Some(server_figures(url, args.token.as_deref())?),
            Source::Server(url.clone()),
        ),
        (None, None) => default_store(args.token.as_deref())?,
    };
    let mut out = io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "virtualCapacity": DEFAULT_CAPACITY,
            "physicalUsed": live.as_ref().map(|s| s.bytes.physical),
            "store": live.as_ref().map(|s| serde_json::json!({
                "dataDir": source.dir(),
                "server": source.server(),
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
                None => format!(
                    "no store found (no {DEFAULT_DATA_DIR} here, no server at {DEFAULT_SERVER})"
                ),
            },
        ),
        (
            "Store",
            match &live {
                Some(s) => format!(
                    "{} ({}{}), dedup {:.2}x, compression {:.2}x, zeros {}",
                    source.name(),
                    s.backend,
                    if s.durable { "" } else { ", not durable" },
                    s.ratios.dedup,
                    s.ratios.compression,
                    format_bytes(s.bytes.zero)
                ),
                _ => "none (use --data-dir DIR or --server URL)".to_string(),
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

/// Where the figures shown came from.
enum Source {
    Dir(std::path::PathBuf),
    Server(String),
    None,
}

impl Source {
    fn dir(&self) -> Option<String> {
        match self {
            Source::Dir(d) => Some(d.display().to_string()),
            _ => None,
        }
    }

    fn server(&self) -> Option<&str> {
        match self {
            Source::Server(url) => Some(url),
            _ => None,
        }
    }

    fn name(&self) -> String {
        self.dir()
            .or_else(|| self.server().map(str::to_string))
            .unwrap_or_default()
    }
}

/// What `serve` uses when given no flags.
const DEFAULT_DATA_DIR: &str = "aetherflow-data";
const DEFAULT_SERVER: &str = "http://127.0.0.1:5000";

/// The store a user means when naming none: the default data directory if there is one here,
/// else (or if a running server holds it) the server on the default port; nothing measured if
/// neither is there.
fn default_store(token: Option<&str>) -> anyhow::Result<(Option<ServerStats>, Source)> {
    let dir = std::path::Path::new(DEFAULT_DATA_DIR);
    let from_dir = dir.join("index.redb").exists().then(|| live_figures(dir));
    match from_dir {
        Some(Ok(stats)) => return Ok((Some(stats), Source::Dir(dir.to_path_buf()))),
        // Held by a running server, most likely the one on the default port.
        Some(Err(e)) => {
            return match server_figures(DEFAULT_SERVER, token) {
                Ok(stats) => Ok((Some(stats), Source::Server(DEFAULT_SERVER.into()))),
                Err(_) => Err(e),
            }
        }
        None => {}
    }
    Ok(match server_figures(DEFAULT_SERVER, token) {
        Ok(stats) => (Some(stats), Source::Server(DEFAULT_SERVER.into())),
        Err(_) => (None, Source::None),
    })
}

/// Opens a data directory just long enough to read its figures.
fn live_figures(dir: &std::path::Path) -> anyhow::Result<ServerStats> {
    if !dir.join("index.redb").exists() {
        anyhow::bail!(
            "{}: no AetherFlow store here (no index.redb)",
            dir.display()
        );
    }
    let vm = VirtualMemory::open(VmConfig::new(Backend::Local(dir.to_path_buf())))
        .with_context(|| dir.display().to_string())?;
    Ok(serde_json::from_value(serde_json::to_value(vm.summary())?)?)
}

/// The figures memory-info shows, as the stats JSON carries them (from a server or a store).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerStats {
    backend: String,
    durable: bool,
    total_blocks: u64,
    compression_ratio: String,
    bytes: Bytes,
    ratios: Ratios,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Bytes {
    logical: u64,
    physical: u64,
    zero: u64,
    unique: u64,
    cache_used: u64,
    cache_limit: u64,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Ratios {
    overall: f64,
    dedup: f64,
    compression: f64,
}

/// The live figures a running server reports at `/api/memory/stats`.
fn server_figures(url: &str, token: Option<&str>) -> anyhow::Result<ServerStats> {
    let endpoint = format!("{}/api/memory/stats", url.trim_end_matches('/'));
    let mut request = ureq::get(&endpoint);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("{endpoint} did not answer with JSON"))?;
    if !status.is_success() {
        anyhow::bail!(
            "{endpoint}: {} {}",
            status.as_u16(),
            body["error"].as_str().unwrap_or("error")
        );
    }
    serde_json::from_value(body["stats"].clone())
        .with_context(|| format!("{endpoint}: unexpected statistics shape"))
}

/// Total RAM from /proc/meminfo, measured rather than assumed.
fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
