//! What NIC's two APIs, e-invoice and e-way bill, share: the login body's crypto and the IST
//! timestamps.

use std::time::SystemTime;

use chrono::{FixedOffset, NaiveDateTime, TimeZone};

use crate::crypto::PublicKey;
use crate::problem::GatewayError;

/// IST is UTC+05:30; NIC's `TokenExpiry` and `AckDt` are IST wall-clock times with no offset.
const IST_OFFSET_SECS: i32 = 5 * 3600 + 30 * 60;

/// NIC's login body (e-invoice and e-way bill): `{"Data": B64(RSA(key, B64(json)))}`.
pub(crate) fn login_body(inner: &[u8], key: &PublicKey) -> Result<Vec<u8>, GatewayError> {
    // NIC base64-encodes the JSON before RSA, which is what makes long passwords overflow the
    // 245-byte block: say so plainly instead of failing inside RSA.
    let encoded = zeroize::Zeroizing::new(crate::crypto::b64_encode(inner));
    let sealed = key.encrypt(encoded.as_bytes()).map_err(|e| {
        GatewayError::UpstreamConfigRejected {
            upstream_code: None,
            message: format!("login payload cannot be encrypted: {e}; the username or password is too long for the upstream's RSA key"),
        }
    })?;
    serde_json::to_vec(&serde_json::json!({ "Data": crate::crypto::b64_encode(&sealed) }))
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// Parses NIC's `yyyy-MM-dd HH:mm:ss` IST timestamp into a UTC instant.
pub fn parse_ist(text: &str) -> Option<SystemTime> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S").ok()?;
    let ist = FixedOffset::east_opt(IST_OFFSET_SECS)?;
    let at = ist.from_local_datetime(&naive).single()?;
    Some(SystemTime::from(at))
}

/// Formats a UTC instant as NIC's IST `yyyy-MM-dd HH:mm:ss`.
pub fn format_ist(at: SystemTime) -> String {
    let utc: chrono::DateTime<chrono::Utc> = at.into();
    match FixedOffset::east_opt(IST_OFFSET_SECS) {
        Some(ist) => utc
            .with_timezone(&ist)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => utc.format("%Y-%m-%d %H:%M:%S").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_expiry_is_ist_not_utc() {
        let at = parse_ist("2026-11-25 17:30:00").unwrap();
        let utc: chrono::DateTime<chrono::Utc> = at.into();
        assert_eq!(
            utc.format("%Y-%m-%d %H:%M:%S").to_string(),
            "2026-11-25 12:00:00"
        );
        assert_eq!(format_ist(at), "2026-11-25 17:30:00");
        assert!(parse_ist("25/11/2026 17:30").is_none());
    }
}
