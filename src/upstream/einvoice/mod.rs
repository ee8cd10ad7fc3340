//! The NIC e-invoice (IRP) profile.

mod lookup;

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::envelope::Envelope;
use super::generate::{self, Generate};
use super::{
    nic, renewal, Class, Expiry, HeaderContext, Login, LoginFailure, LoginKind, LoginRequest,
    Portals, Profile, Reply, Verdict, ROLE_COUNT,
};
use crate::config::{CredentialConfig, UpstreamConfig};
use crate::crypto::{AesKey, PublicKey};
use crate::json::{self, Json};
use crate::path::CallerPath;
use crate::problem::GatewayError;
use lookup::{ewb_by_irn_generate, irn_generate, is_generate};

/// NIC issues a new token on `ForceRefreshAccessToken` only in its last 10 minutes.
pub const FORCE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The NIC e-invoice API.
pub struct Einvoice;

/// NIC's IRPs (e-invoice 1 and 2), which accept each other's tokens since July 2024; a read
/// of a document generated on the other one names it in `irp` (error 3098 for a bad name).
pub static IRPS: Portals = Portals {
    header: "irp",
    names: &["NIC1", "NIC2"],
};

/// The length of an IRN: a SHA-256 in hex.
const IRN_LEN: usize = 64;

/// Whether `text` has the shape of an IRN.
fn is_irn(text: &str) -> bool {
    text.len() == IRN_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The class of a NIC e-invoice error code.
fn classify_code(code: &str) -> Class {
    match code {
        "1005" => Class::TokenRejected,
        "1008" | "1014" | "1017" | "1019" => Class::CredentialsRejected,
        "1007" | "1010" | "1011" | "1012" | "1013" | "1016" | "1018" => Class::Configuration,
        "1004" | "1006" | "1015" => Class::CallerInput,
        // 5001/5002 "application error", and a GSP's word that the IRP is down: the
        // upstream's trouble, which may have struck after it committed.
        "5001" | "5002" | "GSPGSTDOWN" => Class::Transient,
        _ => Class::Business,
    }
}

/// One `ErrorDetails` entry; codes arrive as strings or numbers.
#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "ErrorCode")]
    code: Option<Value>,
    #[serde(rename = "ErrorMessage")]
    message: Option<Value>,
}

fn text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Classifies a parsed envelope: the first error code names the reply, but any code of a
/// stronger class (token, credentials…) decides its class.
fn verdict_of(envelope: &Envelope) -> Verdict {
    if envelope.status(&["Status", "status"]) == Some(1) {
        return Verdict::success();
    }
    let details: Vec<ErrorDetail> = envelope.get("ErrorDetails").unwrap_or_default();
    let mut codes = details.into_iter();
    let Some(first) = codes.next() else {
        return Verdict {
            class: Class::Business,
            code: None,
            message: None,
        };
    };
    let code = text(first.code);
    let mut class = code
        .as_deref()
        .map(classify_code)
        .unwrap_or(Class::Business);
    for other in codes {
        if class != Class::Business {
            break;
        }
        if let Some(c) = text(other.code) {
            class = classify_code(&c);
        }
    }
    Verdict {
        class,
        code,
        message: text(first.message),
    }
}

impl Profile for Einvoice {
    fn default_header_names(&self) -> [&'static str; ROLE_COUNT] {
        [
            "client_id",
            "client_secret",
            "Gstin",
            "user_name",
            "AuthToken",
            "state-cd",
            "ip-usr",
            "txn",
        ]
    }

    fn dropin(&self) -> &'static dyn super::dropin::Face {
        &super::dropin::EinvoiceFace
    }

    fn caller_headers(&self) -> &'static [&'static str] {
        &["irp"]
    }

    fn portals(&self) -> Option<&'static Portals> {
        Some(&IRPS)
    }

    /// Get IRN by IRN (`GET …/Invoice/irn/{irn}`) and get e-way bill by IRN
    /// (`GET …/ewaybill/irn/{irn}`) name it in the path; cancel IRN (`POST …/Invoice/Cancel`)
    /// and generate e-way bill by IRN (`POST …/ewaybill`) in the body's `Irn`.
    fn document_named(&self, method: &Method, path: &CallerPath, body: &[u8]) -> Option<String> {
        let mut segments = path.path().rsplit('/');
        let last = segments.next()?;
        if method == Method::GET {
            let kind = segments.next()?;
            return (kind.eq_ignore_ascii_case("irn") && is_irn(last)).then(|| last.to_owned());
        }
        let about_an_irn =
            last.eq_ignore_ascii_case("Cancel") || last.eq_ignore_ascii_case("ewaybill");
        if method != Method::POST || !about_an_irn {
            return None;
        }
        #[derive(Deserialize)]
        struct Named {
            #[serde(rename = "Irn")]
            irn: String,
        }
        let named: Named = serde_json::from_slice(body).ok()?;
        is_irn(&named.irn).then_some(named.irn)
    }

    /// The `Irn` of a generate IRN reply (`POST …/Invoice`).
    fn generated_document(
        &self,
        method: &Method,
        path: &CallerPath,
        plain: &[u8],
    ) -> Option<String> {
        let generate = method == Method::POST
            && path
                .path()
                .rsplit('/')
                .next()
                .is_some_and(|last| last.eq_ignore_ascii_case("Invoice"));
        if !generate {
            return None;
        }
        #[derive(Deserialize)]
        struct Reply {
            #[serde(rename = "Data")]
            data: Generated,
        }
        #[derive(Deserialize)]
        struct Generated {
            #[serde(rename = "Irn")]
            irn: String,
        }
        let reply: Reply = serde_json::from_slice(plain).ok()?;
        is_irn(&reply.data.irn).then_some(reply.data.irn)
    }

    fn renewal(&self) -> &'static dyn renewal::Renewal {
        &renewal::ForceWindow(FORCE_WINDOW)
    }

    fn login_request(
        &self,
        kind: LoginKind<'_>,
        username: &str,
        password: &SecretString,
        key: &PublicKey,
    ) -> Result<LoginRequest, GatewayError> {
        let LoginKind::Password { force } = kind else {
            return Err(GatewayError::Internal(
                "e-invoice sessions have no OTP or refresh call".into(),
            ));
        };
        let app_key = AesKey::random();
        let inner = Zeroizing::new(
            serde_json::to_vec(&json!({
                "UserName": username,
                "Password": password.expose_secret(),
                "AppKey": app_key.to_base64().as_str(),
                "ForceRefreshAccessToken": force,
            }))
            .map_err(|e| GatewayError::Internal(e.to_string()))?,
        );
        let body = nic::login_body(&inner, key)?;
        Ok(LoginRequest { body, app_key })
    }

    fn login_headers(
        &self,
        out: &mut HeaderMap,
        ctx: &HeaderContext<'_>,
        _token: Option<&HeaderValue>,
    ) {
        ctx.insert_client(out);
    }

    fn parse_login(&self, body: &[u8], app_key: &AesKey) -> Result<Login, LoginFailure> {
        let envelope = super::accepted_login(body, verdict_of)?;
        let data: serde_json::Map<String, Value> = envelope
            .get("Data")
            .ok_or_else(|| LoginFailure::BadReply("login reply has no Data object".into()))?;
        let field = |name: &str| {
            data.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| LoginFailure::BadReply(format!("login reply has no {name}")))
        };
        let token = SecretString::from(field("AuthToken")?.to_owned());
        let sek = app_key
            .unwrap_key(field("Sek")?)
            .map_err(|e| LoginFailure::BadReply(format!("cannot decrypt the SEK: {e}")))?;
        let expiry = field("TokenExpiry")?;
        let expires_at = nic::parse_ist(expiry).ok_or_else(|| {
            LoginFailure::BadReply("TokenExpiry is not yyyy-MM-dd HH:mm:ss".into())
        })?;
        Ok(Login {
            token,
            sek,
            expiry: Expiry::At(expires_at),
        })
    }

    fn data_headers(&self, out: &mut HeaderMap, ctx: &HeaderContext<'_>, token: &HeaderValue) {
        ctx.insert_client(out);
        out.insert(ctx.names.user_name.clone(), ctx.user_name.clone());
        out.insert(ctx.names.auth_token.clone(), token.clone());
    }

    fn encode_request(
        &self,
        method: &Method,
        body: &[u8],
        sek: &AesKey,
    ) -> Result<Vec<u8>, GatewayError> {
        if super::bodiless(method, body) {
            return Ok(Vec::new());
        }
        // Validate without building a tree: the upstream gets the caller's bytes, encrypted.
        json::validate(body).map_err(|e| GatewayError::BodyInvalid(format!("not JSON: {e}")))?;
        let data = sek.encrypt_b64(body);
        let mut out = Vec::with_capacity(data.len() + 12);
        out.extend_from_slice(b"{\"Data\":\"");
        out.extend_from_slice(data.as_bytes());
        out.extend_from_slice(b"\"}");
        Ok(out)
    }

    fn classify_code(&self, code: &str) -> Class {
        classify_code(code)
    }

    fn read_reply<'a>(&self, status: StatusCode, body: &'a [u8]) -> Reply<'a> {
        Reply::parse(status, body, verdict_of)
    }

    fn decode_reply(&self, reply: Reply<'_>, sek: &AesKey) -> Result<Vec<u8>, GatewayError> {
        let mut envelope = reply.into_envelope()?;
        let plain = envelope.str("Data").map(|data| sek.decrypt_b64(&data));
        if let Some(plain) = plain {
            let plain = plain.map_err(|e| {
                GatewayError::UpstreamBadResponse(format!(
                    "Data does not decrypt with the session key: {e}"
                ))
            })?;
            let plain = String::from_utf8(plain).map_err(|_| {
                GatewayError::UpstreamBadResponse("decrypted Data is not UTF-8".into())
            })?;
            let value = Json::parse(plain).map_err(|_| {
                GatewayError::UpstreamBadResponse("decrypted Data is not JSON".into())
            })?;
            envelope.set("Data", value);
        }
        Ok(envelope.to_vec())
    }

    fn auth_answer(&self, username: &str, expires_at: SystemTime) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "Status": 1,
            "Data": {
                "UserName": username,
                "AuthToken": "managed-by-gstgate",
                "Sek": null,
                "TokenExpiry": nic::format_ist(expires_at),
            },
            "ErrorDetails": null,
            "InfoDtls": null,
        }))
        .unwrap_or_default()
    }

    fn check_credential(
        &self,
        upstream: &UpstreamConfig,
        credential: &CredentialConfig,
    ) -> Result<(), (&'static str, String)> {
        super::config_checks::require_password(upstream, credential)
    }

    fn may_generate(&self, method: &Method, path: &CallerPath, _body: &[u8]) -> bool {
        is_generate(method, path)
    }

    fn generate(&self, method: &Method, path: &CallerPath, body: &[u8]) -> Option<Generate> {
        if !is_generate(method, path) {
            return None;
        }
        if generate::ends_with(path, &["eicore", "v", "Invoice"]) {
            irn_generate(path, body)
        } else if generate::ends_with(path, &["eiewb", "v", "ewaybill"]) {
            ewb_by_irn_generate(path, body)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::config_checks::tests::one_upstream;

    #[test]
    fn calls_about_an_irn_name_it_and_a_generate_reply_its_irn() {
        let p = Einvoice;
        let irn = "a".repeat(IRN_LEN);
        let path = |text: &str| CallerPath::parse(text, None).unwrap();
        for read in [
            format!("/eicore/v1.03/Invoice/irn/{irn}"),
            format!("/eiewb/v1.03/ewaybill/irn/{irn}"),
        ] {
            let read = path(&read);
            assert_eq!(
                p.document_named(&Method::GET, &read, b""),
                Some(irn.clone())
            );
            assert_eq!(p.document_named(&Method::POST, &read, b""), None);
        }
        let body = format!(r#"{{"Irn":"{irn}","CnlRsn":"1"}}"#);
        for post in ["/eicore/v1.03/Invoice/Cancel", "/eiewb/v1.03/ewaybill"] {
            assert_eq!(
                p.document_named(&Method::POST, &path(post), body.as_bytes()),
                Some(irn.clone())
            );
        }
        let generate = path("/eicore/v1.03/Invoice");
        assert_eq!(
            p.document_named(&Method::POST, &generate, body.as_bytes()),
            None
        );
        assert_eq!(
            p.document_named(&Method::GET, &path("/eicore/v1.03/Invoice/irn/short"), b""),
            None
        );
        let reply = format!(r#"{{"Status":1,"Data":{{"AckNo":1,"Irn":"{irn}"}}}}"#);
        assert_eq!(
            p.generated_document(&Method::POST, &generate, reply.as_bytes()),
            Some(irn.clone())
        );
        assert_eq!(
            p.generated_document(
                &Method::POST,
                &path("/eicore/v1.03/Invoice/Cancel"),
                reply.as_bytes()
            ),
            None
        );
        assert!(p.caller_headers().contains(&IRPS.header));
    }

    #[test]
    fn classification_reads_the_body_and_lenient_status() {
        let p = Einvoice;
        let r = p.read_reply(StatusCode::OK, br#"{"Status":"1","Data":"x"}"#);
        assert_eq!(r.verdict.class, Class::Success);
        let r = p.read_reply(
            StatusCode::OK,
            br#"{"Status":0,"ErrorDetails":[{"ErrorCode":"1005","ErrorMessage":"Invalid Token"}]}"#,
        );
        assert_eq!(r.verdict.class, Class::TokenRejected);
        assert_eq!(r.verdict.code.as_deref(), Some("1005"));
        let r = p.read_reply(
            StatusCode::OK,
            br#"{"Status":0,"ErrorDetails":[{"ErrorCode":"2150","ErrorMessage":"Duplicate IRN"}]}"#,
        );
        assert_eq!(r.verdict.class, Class::Business);
        let r = p.read_reply(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(r.verdict.class, Class::Transient);
        assert!(r.envelope.is_none());
    }

    #[test]
    fn gateway_encoding_round_trips_and_rejects_non_json() {
        let p = Einvoice;
        let sek = AesKey::random();
        let wire = p
            .encode_request(&Method::POST, br#"{"a":1}"#, &sek)
            .unwrap();
        let v: Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(
            sek.decrypt_b64(v["Data"].as_str().unwrap()).unwrap(),
            br#"{"a":1}"#
        );
        assert!(matches!(
            p.encode_request(&Method::POST, b"a=1", &sek),
            Err(GatewayError::BodyInvalid(_))
        ));
        let reply = format!(
            r#"{{"Status":1,"Data":"{}","InfoDtls":null}}"#,
            sek.encrypt_b64(br#"{"Irn":"x"}"#)
        );
        let r = p.read_reply(StatusCode::OK, reply.as_bytes());
        let out: Value = serde_json::from_slice(&p.decode_reply(r, &sek).unwrap()).unwrap();
        assert_eq!(out["Data"]["Irn"], "x");
        assert_eq!(out["Status"], 1);
        let r = p.read_reply(StatusCode::OK, br#"{"Status":1,"Data":"AAAA"}"#);
        assert!(matches!(
            p.decode_reply(r, &sek),
            Err(GatewayError::UpstreamBadResponse(_))
        ));
    }

    #[test]
    fn a_credential_needs_a_password_and_logins_are_not_capped() {
        let config = one_upstream("einvoice", "max_logins = 6", "");
        let (field, message) = Einvoice
            .check_credential(&config.upstreams[0], &config.credentials[0])
            .unwrap_err();
        assert_eq!(field, "password");
        assert_eq!(message, "upstream `up` logs in with a password: set one");
        assert!(Einvoice.check_upstream(&config.upstreams[0]).is_ok());
        let config = one_upstream("einvoice", "", "password = \"p\"");
        assert!(Einvoice
            .check_credential(&config.upstreams[0], &config.credentials[0])
            .is_ok());
    }
}
