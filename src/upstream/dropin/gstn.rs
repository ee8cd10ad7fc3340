//! The drop-in face of GSTN returns.

use std::sync::OnceLock;

use http::Method;
use serde_json::{json, Value};

use super::{text_of, username_of, CallerLogin, Face, Grant, Refusal};
use crate::crypto::{b64_decode, AesKey, KeyPair};
use crate::upstream::bodiless;
use crate::upstream::sealed::{self, Layers};

/// GSTN returns as a drop-in client sees it.
pub struct GstnFace;

/// GSTN's code and message for a refusal.
fn code_of(refusal: Refusal) -> Option<(&'static str, &'static str)> {
    Some(match refusal {
        Refusal::TokenInvalid => ("AUTH4033", "Invalid Session"),
        Refusal::OtpInvalid => ("AUTH4034", "Invalid OTP"),
        Refusal::PayloadUndecryptable | Refusal::AppKeyInvalid => {
            ("TEC4002", "Invalid public key or app key")
        }
        _ => return None,
    })
}

/// The app key of an OTP login: `B64(RSA(key, app key))`, the key's 32 bytes encrypted as
/// they are. What does not decrypt to 32 bytes is not refused here: it becomes a key derived
/// from the ciphertext (implicit rejection), with which the OTP then fails to open, the same
/// refusal as a wrong OTP. Refusing it outright would tell a caller whether its ciphertext
/// had valid PKCS#1 padding and 32 bytes inside, an oracle (Bleichenbacher) that decrypts
/// another client's app key one query at a time.
fn rsa_app_key(payload: &Value, key: &KeyPair) -> Result<AesKey, Refusal> {
    static DERIVE: OnceLock<AesKey> = OnceLock::new();
    let text = text_of(payload, &["app_key"]).ok_or(Refusal::PayloadMalformed)?;
    let sealed = b64_decode(&text).unwrap_or_else(|_| text.clone().into_bytes());
    let opened = key
        .decrypt(&sealed)
        .ok()
        .and_then(|plain| AesKey::from_slice(&plain).ok());
    Ok(opened.unwrap_or_else(|| {
        let derive = DERIVE.get_or_init(AesKey::random);
        AesKey::from_slice(&derive.hmac(&sealed)).unwrap_or_else(|_| AesKey::random())
    }))
}

impl Face for GstnFace {
    fn read_login(&self, body: &[u8], key: &KeyPair) -> Result<CallerLogin, Refusal> {
        let payload: Value = serde_json::from_slice(body).map_err(|_| Refusal::PayloadMalformed)?;
        let action = text_of(&payload, &["action"]).unwrap_or_default();
        let username = username_of(&payload, &["username"])?;
        match action.to_ascii_uppercase().as_str() {
            // Its app key is not used (gstgate asks the portal with its own), so it is not
            // even decrypted: the answer says nothing about it.
            "OTPREQUEST" => {
                text_of(&payload, &["app_key"]).ok_or(Refusal::PayloadMalformed)?;
                Ok(CallerLogin::OtpRequest { username })
            }
            "AUTHTOKEN" => {
                let app_key = rsa_app_key(&payload, key)?;
                let sealed = text_of(&payload, &["otp"]).ok_or(Refusal::OtpInvalid)?;
                let otp = app_key
                    .decrypt_b64(&sealed)
                    .ok()
                    .and_then(|o| String::from_utf8(o).ok())
                    .ok_or(Refusal::OtpInvalid)?;
                Ok(CallerLogin::Otp {
                    username,
                    otp: otp.into(),
                    app_key,
                })
            }
            "REFRESHTOKEN" => Ok(CallerLogin::Refresh {
                username,
                token: text_of(&payload, &["auth_token"])
                    .ok_or(Refusal::TokenInvalid)?
                    .into(),
                wrapped_app_key: text_of(&payload, &["app_key"]).ok_or(Refusal::AppKeyInvalid)?,
            }),
            _ => Err(Refusal::PayloadMalformed),
        }
    }

    fn login_reply(&self, grant: &Grant<'_>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "status_cd": "1",
            "auth_token": grant.token,
            "expiry": grant.lifetime.as_secs() / 60,
            "sek": grant.wrapped_sek,
        }))
        .unwrap_or_default()
    }

    fn ack_reply(&self) -> Vec<u8> {
        br#"{"status_cd":"1"}"#.to_vec()
    }

    fn refusal_reply(&self, refusal: Refusal) -> Option<Vec<u8>> {
        let (code, message) = code_of(refusal)?;
        serde_json::to_vec(&json!({
            "status_cd": "0",
            "error": {"error_cd": code, "message": message},
        }))
        .ok()
    }

    fn open_request(&self, method: &Method, body: &[u8], sek: &AesKey) -> Result<Vec<u8>, Refusal> {
        if bodiless(method, body) {
            return Ok(Vec::new());
        }
        sealed::open_request(body, sek, Layers::Base64Json).ok_or(Refusal::DataInvalid)
    }

    fn seal_reply(&self, _method: &Method, plain: &[u8], sek: &AesKey) -> Vec<u8> {
        sealed::seal_reply(plain, sek, Layers::Base64Json, true)
    }
}
