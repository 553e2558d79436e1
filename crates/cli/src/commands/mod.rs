//! One module per subcommand; each returns the exit code of a successful run.

mod check;
mod compress;
mod compress_directory;
mod decompress;
mod memory_info;
mod serve;
mod stats;
mod upgrade_store;
pub mod volume;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Compress(args) => compress::run(args),
        Command::Decompress(args) => decompress::run(args),
        Command::CompressDirectory(args) => compress_directory::run(args),
        Command::Stats(args) => stats::run(args),
        Command::MemoryInfo(args) => memory_info::run(args),
        Command::Check(args) => check::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Volume(args) => volume::run(args),
        Command::UpgradeStore(args) => upgrade_store::run(args),
    }
}

/// Worker threads: the flag, or one per core.
fn threads(flag: Option<u16>) -> usize {
    flag.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    )
}
