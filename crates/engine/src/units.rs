//! Sizes for people: `1.00 MB` out, `50MiB` in.
//!
//! Output uses binary multiples (1 MB = 1,048,576 bytes), as the product's messages always have;
//! exact byte counts sit beside every such string in JSON output.

/// `1536` → `"1.50 KB"`, `3` → `"3 B"`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// `original / stored` as `"4.25x"`; content of size 0 is `"1.00x"`.
pub fn format_ratio(original: u64, stored: u64) -> String {
    format!("{:.2}x", ratio(original, stored))
}

/// `original / stored`, 1.0 when either is zero.
pub fn ratio(original: u64, stored: u64) -> f64 {
    if original == 0 || stored == 0 {
        1.0
    } else {
        original as f64 / stored as f64
    }
}

/// Parses `50MiB`, `100TiB`, `1.5GB`, `4096`: binary multiples whether or not the `i` is
/// written, matching how sizes are printed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (try 50MiB or 4096)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(format_bytes(1_048_576), "1.00 MB");
        assert_eq!(format_bytes(100 << 40), "100.00 TB");
        assert_eq!(format_bytes(12), "12 B");
        assert_eq!(format_ratio(130, 100), "1.30x");
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("100TiB"), Ok(100 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
