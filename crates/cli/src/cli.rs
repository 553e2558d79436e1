//! The command line, declared with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "aetherflow",
    version,
    about = "Compressed, deduplicating, encrypted storage: .af files and a virtual memory store",
    long_about = "Compressed, deduplicating, encrypted storage.\n\n\
        Files become .af files: content-defined chunks, each stored once, as a zero run, a \
        reference, zstd or raw (whichever is smallest), optionally encrypted under a seed, with \
        the SHA-256 of the whole content checked on every decompression.\n\n\
        Sizes are printed in binary units (1 MB = 1,048,576 bytes); --json gives exact bytes.",
    after_help = exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compress a file (or stdin) into an .af file.
    #[command(after_help = exit::HELP)]
    Compress(CompressArgs),
    /// Restore an .af file byte for byte, verifying its SHA-256 before reporting success; a
    /// directory archive is restored into the folder OUT.
    #[command(after_help = exit::HELP)]
    Decompress(DecompressArgs),
    /// Archive a whole folder into one .af file, deduplicated across files.
    #[command(name = "compress-directory", after_help = exit::HELP)]
    CompressDirectory(CompressDirectoryArgs),
    /// Show what is inside an .af file without decompressing it.
    #[command(after_help = exit::HELP)]
    Stats(StatsArgs),
    /// Show the virtual memory configuration and, for a data directory, its live figures.
    #[command(name = "memory-info", after_help = exit::HELP)]
    MemoryInfo(MemoryInfoArgs),
    /// Verify a store: every index entry and, with --read-data, every chunk and block.
    #[command(after_help = exit::HELP)]
    Check(CheckArgs),
    /// Run the REST server (SPEC section 3) on the embedded store, in memory, or on a store URL;
    /// with --nbd, serve its volumes over NBD too.
    #[command(after_help = exit::HELP)]
    Serve(ServeArgs),
    /// Manage volumes (thin block devices served over NBD) on a server or in a data directory.
    #[command(after_help = exit::HELP)]
    Volume(VolumeArgs),
    /// Upgrade a store on object storage written by an older build (format version 2) to this
    /// build's, once, with every server of the store stopped.
    #[command(name = "upgrade-store", after_help = exit::HELP)]
    UpgradeStore(UpgradeStoreArgs),
}

#[derive(Debug, Args)]
pub struct UpgradeStoreArgs {
    /// The store: s3://BUCKET/PREFIX?endpoint=http://HOST:PORT.
    #[arg(value_name = "URL")]
    pub store: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
    #[command(flatten)]
    pub target: VolumeTarget,
}

/// Where the volumes are: a running server (the default), or a data directory.
#[derive(Debug, Args)]
pub struct VolumeTarget {
    /// A running server.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    pub server: String,
    /// A data directory instead (the store must not be open elsewhere).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Bearer token for --server.
    #[arg(long, env = "AF_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON (the server's volume objects) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume: never-written space costs nothing.
    Create {
        name: String,
        /// Its size: 100TiB, 20GiB, or bytes.
        #[arg(long)]
        size: String,
        /// Seal its chunks under a seed: it is served only once unlocked with it.
        #[command(flatten)]
        seed: SeedArgs,
    },
    /// List every volume, snapshot and clone.
    List,
    /// Show a volume's description and exact figures.
    Info { name: String },
    /// Take a read-only snapshot NEW of volume NAME (instant).
    Snapshot { name: String, new: String },
    /// Make a writable volume NEW from snapshot SNAPSHOT (instant).
    Clone { snapshot: String, new: String },
    /// Delete a volume; what nothing else shares is freed. Refused while a client has it open.
    Delete { name: String },
    /// Unlock a seeded volume on a server (its keys stay in the server's memory).
    Unlock {
        name: String,
        #[command(flatten)]
        seed: SeedArgs,
    },
    /// Forget a seeded volume's keys on a server.
    Lock { name: String },
}

/// Where the seed comes from. The seed is never printed or stored.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Seed that keys encryption and dedup (prefer AF_SEED or --seed-file: a command line is
    /// visible to other users of the machine).
    #[arg(
        long,
        env = "AF_SEED",
        hide_env_values = true,
        conflicts_with = "seed_file"
    )]
    pub seed: Option<String>,
    /// Read the seed from this file (one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub seed_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompressArgs {
    /// File to compress, or - for stdin.
    pub input: PathBuf,
    /// The .af file to write, or - for stdout.
    pub output: PathBuf,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// zstd level, 1 (fastest) to 22 (smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
    /// Worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Flush the output to the disk before it takes its name, so that it survives a power cut.
    #[arg(long)]
    pub sync: bool,
    /// Print the steps and a result summary on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompressDirectoryArgs {
    /// The folder to archive. Paths are stored relative to it; symlinks are stored as links and
    /// never followed; sockets, FIFOs and devices are skipped with a warning.
    pub dir: PathBuf,
    /// The .af file to write, or - for stdout.
    pub output: PathBuf,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Leave out paths matching this glob (matched against the path relative to DIR and against
    /// the name alone; a folder is left out with everything in it). Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// zstd level, 1 (fastest) to 22 (smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
    /// Worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Flush the output to the disk before it takes its name, so that it survives a power cut.
    #[arg(long)]
    pub sync: bool,
    /// Print one line per entry and a result summary on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DecompressArgs {
    /// The .af file to restore, or - for stdin.
    pub input: PathBuf,
    /// Where to write the content, or - for stdout. A file appears only once verified. For a
    /// directory archive: the folder to restore into (new, or empty unless --force).
    pub output: PathBuf,
    /// Directory archives: restore only this entry (a folder with everything in it) to
    /// OUT/PATH, reading only the chunks it needs.
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Directory archives: overwrite what is in the way in a non-empty OUT (folders are merged).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Flush the output to the disk before it takes its name, so that it survives a power cut.
    #[arg(long)]
    pub sync: bool,
    /// Print the steps and a result summary on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The .af file to describe.
    pub input: PathBuf,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MemoryInfoArgs {
    /// A store's data directory: show its live usage (the store must not be open elsewhere).
    /// With neither this nor --server: ./aetherflow-data if it is there, else the server on
    /// http://127.0.0.1:5000 if one answers.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// A running server (http://HOST:PORT): show its live usage.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "AF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The store's data directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "aetherflow-data",
        conflicts_with = "store"
    )]
    pub data_dir: PathBuf,
    /// A store by URL instead: s3://BUCKET/PREFIX?endpoint=http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Also read every chunk and every block whose content can be opened, and check their
    /// checksums (slower: reads the whole store).
    #[arg(long)]
    pub read_data: bool,
    /// Open the blocks of this seed too (others are checked without being opened).
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --token (or --insecure).
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: String,
    /// Data directory of the embedded durable store.
    #[arg(long, value_name = "DIR", default_value = "aetherflow-data", conflicts_with_all = ["memory", "store"])]
    pub data_dir: PathBuf,
    /// Keep everything in RAM: lost when the server stops (stats say so).
    #[arg(long, conflicts_with = "store")]
    pub memory: bool,
    /// Another backend by URL: s3://BUCKET/PREFIX?endpoint=http://HOST:PORT (credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; plain http only to this machine unless the
    /// URL adds allow_http=true), file:///DIR or memory://.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// For an s3:// store: how long garbage waits before it is deleted. Every server on the
    /// bucket must finish a commit within it; 0 deletes at once and is safe only for a bucket
    /// this server alone writes.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
    pub gc_grace: std::time::Duration,
    /// For an s3:// store: pack uploads that commits make at once. Commits that arrive while
    /// they are all in flight share the next pack, so that one PUT lands them all (a lone
    /// allocation never waits). 0: no limit, each commit uploads its pack at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub commit_uploads: usize,
    /// Bytes of decompressed blocks to cache (50MiB, 1GiB, plain bytes).
    #[arg(long, default_value = "50MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Virtual capacity: logical bytes all blocks may hold.
    #[arg(long, default_value = "100TiB", value_parser = parse_size)]
    pub capacity: u64,
    /// Largest request body accepted (413 beyond; JSON bodies are held in memory whole).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub max_body: u64,
    /// Bearer token required on every route but /healthz (prefer AF_TOKEN: a command line is
    /// visible to other users).
    #[arg(long, env = "AF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow a non-loopback --listen without a token, and a non-loopback --nbd.
    #[arg(long)]
    pub insecure: bool,
    /// Also serve the volumes over NBD on this address (10809 is the NBD port). NBD carries no
    /// authentication: anything but loopback needs --insecure.
    #[arg(long, value_name = "ADDR")]
    pub nbd: Option<String>,
    /// Chunk size of volumes created from now on: a power of two from 4KiB to 1MiB (existing
    /// volumes keep theirs). Below 64KiB, chunks written whole together are stored in groups
    /// of 64KiB, and a chunk patched later on its own.
    #[arg(long, default_value = "16KiB", value_parser = parse_chunk_size)]
    pub volume_chunk_size: u32,
}

fn parse_chunk_size(text: &str) -> Result<u32, String> {
    let n = aetherflow_engine::units::parse_size(text)?;
    if !n.is_power_of_two() || !(4096..=1 << 20).contains(&n) {
        return Err(format!("'{text}': a power of two from 4KiB to 1MiB"));
    }
    Ok(n as u32)
}

fn parse_size(text: &str) -> Result<u64, String> {
    aetherflow_engine::units::parse_size(text)
}
