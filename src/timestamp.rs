//! The one way gstgate writes a point in time in an answer, a page or an alert: RFC 3339 in
//! UTC, whole seconds, `Z` (`2026-11-26T00:26:59Z`), so that a script reads every timestamp
//! it gets with one parser.

use std::time::SystemTime;

/// `at` as RFC 3339 UTC with whole seconds and `Z`.
pub fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn whole_seconds_in_utc_with_z() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_116_819_250);
        assert_eq!(super::rfc3339(at), "2025-11-26T00:26:59Z");
    }
}
