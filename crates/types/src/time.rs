//! Timestamps: stored as integer milliseconds since the Unix epoch, shown as RFC 3339 UTC with
//! milliseconds (`2026-11-29T10:00:00.123Z`) everywhere the API prints them.

use chrono::{SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats epoch milliseconds the way every API timestamp is formatted.
pub fn fmt_ms(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        // Out-of-range values cannot come from `now_ms`; print the epoch rather than panic.
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Parses an RFC 3339 timestamp back to epoch milliseconds.
pub fn parse_ts(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(fmt_ms(1_764_410_400_123), "2025-11-29T10:00:00.123Z");
        assert_eq!(
            parse_ts("2025-11-29T10:00:00.123Z"),
            Some(1_764_410_400_123)
        );
    }
}
