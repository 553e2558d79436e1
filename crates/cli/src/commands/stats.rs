//! `aetherflow stats IN.af`: header, trailer and index only; nothing is decompressed.

use std::io::{self, Write};

use aetherflow_engine::archive::{list, ArchiveListing};
use aetherflow_engine::format::entry_table::{Amendment, EntryKind};
use aetherflow_engine::units::{format_bytes, format_ratio};
use aetherflow_engine::{AfFile, Limits};
use anyhow::Context;

use crate::cli::StatsArgs;
use crate::exit::SUCCESS;
use crate::files::open_input;

pub fn run(args: StatsArgs) -> anyhow::Result<u8> {
    let seed = crate::seed::resolve(&args.seed)?;
    let name = args.input.display().to_string();
    let file = open_input(&args.input)?;
    let af = AfFile::open(file, seed.as_ref(), &Limits::default()).with_context(|| name.clone())?;
    let info = af.info().with_context(|| name.clone())?;
    // A directory archive's file list, when it can be read (a sealed one needs the seed).
    let listing = match (info.archive, &info.sha256) {
        (true, Some(_)) => Some(list(&af, &Limits::default()).with_context(|| name.clone())?),
        _ => None,
    };
    let mut out = io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&info)?;
        value["file"] = name.into();
        if let Some(listing) = &listing {
            value["entries"] = serde_json::to_value(&listing.table.entries)?;
            value["amendments"] = serde_json::to_value(&listing.amendments)?;
        }
        writeln!(out, "{value}")?;
        return Ok(SUCCESS);
    }
    let t = &info.totals;
    let stored = t.zstd_chunks + t.raw_chunks;
    writeln!(out, "File:              {name}")?;
    writeln!(
        out,
        "Format:            AetherFlow .af v{}{}{}",
        info.format_version,
        if info.archive {
            ", directory archive"
        } else {
            ""
        },
        if info.encrypted {
            ", encrypted (XChaCha20-Poly1305, Argon2id)"
        } else {
            ", not encrypted"
        }
    )?;
    writeln!(
        out,
        "Original size:     {} ({} bytes)",
        format_bytes(t.logical_bytes),
        t.logical_bytes
    )?;
    writeln!(
        out,
        "Compressed size:   {} ({} bytes)",
        format_bytes(info.file_bytes),
        info.file_bytes
    )?;
    writeln!(
        out,
        "Compression ratio: {}",
        format_ratio(t.logical_bytes, info.file_bytes)
    )?;
    writeln!(out, "zstd level:        {}", info.level)?;
    writeln!(
        out,
        "Chunking:          FastCDC {} / {} / {} (min / avg / max)",
        format_bytes(info.chunking.min.into()),
        format_bytes(info.chunking.avg.into()),
        format_bytes(info.chunking.max.into())
    )?;
    writeln!(
        out,
        "Unique chunks:     {stored} ({} zstd, {} raw), {} of content",
        t.zstd_chunks,
        t.raw_chunks,
        format_bytes(t.unique_bytes)
    )?;
    writeln!(out, "Stored payload:    {}", format_bytes(t.payload_bytes))?;
    writeln!(
        out,
        "Duplicate chunks:  {} ({})",
        t.reference_chunks,
        format_bytes(t.reference_bytes)
    )?;
    writeln!(
        out,
        "Zero runs:         {} ({})",
        t.zero_runs,
        format_bytes(t.zero_bytes)
    )?;
    writeln!(
        out,
        "Holes:             {} ({})",
        t.hole_runs,
        format_bytes(t.hole_bytes)
    )?;
    match &info.sha256 {
        Some(sha) if t.hole_runs > 0 && !info.holes_hashed => writeln!(
            out,
            "SHA-256:           {sha} (of the data; holes excluded)"
        )?,
        Some(sha) => writeln!(out, "SHA-256:           {sha}")?,
        None => writeln!(out, "SHA-256:           (sealed: give the seed to see it)")?,
    }
    if info.archive && listing.is_none() {
        writeln!(
            out,
            "Entries:           (sealed: give the seed to see them)"
        )?;
    }
    if let Some(listing) = &listing {
        print_entries(&mut out, listing)?;
    }
    Ok(SUCCESS)
}

/// One line per entry, as `ls -l` would show it: type and mode, size, time, path.
fn print_entries(out: &mut impl Write, listing: &ArchiveListing) -> io::Result<()> {
    let entries = &listing.table.entries;
    let count = |f: fn(&EntryKind) -> bool| entries.iter().filter(|e| f(&e.kind)).count();
    writeln!(
        out,
        "Entries:           {} ({} folders, {} files, {} symlinks, {} hard links)",
        entries.len(),
        count(|k| matches!(k, EntryKind::Directory)),
        count(|k| matches!(k, EntryKind::File { .. })),
        count(|k| matches!(k, EntryKind::Symlink { .. })),
        count(|k| matches!(k, EntryKind::HardLink { .. })),
    )?;
    for (i, entry) in entries.iter().enumerate() {
        let (kind, size, suffix) = match &entry.kind {
            EntryKind::Directory => ('d', 0, "/".to_string()),
            EntryKind::File { size } => ('-', *size, String::new()),
            EntryKind::Symlink { target } => ('l', 0, format!(" -> {}", target.display())),
            EntryKind::HardLink { target } => {
                let size = entries[*target as usize].data_len();
                let first = entries[*target as usize].path.display();
                ('h', size, format!(" => {first}"))
            }
        };
        let note = match listing.amendments.iter().find(|(e, _)| *e as usize == i) {
            Some((_, Amendment::Unreadable)) => "  (not archived: unreadable)",
            Some((_, Amendment::Changed)) => "  (changed while archived)",
            None => "",
        };
        let path = if entry.path.as_os_str().is_empty() {
            ".".into()
        } else {
            entry.path.display().to_string()
        };
        writeln!(
            out,
            "  {kind}{} {size:>14} {}  {path}{suffix}{note}",
            mode_string(entry.mode),
            utc(entry.mtime.secs)
        )?;
    }
    Ok(())
}

fn mode_string(mode: u32) -> String {
    let mut out = String::with_capacity(9);
    for (shift, special, lower) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => lower.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

/// `YYYY-MM-DD HH:MM` in UTC, from seconds since the epoch (the civil-from-days algorithm).
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_dates_read_like_ls() {
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o4751), "rwsr-x--x");
        assert_eq!(mode_string(0o1777), "rwxrwxrwt");
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_000_000_000), "2001-09-09 01:46");
        assert_eq!(utc(-86_400), "1969-12-31 00:00");
    }
}
