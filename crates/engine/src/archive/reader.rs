//! The content of a directory archive, read as stretches for the compression pipeline.
//!
//! ```text
//! table | run of small files | large file | run of small files | ... | amendments
//! ```
//!
//! Small files flow through one chunk stream, so that thousands of them share chunks (no
//! per-file record, no per-file zstd frame). A file of at least the minimum chunk size, or a
//! sparse one, is a stretch of its own: chunk boundaries restart at its first byte, so two
//! copies of it chunk identically and the second costs only references; its holes become hole
//! runs without being read. A file that cannot be read, or changes size while it is read, still
//! fills exactly the size the table gave it (zeros, or a hole when it is a stretch of its own)
//! and is listed in the amendments.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::walk::FileSource;
use crate::compress::{Stretch, StretchRead};
use crate::crypto::Keys;
use crate::error::Result;
use crate::extents::{extents, Extent};
use crate::format::entry_table::{encode_amendments, Amendment, Entry};
use crate::progress::Progress;

/// How files are opened for reading: normally [`open_no_follow`]; tests substitute one that
/// fails, to exercise the partial-archive path whatever the user running them may read.
pub type OpenFile = fn(&Path) -> io::Result<File>;

/// Opens a file for reading without following a symlink put in its place since the walk.
pub fn open_no_follow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

/// One step of the plan.
enum Step {
    Table,
    /// Small files, by index into `files`, read as one stream.
    Run(Vec<usize>),
    /// A file read as a stretch (or several, with holes) of its own.
    Own(usize),
    /// One data extent of the current own file.
    Extent {
        offset: u64,
        len: u64,
    },
    Hole(u64),
    Amendments,
}

/// What `read` is serving now.
enum Current {
    Nothing,
    Bytes(Vec<u8>, usize),
    /// `left` bytes of file `file` still to read; `whole` when it ends with this read.
    File {
        file: File,
        index: usize,
        left: u64,
        whole: bool,
    },
    Zeros(u64),
}

/// What the reader found, for the caller's summary.
#[derive(Debug, Default)]
pub(crate) struct ReadReport {
    pub amendments: Vec<(u64, Amendment, String)>,
}

pub(crate) struct ArchiveReader<'a> {
    entries: &'a [Entry],
    files: &'a [FileSource],
    table: Vec<u8>,
    table_mac: [u8; 32],
    keys: Option<Arc<Keys>>,
    open: OpenFile,
    progress: &'a dyn Progress,
    report: &'a Mutex<ReadReport>,
    steps: VecDeque<Step>,
    /// Files of the current run still to open, in order.
    run: VecDeque<usize>,
    /// The file being read as its own stretch, kept open across its extents.
    own: Option<(usize, File)>,
    current: Current,
}

impl<'a> ArchiveReader<'a> {
    /// `table` is the encoded entry table, `table_mac` its MAC; files of `own_threshold` bytes
    /// or more are stretches of their own.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        entries: &'a [Entry],
        files: &'a [FileSource],
        table: Vec<u8>,
        keys: Option<Arc<Keys>>,
        open: OpenFile,
        own_threshold: u64,
        progress: &'a dyn Progress,
        report: &'a Mutex<ReadReport>,
    ) -> Self {
        let table_mac = table[table.len() - 32..].try_into().expect("32 bytes");
        let mut steps = VecDeque::from([Step::Table]);
        let mut run = Vec::new();
        for (i, file) in files.iter().enumerate() {
            if file.size >= own_threshold || file.sparse {
                if !run.is_empty() {
                    steps.push_back(Step::Run(std::mem::take(&mut run)));
                }
                steps.push_back(Step::Own(i));
            } else {
                run.push(i);
            }
        }
        if !run.is_empty() {
            steps.push_back(Step::Run(run));
        }
        steps.push_back(Step::Amendments);
        ArchiveReader {
            entries,
            files,
            table,
            table_mac,
            keys,
            open,
            progress,
            report,
            steps,
            run: VecDeque::new(),
            own: None,
            current: Current::Nothing,
        }
    }

    fn amend(&self, index: usize, why: Amendment, detail: String) {
        let path = self.entries[self.files[index].entry].path.display();
        let message = match why {
            Amendment::Unreadable => format!("{path}: not archived, cannot read it: {detail}"),
            Amendment::Changed => format!("{path}: changed while being archived ({detail})"),
        };
        self.progress.warn(&message);
        let entry = self.files[index].entry as u64;
        let mut report = self.report.lock().expect("report lock");
        match report.amendments.iter_mut().find(|(i, ..)| *i == entry) {
            // Unreadable outweighs changed: such an entry is not restored at all.
            Some(known) if why == Amendment::Unreadable => *known = (entry, why, detail),
            Some(_) => {}
            None => report.amendments.push((entry, why, detail)),
        }
    }

    /// Opens file `index`, noting a size change since the walk.
    fn open_file(&self, index: usize) -> Option<File> {
        let source = &self.files[index];
        let opened = (self.open)(&source.path).and_then(|file| {
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::other("no longer a regular file"));
            }
            Ok((file, meta.len()))
        });
        match opened {
            Ok((file, len)) => {
                if len != source.size {
                    let detail = format!("{} bytes when listed, {len} when read", source.size);
                    self.amend(index, Amendment::Changed, detail);
                }
                Some(file)
            }
            Err(e) => {
                self.amend(index, Amendment::Unreadable, e.to_string());
                None
            }
        }
    }

    fn file_done(&self, index: usize) {
        let source = &self.files[index];
        self.progress
            .entry(&self.entries[source.entry].path, source.size);
    }

    /// Fills `buf` from the current file, switching to zeros if it ends early or fails.
    fn read_file(&mut self, buf: &mut [u8]) -> usize {
        let Current::File {
            file,
            index,
            left,
            whole,
        } = &mut self.current
        else {
            unreachable!("called on a file");
        };
        let (index, whole) = (*index, *whole);
        let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        match file.read(&mut buf[..want]) {
            Ok(0) => {
                let left = *left;
                self.amend(index, Amendment::Changed, format!("{left} bytes short"));
                self.current = Current::Zeros(left);
                if whole {
                    self.file_done(index);
                }
                0
            }
            Ok(n) => {
                *left -= n as u64;
                if *left == 0 {
                    self.current = Current::Nothing;
                    if whole {
                        self.file_done(index);
                    }
                }
                n
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                let left = *left;
                self.amend(index, Amendment::Unreadable, e.to_string());
                self.current = Current::Zeros(left);
                if whole {
                    self.file_done(index);
                }
                0
            }
        }
    }
}

impl Read for ArchiveReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.current {
                Current::Bytes(bytes, at) => {
                    let n = buf.len().min(bytes.len() - *at);
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    if *at == bytes.len() {
                        self.current = Current::Nothing;
                    }
                    if n > 0 {
                        return Ok(n);
                    }
                }
                Current::Zeros(left) => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    buf[..n].fill(0);
                    *left -= n as u64;
                    if *left == 0 {
                        self.current = Current::Nothing;
                    }
                    if n > 0 {
                        return Ok(n);
                    }
                }
                Current::File { .. } => {
                    let n = self.read_file(buf);
                    if n > 0 {
                        return Ok(n);
                    }
                }
                Current::Nothing => {
                    // Within a run, go on with its next file; otherwise the stretch ends here.
                    let Some(index) = self.run.pop_front() else {
                        return Ok(0);
                    };
                    let size = self.files[index].size;
                    self.current = match self.open_file(index) {
                        Some(file) => Current::File {
                            file,
                            index,
                            left: size,
                            whole: true,
                        },
                        None => Current::Zeros(size),
                    };
                    if size == 0 {
                        self.current = Current::Nothing;
                        self.file_done(index);
                    }
                }
            }
        }
    }
}

impl StretchRead for ArchiveReader<'_> {
    fn next_stretch(&mut self) -> Result<Option<Stretch>> {
        loop {
            let Some(step) = self.steps.pop_front() else {
                return Ok(None);
            };
            match step {
                Step::Table => {
                    for entry in self.entries.iter().filter(|e| e.data_len() == 0) {
                        if !matches!(
                            entry.kind,
                            crate::format::entry_table::EntryKind::File { .. }
                        ) {
                            self.progress.entry(&entry.path, 0);
                        }
                    }
                    self.current = Current::Bytes(std::mem::take(&mut self.table), 0);
                    return Ok(Some(Stretch::Data));
                }
                Step::Run(files) => {
                    self.run = files.into();
                    return Ok(Some(Stretch::Data));
                }
                Step::Own(index) => {
                    let size = self.files[index].size;
                    let Some(file) = self.open_file(index) else {
                        self.file_done(index);
                        return Ok(Some(Stretch::Hole(size)));
                    };
                    let layout = if self.files[index].sparse {
                        extents(&file, size).unwrap_or_else(|_| {
                            vec![Extent::Data {
                                offset: 0,
                                len: size,
                            }]
                        })
                    } else {
                        vec![Extent::Data {
                            offset: 0,
                            len: size,
                        }]
                    };
                    for extent in layout.into_iter().rev() {
                        self.steps.push_front(match extent {
                            Extent::Data { offset, len } => Step::Extent { offset, len },
                            Extent::Hole { len } => Step::Hole(len),
                        });
                    }
                    self.own = Some((index, file));
                    if self.steps.front().is_none_or(|s| !is_part_of_own(s)) {
                        self.own = None;
                        self.file_done(index);
                    }
                }
                Step::Extent { offset, len } => {
                    let (index, file) = self.own.as_mut().expect("an extent follows its file");
                    let index = *index;
                    let last = self.steps.front().is_none_or(|s| !is_part_of_own(s));
                    self.current = match file.seek(SeekFrom::Start(offset)) {
                        Ok(_) => Current::File {
                            file: file.try_clone()?,
                            index,
                            left: len,
                            whole: last,
                        },
                        Err(e) => {
                            self.amend(index, Amendment::Unreadable, e.to_string());
                            Current::Zeros(len)
                        }
                    };
                    if last {
                        self.own = None;
                    }
                    return Ok(Some(Stretch::Data));
                }
                Step::Hole(len) => {
                    if self.steps.front().is_none_or(|s| !is_part_of_own(s)) {
                        if let Some((index, _)) = self.own.take() {
                            self.file_done(index);
                        }
                    }
                    return Ok(Some(Stretch::Hole(len)));
                }
                Step::Amendments => {
                    let report = self.report.lock().expect("report lock");
                    let mut list: Vec<(u64, Amendment)> =
                        report.amendments.iter().map(|(i, w, _)| (*i, *w)).collect();
                    drop(report);
                    list.sort_by_key(|(i, _)| *i);
                    let bytes = encode_amendments(&list, &self.table_mac, self.keys.as_deref());
                    self.current = Current::Bytes(bytes, 0);
                    return Ok(Some(Stretch::Data));
                }
            }
        }
    }
}

fn is_part_of_own(step: &Step) -> bool {
    matches!(step, Step::Extent { .. } | Step::Hole(_))
}
