//! UTC timestamps for file names.

/// Milliseconds since the epoch as a compact UTC timestamp for file names,
/// `20261126T170000Z` (ISO 8601 basic format: sorts by time, no `:` that
/// some file systems refuse). Sub-second digits are dropped. A time outside
/// chrono's range reads as the epoch.
///
/// ```
/// assert_eq!(spark_evidence::utc_stamp(1_795_712_400_999), "20261126T170000Z");
/// assert_eq!(spark_evidence::utc_stamp(0), "19700101T000000Z");
/// ```
#[must_use]
pub fn utc_stamp(ms: i64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(ms).unwrap_or(chrono::DateTime::UNIX_EPOCH);
    time.format("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;

    #[test]
    fn stamps_are_utc_seconds() {
        assert_eq!(utc_stamp(-1), "19691231T235959Z");
        assert_eq!(utc_stamp(i64::MAX), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000Z");
    }
}
