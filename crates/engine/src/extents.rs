//! Finding the data and the holes of a sparse file with `SEEK_DATA` / `SEEK_HOLE`, so that
//! holes are recorded as runs without reading them: a 15 TiB sparse file costs a few records.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A stretch of a file: bytes to read, or a hole that reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    Data { offset: u64, len: u64 },
    Hole { len: u64 },
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: lseek only reads the descriptor, which `file` keeps open for the whole call.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(at as u64))
}

/// The extents of `file`, in order, covering `0..len`. Filesystems without hole support report
/// one data extent, which is still correct.
pub fn extents(file: &File, len: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let data = match seek(file, at, libc::SEEK_DATA) {
            Ok(Some(data)) => data.min(len),
            Ok(None) => len,
            // No SEEK_DATA on this filesystem: read everything.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(vec![Extent::Data { offset: 0, len }]);
            }
            Err(e) => return Err(e),
        };
        if data > at {
            out.push(Extent::Hole { len: data - at });
        }
        if data >= len {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        out.push(Extent::Data {
            offset: data,
            len: hole - data,
        });
        at = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_and_data_are_found() {
        let mut file = tempfile::tempfile().unwrap();
        file.seek(SeekFrom::Start(1 << 30)).unwrap();
        file.write_all(&[7; 4096]).unwrap();
        file.set_len((1 << 31) + 4096).unwrap();
        let len = file.metadata().unwrap().len();
        let found = extents(&file, len).unwrap();
        let total: u64 = found
            .iter()
            .map(|e| match e {
                Extent::Data { len, .. } | Extent::Hole { len } => *len,
            })
            .sum();
        assert_eq!(total, len);
        let data: u64 = found
            .iter()
            .map(|e| {
                if let Extent::Data { len, .. } = e {
                    *len
                } else {
                    0
                }
            })
            .sum();
        // Filesystems without hole support report it all as data; with support, a block or so.
        assert!(data == len || data <= 1 << 20, "{found:?}");
    }
}
