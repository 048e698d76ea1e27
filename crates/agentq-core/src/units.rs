//! Lengths of time and numbers of bytes as people write them: in `agentq.toml`, on the command
//! line and in the API.

use std::time::Duration;

/// Parses `"10m"`, `"1h 30m"`, `"250ms"` or `"45"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(trimmed).map_err(|_| {
        format!("invalid duration {text:?}: write a number and a unit, e.g. \"250ms\", \"30s\", \"10m\", \"1h 30m\"")
    })
}

/// Parses `"10MiB"`, `"512 KB"`, `"1G"` or `"4096"` (bytes). K/M/G are powers of 1024 when written
/// with `i` and powers of 1000 otherwise, as the units say.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {text:?}: write a number and a unit, e.g. \"512KiB\", \"10MiB\", \"1GB\""
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    Ok((number * factor as f64) as u64)
}

/// A duration as `parse_duration` reads it: `"10m"`, `"1h 30m"`, `"250ms"`, `"30days"`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A size as `parse_size` reads it, in the largest unit it is a whole number of (`"4GiB"`,
/// `"64KiB"`, `"1MB"`), or in bytes (`"1234B"`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 6] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ];
    UNITS
        .iter()
        .find(|(_, factor)| bytes >= *factor && bytes.is_multiple_of(*factor))
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, factor)| format!("{}{unit}", bytes / factor),
        )
}

/// A duration that must be above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

/// A size that must be above zero.
pub fn parse_positive_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("must be above zero".into()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_formatted_reads_back_the_same() {
        for (bytes, text) in [
            (4 << 30, "4GiB"),
            (64 << 20, "64MiB"),
            (1536, "1536B"),
            (3 << 10, "3KiB"),
            (2_000_000, "2MB"),
            (0, "0B"),
            (4097, "4097B"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for secs in [0, 1, 90, 600, 5400, 30 * 86_400] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{secs}");
        }
        let d = Duration::from_millis(250);
        assert_eq!(format_duration(d), "250ms");
        assert_eq!(parse_duration("250ms"), Ok(d));
    }
}
