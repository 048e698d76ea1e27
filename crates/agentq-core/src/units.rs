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
