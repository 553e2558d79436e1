//! Inputs and outputs: paths or `-`, and output files that appear only when complete.

use std::fs::{File, Permissions};
use std::io::{self, IsTerminal};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tempfile::NamedTempFile;

pub fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Human name of a path argument, for messages.
pub fn display(path: &Path) -> String {
    if is_dash(path) {
        "stdin".into()
    } else {
        path.display().to_string()
    }
}

/// Opens an input file with an error that names it.
pub fn open_input(path: &Path) -> anyhow::Result<File> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        ))
        .with_context(|| format!("{}", path.display()));
    }
    Ok(file)
}

/// An output file being written under a temporary name beside its target. Dropping it without
/// [`PendingOutput::commit`] removes the temporary file, so a failure leaves nothing behind under
/// the target name.
#[derive(Debug)]
pub struct PendingOutput {
    temp: NamedTempFile,
    target: PathBuf,
}

impl PendingOutput {
    pub fn create(target: &Path) -> anyhow::Result<PendingOutput> {
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if target.is_dir() {
            anyhow::bail!("{}: is a directory", target.display());
        }
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .with_context(|| format!("{}: cannot create the output", target.display()))?;
        Ok(PendingOutput {
            temp,
            target: target.to_path_buf(),
        })
    }

    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    /// Renames the finished output to its target. With `sync`, the data is flushed to the disk
    /// first and the directory after, so that the output also survives a power cut.
    pub fn commit(self, sync: bool) -> anyhow::Result<()> {
        let target = self.target;
        if sync {
            self.temp
                .as_file()
                .sync_all()
                .with_context(|| format!("{}: cannot sync", target.display()))?;
        }
        self.temp
            .persist(&target)
            .map_err(|e| e.error)
            .with_context(|| format!("{}: cannot rename into place", target.display()))?;
        if sync {
            let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
            File::open(dir.unwrap_or(Path::new(".")))
                .and_then(|d| d.sync_all())
                .with_context(|| format!("{}: cannot sync its directory", target.display()))?;
        }
        Ok(())
    }
}

/// Refuses to write binary data to a terminal, where it would only garble the screen.
pub fn stdout_for_binary() -> anyhow::Result<io::Stdout> {
    let stdout = io::stdout();
    if stdout.is_terminal() {
        return Err(crate::exit::UsageError(
            "refusing to write binary data to a terminal; name an output file or redirect stdout"
                .into(),
        )
        .into());
    }
    Ok(stdout)
}

/// A writer whose errors name its file, so that "No space left on device" says where.
#[derive(Debug)]
pub struct NamedWriter<W> {
    pub inner: W,
    pub name: String,
}

impl<W: io::Write> io::Write for NamedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| name_error(e, &self.name))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| name_error(e, &self.name))
    }
}

fn name_error(e: io::Error, name: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{name}: {e}"))
}
