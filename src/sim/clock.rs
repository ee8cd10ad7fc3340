//! NIC's wall clock: times in India Standard Time, written without an offset. All three APIs
//! answer in it and the shared state shows token expiries in it, so it sits below them all.

use chrono::{DateTime, FixedOffset, Utc};

/// IST is UTC+05:30; NIC timestamps are IST wall-clock time without an offset.
const IST_OFFSET_SECS: i32 = 5 * 3600 + 30 * 60;

/// NIC's timestamp format (`TokenExpiry`, `AckDt`, `CancelDate`).
const NIC_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The UTC+05:30 offset.
pub(super) fn ist() -> FixedOffset {
    FixedOffset::east_opt(IST_OFFSET_SECS).unwrap_or_else(|| unreachable!("+05:30 is in range"))
}

/// A UTC instant as NIC writes it: IST wall-clock time, no offset.
pub fn to_ist(t: DateTime<Utc>) -> String {
    t.with_timezone(&ist()).format(NIC_TIME_FORMAT).to_string()
}

/// Now, as NIC writes it.
pub fn ist_now() -> String {
    to_ist(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ist_is_five_and_a_half_hours_ahead() {
        let t = DateTime::parse_from_rfc3339("2024-01-01T20:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(to_ist(t), "2024-01-02 01:30:00");
    }
}
