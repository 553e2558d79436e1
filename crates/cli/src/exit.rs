//! Exit codes, one per thing a script may want to tell apart.

use aetherflow_engine::Error;

pub const SUCCESS: u8 = 0;
/// Anything not listed below.
pub const FAILURE: u8 = 1;
/// The command line was wrong.
pub const USAGE: u8 = 2;
/// Reading or writing a file failed (missing file, permission, disk full).
pub const IO: u8 = 3;
/// The input is not AetherFlow data, is damaged, or exceeds the reader's limits.
pub const CORRUPT: u8 = 4;
/// The file is encrypted and the seed is missing or wrong.
pub const SEED: u8 = 5;
/// A directory archive was written, but some entries could not be read (or changed while read):
/// the archive is partial. The warnings name them.
pub const PARTIAL: u8 = 6;

/// Text for `--help`.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  other failure
  2  usage error (bad arguments)
  3  I/O error (missing file, permission denied, disk full)
  4  corrupt or non-AetherFlow input, or input over the reader's limits;
     for check: damage found
  5  seed missing or wrong for an encrypted file or a seeded volume
  6  compress-directory: archive written but partial (unreadable entries, named in warnings)";

pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::Io(_) => IO,
                Error::InvalidMagic
                | Error::UnsupportedVersion { .. }
                | Error::Corrupt(_)
                | Error::LimitExceeded(_) => CORRUPT,
                Error::SeedRequired | Error::WrongSeed => SEED,
                Error::InvalidArgument(_) => USAGE,
            };
        }
        if let Some(e) = cause.downcast_ref::<aetherflow_vm::Error>() {
            use aetherflow_vm::Error as Vm;
            return match e {
                Vm::Io(_) => IO,
                Vm::Store(
                    aetherflow_vm::StoreError::Io(_)
                    | aetherflow_vm::StoreError::Locked(_)
                    | aetherflow_vm::StoreError::Unavailable(_)
                    | aetherflow_vm::StoreError::Denied(_)
                    | aetherflow_vm::StoreError::NotFound(_),
                ) => IO,
                Vm::Corrupt { .. }
                | Vm::VolumeCorrupt { .. }
                | Vm::Store(aetherflow_vm::StoreError::Corrupt(_)) => CORRUPT,
                Vm::SeedRequired(_)
                | Vm::WrongSeed(_)
                | Vm::VolumeWrongSeed(_)
                | Vm::VolumeLocked(_) => SEED,
                Vm::InvalidArgument(_) | Vm::MalformedId(_) | Vm::VolumeRefused(_) => USAGE,
                _ => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::commands::volume::ServerRefused>() {
            return match (e.status, e.code.as_str()) {
                (400, _) => USAGE,
                (401 | 423, "WRONG_SEED" | "SEED_REQUIRED" | "VOLUME_LOCKED") => SEED,
                (500, "DATA_CORRUPT") => CORRUPT,
                (503, _) => IO,
                _ => FAILURE,
            };
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return IO;
        }
    }
    FAILURE
}

/// A mistake in how the command was called, found after parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
            match cause.downcast_ref::<Error>() {
                Some(Error::Io(io)) => Some(io),
                _ => None,
            }
        });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
