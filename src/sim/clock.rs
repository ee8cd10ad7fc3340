//! NIC's wall clock: times in India Standard Time, written without an offset. All three APIs
//! answer in it and the shared state shows token expiries in it, so it sits below them all.
//! The e-way bill validity rule is here too: it ends at a time of day in IST, and both the
//! e-way bill API and generate-EWB-by-IRN of the e-invoice API apply it.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

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

/// NIC's validity rule for regular cargo: one day per 200 km (or part of it).
const KM_PER_DAY: u64 = 200;

/// The longest `transDistance` NIC accepts.
const MAX_DISTANCE_KM: f64 = 4000.0;

/// When an e-way bill generated `now` for `distance_km` stops being valid (IST wall clock):
/// the end of the day that is one day per 200 km (or part of it) ahead, at least one.
pub(super) fn validity_end(distance_km: f64, now: DateTime<Utc>) -> Option<NaiveDateTime> {
    // NIC accepts at most 4000 km; clamping also keeps the date arithmetic far from overflow.
    let km = distance_km.clamp(0.0, MAX_DISTANCE_KM) as u64;
    let days = km.div_ceil(KM_PER_DAY).max(1) as i64;
    let today = now.with_timezone(&ist()).date_naive();
    (today + chrono::Duration::days(days)).and_hms_opt(23, 59, 0)
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
