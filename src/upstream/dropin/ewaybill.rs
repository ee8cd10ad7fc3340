//! The drop-in face of NIC e-way bill.

use http::Method;
use serde_json::json;

use super::{nic_app_key, open_nic_login, text_of, username_of, CallerLogin, Face, Grant, Refusal};
use crate::crypto::{b64_encode, AesKey, KeyPair};
use crate::upstream::bodiless;
use crate::upstream::sealed::{self, Layers};

/// NIC e-way bill as a drop-in client sees it.
pub struct EwaybillFace;

/// NIC e-way bill's code for a refusal.
fn code_of(refusal: Refusal) -> Option<&'static str> {
    Some(match refusal {
        Refusal::ClientIdMissing => "103",
        Refusal::ClientSecretMissing | Refusal::ClientRejected => "104",
        Refusal::UserMissing | Refusal::UserUnknown => "101",
        Refusal::PasswordWrong => "102",
        Refusal::PayloadMalformed | Refusal::PayloadUndecryptable | Refusal::AppKeyInvalid => "110",
        Refusal::TokenInvalid => "238",
        Refusal::GstinMissing
        | Refusal::GstinNotAllowed
        | Refusal::OtpInvalid
        | Refusal::DataInvalid => return None,
    })
}

impl Face for EwaybillFace {
    fn read_login(&self, body: &[u8], key: &KeyPair) -> Result<CallerLogin, Refusal> {
        let payload = open_nic_login(body, key)?;
        let action = text_of(&payload, &["action"]).unwrap_or_default();
        if !action.eq_ignore_ascii_case("ACCESSTOKEN") {
            return Err(Refusal::PayloadMalformed);
        }
        let username = username_of(&payload, &["username", "UserName"])?;
        let password = text_of(&payload, &["password", "Password"]).unwrap_or_default();
        let app_key = nic_app_key(&payload, &["app_key", "AppKey"])?;
        Ok(CallerLogin::Password {
            username,
            password: password.into(),
            app_key,
            force: false,
        })
    }

    fn login_reply(&self, grant: &Grant<'_>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "status": "1",
            "authtoken": grant.token,
            "sek": grant.wrapped_sek,
        }))
        .unwrap_or_default()
    }

    fn ack_reply(&self) -> Vec<u8> {
        br#"{"status":"1"}"#.to_vec()
    }

    fn refusal_reply(&self, refusal: Refusal) -> Option<Vec<u8>> {
        let code = code_of(refusal)?;
        // As NIC sends it: the base64 of a JSON object whose codes end with a comma.
        let error = b64_encode(format!(r#"{{"errorCodes":"{code},"}}"#).as_bytes());
        serde_json::to_vec(&json!({"status": "0", "error": error})).ok()
    }

    fn open_request(&self, method: &Method, body: &[u8], sek: &AesKey) -> Result<Vec<u8>, Refusal> {
        if bodiless(method, body) {
            return Ok(Vec::new());
        }
        sealed::open_request(body, sek, Layers::Json).ok_or(Refusal::DataInvalid)
    }

    fn seal_reply(&self, method: &Method, plain: &[u8], sek: &AesKey) -> Vec<u8> {
        // NIC seals GET replies under a response key; POST replies under the SEK.
        sealed::seal_reply(plain, sek, Layers::Json, *method == Method::GET)
    }
}
