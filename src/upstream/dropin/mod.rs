//! The drop-in face of each API: what an unmodified NIC or GSTN client sends to gstgate's
//! auth path and data paths, and the bytes it expects back, the same as the API itself would
//! send them, encrypted for that client.
//!
//! gstgate plays the upstream's part towards the client: the client encrypts its login with
//! gstgate's public key, gets a token and SEK of gstgate's, and encrypts its payloads with
//! that SEK. Behind it the real upstream session stays gstgate's. A face only translates: the
//! caller's encrypted request into the plain form gateway mode takes, and gateway mode's
//! plain reply into the caller's encrypted form. Who may log in, and the drop-in sessions
//! themselves, are the gateway's (`crate::dropin`).
//!
//! * `einvoice`, `ewaybill`, `gstn`: one face per API.

mod einvoice;
mod ewaybill;
mod gstn;

use std::time::{Duration, SystemTime};

use http::Method;
use secrecy::SecretString;

use crate::crypto::{b64_decode, AesKey, KeyPair};

pub use einvoice::EinvoiceFace;
pub use ewaybill::EwaybillFace;
pub use gstn::GstnFace;

/// What a caller's call to the auth path asks for.
pub enum CallerLogin {
    /// A NIC login with user name and password; `force` is `ForceRefreshAccessToken`.
    Password {
        /// The API user name.
        username: String,
        /// The password, to be compared with the credential's.
        password: SecretString,
        /// The key the SEK is to be wrapped in.
        app_key: AesKey,
        /// Asks for a new token.
        force: bool,
    },
    /// GSTN: asks for an OTP to be sent to the taxpayer.
    OtpRequest {
        /// The API user name.
        username: String,
    },
    /// GSTN: starts a session with an OTP.
    Otp {
        /// The API user name.
        username: String,
        /// The OTP the caller sent (decrypted).
        otp: SecretString,
        /// The key the SEK is to be wrapped in.
        app_key: AesKey,
    },
    /// GSTN: extends a session without an OTP.
    Refresh {
        /// The API user name.
        username: String,
        /// The caller's current drop-in token.
        token: SecretString,
        /// The new app key, still wrapped in the current SEK (only the session can open it).
        wrapped_app_key: String,
    },
}

impl CallerLogin {
    /// The user name the login is for.
    pub fn username(&self) -> &str {
        match self {
            Self::Password { username, .. }
            | Self::OtpRequest { username }
            | Self::Otp { username, .. }
            | Self::Refresh { username, .. } => username,
        }
    }
}

/// A drop-in session as a login reply shows it.
pub struct Grant<'a> {
    /// The caller's client id, as it sent it.
    pub client_id: &'a str,
    /// The API user name.
    pub username: &'a str,
    /// The drop-in token.
    pub token: &'a str,
    /// The SEK wrapped in the caller's app key, base64.
    pub wrapped_sek: &'a str,
    /// When the token expires.
    pub expires_at: SystemTime,
    /// How long the token lives from now.
    pub lifetime: Duration,
}

/// Why gstgate refuses a drop-in caller: each face answers with the API's own code for it,
/// where the API has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No client id header.
    ClientIdMissing,
    /// No client secret header.
    ClientSecretMissing,
    /// The client id is unknown or the secret is wrong.
    ClientRejected,
    /// No GSTIN header.
    GstinMissing,
    /// The client may not act for this GSTIN, or the GSTIN header is not the token's.
    GstinNotAllowed,
    /// The login names no user.
    UserMissing,
    /// No credential of this GSTIN on this upstream has that user name.
    UserUnknown,
    /// The password is not the credential's.
    PasswordWrong,
    /// The login body is not what the API takes.
    PayloadMalformed,
    /// The login payload does not decrypt with gstgate's key (encrypted with the API's?).
    PayloadUndecryptable,
    /// The app key is not a 32-byte key.
    AppKeyInvalid,
    /// The drop-in token is missing, unknown, for another caller, or expired.
    TokenInvalid,
    /// The OTP was not accepted.
    OtpInvalid,
    /// The data payload does not decrypt with the drop-in SEK or is not JSON.
    DataInvalid,
}

impl Refusal {
    /// What a log line and a problem say about it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ClientIdMissing => "no client id header",
            Self::ClientSecretMissing => "no client secret header",
            Self::ClientRejected => "unknown client id or wrong client secret",
            Self::GstinMissing => "no GSTIN header",
            Self::GstinNotAllowed => "the client may not act for this GSTIN",
            Self::UserMissing => "the login names no user",
            Self::UserUnknown => "no credential of this GSTIN has that user name",
            Self::PasswordWrong => "the password is not the credential's",
            Self::PayloadMalformed => "the login body is not as the API documents it",
            Self::PayloadUndecryptable => {
                "the login payload does not decrypt with gstgate's drop-in key (was it encrypted with the API's public key instead?)"
            }
            Self::AppKeyInvalid => "the app key is not 32 bytes",
            Self::TokenInvalid => "the drop-in token is missing, unknown or expired",
            Self::OtpInvalid => "the OTP was not accepted",
            Self::DataInvalid => "the payload does not decrypt with the drop-in session's key",
        }
    }

    /// The `result` label of `gstgate_dropin_logins_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientIdMissing | Self::ClientSecretMissing | Self::ClientRejected => {
                "client_rejected"
            }
            Self::GstinMissing | Self::GstinNotAllowed => "gstin_not_allowed",
            Self::UserMissing | Self::UserUnknown | Self::PasswordWrong => "credentials_rejected",
            Self::TokenInvalid => "token_invalid",
            Self::OtpInvalid => "otp_rejected",
            Self::PayloadMalformed
            | Self::PayloadUndecryptable
            | Self::AppKeyInvalid
            | Self::DataInvalid => "bad_payload",
        }
    }
}

/// The drop-in behaviour of one API.
pub trait Face: Send + Sync + 'static {
    /// Reads a caller's login body, decrypting it with gstgate's key.
    fn read_login(&self, body: &[u8], key: &KeyPair) -> Result<CallerLogin, Refusal>;

    /// The reply to a login that granted a drop-in session.
    fn login_reply(&self, grant: &Grant<'_>) -> Vec<u8>;

    /// The reply to an OTP request that was accepted.
    fn ack_reply(&self) -> Vec<u8>;

    /// The API's own error reply for `refusal`; `None` where the API has no code for it (the
    /// caller then gets a problem).
    fn refusal_reply(&self, refusal: Refusal) -> Option<Vec<u8>>;

    /// Opens a caller's encrypted data body into the plain body gateway mode takes.
    fn open_request(&self, method: &Method, body: &[u8], sek: &AesKey) -> Result<Vec<u8>, Refusal>;

    /// Seals gateway mode's plain reply for the caller, as the API would have sent it.
    fn seal_reply(&self, method: &Method, plain: &[u8], sek: &AesKey) -> Vec<u8>;
}

/// NIC's login body (e-invoice and e-way bill): `{"Data": B64(RSA(key, B64(json)))}`, opened.
fn open_nic_login(body: &[u8], key: &KeyPair) -> Result<serde_json::Value, Refusal> {
    #[derive(serde::Deserialize)]
    struct Outer {
        #[serde(rename = "Data", alias = "data")]
        data: String,
    }
    let outer: Outer = serde_json::from_slice(body).map_err(|_| Refusal::PayloadMalformed)?;
    let sealed = b64_decode(&outer.data).map_err(|_| Refusal::PayloadUndecryptable)?;
    let plain = key
        .decrypt(&sealed)
        .map_err(|_| Refusal::PayloadUndecryptable)?;
    // Whatever goes wrong once the RSA layer is off is the same refusal as the RSA layer
    // failing: telling "the padding held but the rest is garbage" apart from "the padding
    // failed" would be a padding oracle (Bleichenbacher) on gstgate's key.
    let json = std::str::from_utf8(&plain)
        .ok()
        .and_then(|text| b64_decode(text.trim()).ok())
        .map(zeroize::Zeroizing::new)
        .ok_or(Refusal::PayloadUndecryptable)?;
    serde_json::from_slice(&json).map_err(|_| Refusal::PayloadUndecryptable)
}

/// A text member of a login payload; numbers are taken as their text.
fn text_of(v: &serde_json::Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match v.get(*n)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A NIC app key: base64 of 32 bytes.
fn nic_app_key(v: &serde_json::Value, names: &[&str]) -> Result<AesKey, Refusal> {
    let text = zeroize::Zeroizing::new(text_of(v, names).ok_or(Refusal::AppKeyInvalid)?);
    let bytes = zeroize::Zeroizing::new(b64_decode(&text).map_err(|_| Refusal::AppKeyInvalid)?);
    AesKey::from_slice(&bytes).map_err(|_| Refusal::AppKeyInvalid)
}

/// A user name that is present and not blank.
fn username_of(v: &serde_json::Value, names: &[&str]) -> Result<String, Refusal> {
    text_of(v, names)
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .ok_or(Refusal::UserMissing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::b64_encode;

    /// However the plaintext under gstgate's key is wrong, the refusal is the one for a
    /// payload under another key: the answer never says whether the RSA padding held.
    #[test]
    fn every_failure_past_the_rsa_layer_is_the_undecryptable_refusal() {
        let ours = KeyPair::generate().unwrap();
        let theirs = KeyPair::generate().unwrap();
        let body = |key: &KeyPair, plain: &[u8]| {
            let sealed = key.public_key().encrypt(plain).unwrap();
            serde_json::to_vec(&serde_json::json!({ "Data": b64_encode(&sealed) })).unwrap()
        };
        for (key, plain) in [
            (&ours, &b"not base64 at all {"[..]),
            (&ours, b"bm90IEpTT04="),
            (&ours, &[0xff, 0xfe, 0x00][..]),
            (&theirs, b"eyJVc2VyTmFtZSI6ImEifQ=="),
        ] {
            assert_eq!(
                open_nic_login(&body(key, plain), &ours).err(),
                Some(Refusal::PayloadUndecryptable),
                "{plain:?}"
            );
        }
        assert_eq!(
            open_nic_login(b"{\"Data\": 1}", &ours).err(),
            Some(Refusal::PayloadMalformed)
        );
        let good = body(&ours, b"eyJVc2VyTmFtZSI6ImEifQ==");
        assert_eq!(open_nic_login(&good, &ours).unwrap()["UserName"], "a");
    }
}
