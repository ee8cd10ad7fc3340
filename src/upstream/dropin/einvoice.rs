//! The drop-in face of NIC e-invoice.

use http::Method;
use serde_json::value::to_raw_value;
use serde_json::{json, Value};

use super::{nic_app_key, open_nic_login, text_of, username_of, CallerLogin, Face, Grant, Refusal};
use crate::crypto::{AesKey, KeyPair};
use crate::json;
use crate::upstream::envelope::Envelope;
use crate::upstream::{bodiless, nic};

/// NIC e-invoice as a drop-in client sees it.
pub struct EinvoiceFace;

/// NIC's code and message for a refusal.
fn code_of(refusal: Refusal) -> Option<(&'static str, &'static str)> {
    Some(match refusal {
        Refusal::ClientIdMissing => ("1011", "Client Id is required"),
        Refusal::ClientSecretMissing => ("1012", "Client Secret is required"),
        Refusal::ClientRejected => ("1010", "Invalid Client-ID/Client-Secret"),
        Refusal::GstinMissing => ("1004", "Header GSTIN is required"),
        Refusal::GstinNotAllowed => ("1015", "Invalid GSTIN for this user"),
        Refusal::UserMissing => ("1006", "User Name is required"),
        Refusal::UserUnknown => ("1017", "Incorrect user id/User does not exists"),
        Refusal::PasswordWrong => ("1019", "Incorrect Password"),
        Refusal::PayloadMalformed => ("1007", "Authentication failed. Pls. inform the helpdesk"),
        Refusal::PayloadUndecryptable => ("1013", "Decryption of password failed"),
        Refusal::AppKeyInvalid => ("1016", "Decryption of App Key failed"),
        Refusal::TokenInvalid => ("1005", "Invalid Token"),
        Refusal::OtpInvalid | Refusal::DataInvalid => return None,
    })
}

impl Face for EinvoiceFace {
    fn read_login(&self, body: &[u8], key: &KeyPair) -> Result<CallerLogin, Refusal> {
        let payload = open_nic_login(body, key)?;
        let username = username_of(&payload, &["UserName", "username"])?;
        let password = text_of(&payload, &["Password", "password"]).unwrap_or_default();
        let app_key = nic_app_key(&payload, &["AppKey", "appkey"])?;
        let force = match payload
            .get("ForceRefreshAccessToken")
            .or_else(|| payload.get("forcerefreshaccesstoken"))
        {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        Ok(CallerLogin::Password {
            username,
            password: password.into(),
            app_key,
            force,
        })
    }

    fn login_reply(&self, grant: &Grant<'_>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "Status": 1,
            "Data": {
                "ClientId": grant.client_id,
                "UserName": grant.username,
                "AuthToken": grant.token,
                "Sek": grant.wrapped_sek,
                "TokenExpiry": nic::format_ist(grant.expires_at),
            },
            "ErrorDetails": null,
            "InfoDtls": null,
        }))
        .unwrap_or_default()
    }

    fn ack_reply(&self) -> Vec<u8> {
        br#"{"Status":1,"Data":null,"ErrorDetails":null,"InfoDtls":null}"#.to_vec()
    }

    fn refusal_reply(&self, refusal: Refusal) -> Option<Vec<u8>> {
        let (code, message) = code_of(refusal)?;
        serde_json::to_vec(&json!({
            "Status": 0,
            "ErrorDetails": [{"ErrorCode": code, "ErrorMessage": message}],
            "Data": null,
            "InfoDtls": null,
        }))
        .ok()
    }

    fn open_request(&self, method: &Method, body: &[u8], sek: &AesKey) -> Result<Vec<u8>, Refusal> {
        if bodiless(method, body) {
            return Ok(Vec::new());
        }
        let envelope = Envelope::parse(body).ok_or(Refusal::DataInvalid)?;
        let data = envelope.str("Data").ok_or(Refusal::DataInvalid)?;
        let plain = sek.decrypt_b64(&data).map_err(|_| Refusal::DataInvalid)?;
        json::validate(&plain).map_err(|_| Refusal::DataInvalid)?;
        Ok(plain)
    }

    fn seal_reply(&self, _method: &Method, plain: &[u8], sek: &AesKey) -> Vec<u8> {
        let Some(mut envelope) = Envelope::parse(plain) else {
            return plain.to_vec();
        };
        let Some(data) = envelope.raw("Data") else {
            return plain.to_vec();
        };
        if data.trim() == "null" {
            return plain.to_vec();
        }
        match to_raw_value(&sek.encrypt_b64(data.trim().as_bytes())) {
            Ok(sealed) => {
                envelope.set("Data", sealed);
                envelope.to_vec()
            }
            Err(_) => plain.to_vec(),
        }
    }
}
