//! Durations in the API: Go-style strings such as `90s`, `1h30m` or `2160h`.
//!
//! The same grammar is enforced by the schema pattern [`PATTERN`], so the apiserver rejects a
//! malformed value at apply time and [`parse`] only sees well-formed strings; it still returns
//! an error rather than panicking, because an object written before the CRD was installed, or
//! by an older CRD, can reach the operator unchecked. Days are deliberately not a unit: CEL's
//! `duration()` (used by validation rules) follows Go and has none.

use std::time::Duration;

/// The schema pattern for a duration: one or more `<integer><unit>` terms.
pub const PATTERN: &str = r"^([0-9]+(ns|us|ms|s|m|h))+$";

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} is empty; write e.g. \"24h\" or \"1h30m\"")]
    Empty(String),
    #[error(
        "duration {0:?} is not of the form <number><unit>..., units ns, us, ms, s, m, h (e.g. \"1h30m\")"
    )]
    Malformed(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go-style duration made of integer terms (`1h30m`, `500ms`, `0s`).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty(text.to_owned()));
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let overflow = || DurationError::Overflow(text.to_owned());
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(malformed());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let nanos_per_unit: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(malformed()),
        };
        rest = &rest[unit_len..];
        let nanos = value.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
        total = total
            .checked_add(Duration::from_nanos(nanos))
            .ok_or_else(overflow)?;
    }
    Ok(total)
}

/// Writes `duration` in the same grammar, largest units first (`48h`, `1m30s`, `1s500ms`,
/// `0s`), so that what the operator reports reads like what a user writes and parses back.
pub fn format(duration: Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let mut rest = duration.as_nanos();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, nanos) in UNITS {
        if rest >= nanos {
            text.push_str(&format!("{}{unit}", rest / nanos));
            rest %= nanos;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_a_user_writes_and_parses_back() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(48 * 3600), "48h"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1_500), "1s500ms"),
            (Duration::from_nanos(3_600_000_000_007), "1h7ns"),
        ] {
            assert_eq!(format(duration), text);
            assert_eq!(parse(text), Ok(duration));
        }
    }

    #[test]
    fn parses_single_and_compound_terms() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2160h"), Ok(Duration::from_secs(2160 * 3600)));
        assert_eq!(parse("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_the_pattern_rejects() {
        for bad in ["", "h", "10", "1d", "1.5h", "-1s", "1h 30m", "1H", "s10"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn reports_overflow_instead_of_wrapping() {
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("9999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
