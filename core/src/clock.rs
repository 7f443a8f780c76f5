//! Wall-clock time, the one place the crate reads it: unix seconds and milliseconds now,
//! and RFC 3339 UTC text for either (what JSON and YAML output show).
//!
//! Certificate validity, token expiry and lease keep-alives are in unix seconds; watch
//! events, agent status and propagation figures in unix milliseconds. A clock set before
//! 1970 reads as 0; one past `i64::MAX` as that.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Unix time now, in seconds.
#[must_use]
pub fn unix_now() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

/// Unix time now, in milliseconds.
#[must_use]
pub fn unix_now_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Unix seconds as an RFC 3339 UTC time, e.g. `2026-12-06T06:24:56Z` (the number itself
/// when out of range).
#[must_use]
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Unix milliseconds as an RFC 3339 UTC time with its milliseconds, e.g.
/// `2026-12-06T06:24:56.123Z` (the number itself when out of range).
#[must_use]
pub fn rfc3339_ms(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_agrees_in_both_units() {
        let (secs, ms) = (unix_now(), unix_now_ms());
        assert!(secs > 1_700_000_000, "{secs}");
        assert!((ms / 1000 - secs).abs() <= 1, "{secs} {ms}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_796_538_296), "2026-12-06T06:24:56Z");
        assert_eq!(rfc3339_ms(1_796_538_296_123), "2026-12-06T06:24:56.123Z");
        assert_eq!(rfc3339_ms(1_796_538_296_000), "2026-12-06T06:24:56Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn out_of_range_times_stay_numbers() {
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
        assert_eq!(rfc3339_ms(i64::MAX), i64::MAX.to_string());
    }
}
