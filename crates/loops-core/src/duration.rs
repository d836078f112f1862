//! Human durations as people write them in config files: `30s`, `10m`, `1h30m`, `1d`,
//! `500ms`. One parser for every duration so every error reads the same.

use std::time::Duration;

/// Why a duration did not parse; the message is meant to be shown to a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("an empty duration")]
    Empty,
    #[error("`{0}` is not a duration")]
    Invalid(String),
    #[error("`{0}` has no unit")]
    NoUnit(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// The longest duration any setting takes: ten years is more than any schedule needs, and
/// keeps chrono arithmetic on instants from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The help line shown with every duration error.
pub const DURATION_HELP: &str =
    "write a number followed by a unit (ms, s, m, h, d), e.g. 30s, 10m, 1h30m, 1d";

/// Parses `1h30m`, `45s`, `2d`, `250ms`, with optional spaces between parts.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return Err(DurationError::NoUnit(s.to_string()));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    let mut parts = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(DurationError::Invalid(s.to_string()));
        }
        let number: u128 = s[start..i]
            .parse()
            .map_err(|_| DurationError::Overflow(s.to_string()))?;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u128 = match &s[ustart..i] {
            "ms" => 1,
            "s" | "sec" | "secs" => 1_000,
            "m" | "min" | "mins" => 60_000,
            "h" | "hr" | "hrs" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "" => return Err(DurationError::NoUnit(s.to_string())),
            _ => return Err(DurationError::Invalid(s.to_string())),
        };
        total = number
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        parts += 1;
    }
    if parts == 0 {
        return Err(DurationError::Invalid(s.to_string()));
    }
    if total > MAX_DURATION.as_millis() {
        return Err(DurationError::Overflow(s.to_string()));
    }
    Ok(Duration::from_millis(total as u64))
}

/// Formats a duration the way it would be written in a config file (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_people_write() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("600"),
            Err(DurationError::NoUnit(_))
        ));
        assert!(matches!(
            parse_duration("10 minutes"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("m10"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("99999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["30s", "10m", "1h30m", "1d", "250ms", "1m5s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
