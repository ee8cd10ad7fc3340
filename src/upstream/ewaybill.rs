//! The NIC e-way bill profile.
//!
//! Hyphenated headers, an `ACCESSTOKEN` login whose reply carries no expiry (the upstream's
//! `token_lifetime` applies, 360 minutes by default), `{"action", "data"}` request bodies, and
//! errors as a base64 string (or, in some documents, a plain object) holding a list of codes.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::envelope::Envelope;
use super::generate::{self, Generate};
use super::sealed::{open_reply, seal_request, Layers};
use super::{
    renewal, Class, Expiry, HeaderContext, Login, LoginFailure, LoginKind, LoginRequest, Profile,
    Reply, Verdict, ROLE_COUNT,
};
use crate::config::{CredentialConfig, UpstreamConfig, DEFAULT_LOGIN_WINDOW};
use crate::crypto::{b64_decode, AesKey, PublicKey};
use crate::path::CallerPath;
use crate::problem::GatewayError;

/// NIC e-way bill reportedly blocks a user for 15 minutes after 5 logins in 15 minutes
/// (GSP help pages): a configured limit above it would walk into the block.
pub const MAX_LOGINS: u32 = 5;

/// The NIC e-way bill API.
pub struct Ewaybill;

/// The class of an e-way bill error code.
fn classify_code(code: &str) -> Class {
    match code {
        "105" | "106" | "238" => Class::TokenRejected,
        "101" | "102" | "108" => Class::CredentialsRejected,
        "103" | "104" | "110" | "237" => Class::Configuration,
        "118" => Class::Throttled,
        _ => Class::Business,
    }
}

/// The error codes of a failed reply: `error` is base64 of `{"errorCodes":"238,102,"}`, or
/// that object itself, with the codes as a comma-separated string or a number.
fn error_codes(envelope: &Envelope) -> Vec<String> {
    let object = match envelope.get::<Value>("error") {
        Some(Value::String(text)) => b64_decode(&text)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok()),
        Some(other) => Some(other),
        None => None,
    };
    match object.as_ref().and_then(|o| o.get("errorCodes")) {
        Some(Value::String(list)) => list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Number(n)) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

fn verdict_of(envelope: &Envelope) -> Verdict {
    if envelope.status(&["status"]) == Some(1) {
        return Verdict::success();
    }
    let codes = error_codes(envelope);
    // The first code names the reply; a code of a stronger class (token, credentials…)
    // anywhere in the list decides what the gateway does.
    let class = codes
        .iter()
        .map(|c| classify_code(c))
        .find(|c| *c != Class::Business)
        .unwrap_or(Class::Business);
    Verdict {
        class,
        code: codes.into_iter().next(),
        message: envelope.get::<String>("message"),
    }
}

impl Profile for Ewaybill {
    fn default_header_names(&self) -> [&'static str; ROLE_COUNT] {
        [
            "client-id",
            "client-secret",
            "Gstin",
            "username",
            "authtoken",
            "state-cd",
            "ip-usr",
            "txn",
        ]
    }

    fn dropin(&self) -> &'static dyn super::dropin::Face {
        &super::dropin::EwaybillFace
    }

    fn renewal(&self) -> &'static dyn renewal::Renewal {
        &renewal::AtExpiry
    }

    fn login_request(
        &self,
        kind: LoginKind<'_>,
        username: &str,
        password: &SecretString,
        key: &PublicKey,
    ) -> Result<LoginRequest, GatewayError> {
        if !matches!(kind, LoginKind::Password { .. }) {
            return Err(GatewayError::Internal(
                "e-way bill sessions have no OTP or refresh call".into(),
            ));
        }
        let app_key = AesKey::random();
        let inner = Zeroizing::new(
            serde_json::to_vec(&json!({
                "action": "ACCESSTOKEN",
                "username": username,
                "password": password.expose_secret(),
                "app_key": app_key.to_base64().as_str(),
            }))
            .map_err(|e| GatewayError::Internal(e.to_string()))?,
        );
        let body = super::nic::login_body(&inner, key)?;
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
        let field = |name: &str| {
            envelope
                .get::<String>(name)
                .ok_or_else(|| LoginFailure::BadReply(format!("login reply has no {name}")))
        };
        let token = SecretString::from(field("authtoken")?);
        let sek = app_key
            .unwrap_key(&field("sek")?)
            .map_err(|e| LoginFailure::BadReply(format!("cannot decrypt the SEK: {e}")))?;
        Ok(Login {
            token,
            sek,
            expiry: Expiry::Unstated,
        })
    }

    fn data_headers(&self, out: &mut HeaderMap, ctx: &HeaderContext<'_>, token: &HeaderValue) {
        ctx.insert_client(out);
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
        seal_request(body, sek, Layers::Json, false)
    }

    fn classify_code(&self, code: &str) -> Class {
        classify_code(code)
    }

    fn read_reply<'a>(&self, status: StatusCode, body: &'a [u8]) -> Reply<'a> {
        Reply::parse(status, body, verdict_of)
    }

    fn decode_reply(&self, reply: Reply<'_>, sek: &AesKey) -> Result<Vec<u8>, GatewayError> {
        let mut envelope = reply.into_envelope()?;
        open_reply(&mut envelope, sek, Layers::Json)?;
        Ok(envelope.to_vec())
    }

    fn auth_answer(&self, _username: &str, expires_at: SystemTime) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "status": "1",
            "authtoken": "managed-by-gstgate",
            "sek": null,
            "tokenExpiry": super::nic::format_ist(expires_at),
        }))
        .unwrap_or_default()
    }

    fn check_upstream(&self, upstream: &UpstreamConfig) -> Result<(), (&'static str, String)> {
        if upstream.max_logins > MAX_LOGINS {
            return Err((
                "max_logins",
                format!("e-way bill blocks a user for 15 minutes after {MAX_LOGINS} logins in 15 minutes; use at most {MAX_LOGINS}"),
            ));
        }
        Ok(())
    }

    fn check_credential(
        &self,
        upstream: &UpstreamConfig,
        credential: &CredentialConfig,
    ) -> Result<(), (&'static str, String)> {
        super::config_checks::require_password(upstream, credential)
    }

    /// A POST to `ewayapi` whose plain `action` is `GENEWAYBILL`, or cannot be read (the
    /// action travels in clear beside the encrypted `data`, so this is rarely a guess).
    fn may_generate(&self, method: &Method, path: &CallerPath, body: &[u8]) -> bool {
        if method != Method::POST || !generate::ends_with(path, &["ewaybillapi", "v", "ewayapi"]) {
            return false;
        }
        let action = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|request| {
                request
                    .get("action")
                    .and_then(Value::as_str)
                    .map(|a| a.trim().to_ascii_uppercase())
            });
        action.is_none_or(|action| action == "GENEWAYBILL")
    }

    fn generate(&self, method: &Method, path: &CallerPath, body: &[u8]) -> Option<Generate> {
        if method != Method::POST || !generate::ends_with(path, &["ewaybillapi", "v", "ewayapi"]) {
            return None;
        }
        let request: Value = serde_json::from_slice(body).ok()?;
        let action = request.get("action")?.as_str()?;
        if !action.trim().eq_ignore_ascii_case("GENEWAYBILL") {
            return None;
        }
        let field = |name: &str| {
            request
                .pointer(&format!("/data/{name}"))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let wanted = Bill {
            typ: field("docType")?.to_owned(),
            no: field("docNo")?.to_owned(),
            date: field("docDate")?.to_owned(),
            from: field("fromGstin")?.to_owned(),
        };
        let lookup = generate::lookup(
            path,
            "/GetEwayBillGeneratedByConsigner",
            &[("docType", &wanted.typ), ("docNo", &wanted.no)],
        )?;
        Some(Generate {
            lookup,
            duplicate: &["604"],
            absent: &["325"],
            answer: Box::new(move |plain| generated_answer(plain, &wanted)),
        })
    }

    fn config_warnings(&self, upstream: &UpstreamConfig) -> Vec<String> {
        // Allowed because sandboxes scale NIC's window down; against NIC itself, a shorter
        // window lets more than its limit of logins into its 15 minutes.
        if upstream.login_window >= DEFAULT_LOGIN_WINDOW {
            return Vec::new();
        }
        vec![format!(
            "upstream `{}`: login_window {} is shorter than NIC e-way bill's 15 minutes, so {} logins per window can exceed NIC's {MAX_LOGINS} per 15 minutes and get the user blocked",
            upstream.name,
            humantime::format_duration(upstream.login_window),
            upstream.max_logins
        )]
    }
}

/// The document a generate e-way bill is for, as its lookup's reply must show it.
struct Bill {
    /// `docType`.
    typ: String,
    /// `docNo`.
    no: String,
    /// `docDate`, dd/mm/yyyy.
    date: String,
    /// `fromGstin`, the consignor.
    from: String,
}

/// The generate's reply (`ewayBillNo`, `ewayBillDate`, `validUpto`) from the e-way bill NIC
/// holds for the document (an object, or a list of them): the one whose `docType`, `docNo`,
/// `docDate` and `fromGstin` are the request's, for the lookup asks by type and number only
/// and a GSP may answer for another document. None of them, or a cancelled one, stands for
/// no generate.
fn generated_answer(plain: &[u8], wanted: &Bill) -> Option<Vec<u8>> {
    let reply: Value = serde_json::from_slice(plain).ok()?;
    let bills = match reply.get("data")? {
        Value::Array(bills) => bills.iter().collect::<Vec<_>>(),
        other => vec![other],
    };
    let data = bills.into_iter().find(|bill| {
        generate::same(bill.get("docType"), &wanted.typ)
            && generate::same(bill.get("docNo"), &wanted.no)
            && generate::same(bill.get("docDate"), &wanted.date)
            && generate::same(bill.get("fromGstin"), &wanted.from)
    })?;
    let number = data.get("ewayBillNo").filter(|n| !n.is_null())?;
    if data.get("status").and_then(Value::as_str) == Some("CNL") {
        return None;
    }
    serde_json::to_vec(&json!({
        "status": "1",
        "data": {
            "ewayBillNo": number,
            "ewayBillDate": data.get("ewayBillDate"),
            "validUpto": data.get("validUpto"),
            "alert": "",
        },
    }))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::b64_encode;
    use crate::upstream::config_checks::tests::one_upstream;

    fn b64_error(list: &str) -> String {
        format!(
            r#"{{"status":"0","error":"{}"}}"#,
            b64_encode(format!(r#"{{"errorCodes":"{list}"}}"#).as_bytes())
        )
    }

    #[test]
    fn both_error_forms_are_decoded_and_classified() {
        let p = Ewaybill;
        let body = b64_error("238,");
        let r = p.read_reply(StatusCode::OK, body.as_bytes());
        assert_eq!(r.verdict.class, Class::TokenRejected);
        assert_eq!(r.verdict.code.as_deref(), Some("238"));
        let r = p.read_reply(
            StatusCode::OK,
            br#"{"status":"0","error":{"errorCodes":240}}"#,
        );
        assert_eq!(r.verdict.class, Class::Business);
        assert_eq!(r.verdict.code.as_deref(), Some("240"));
        let body = b64_error("604,102,");
        let r = p.read_reply(StatusCode::OK, body.as_bytes());
        assert_eq!(r.verdict.class, Class::CredentialsRejected);
        assert_eq!(r.verdict.code.as_deref(), Some("604"));
        for (code, class) in [
            ("105", Class::TokenRejected),
            ("106", Class::TokenRejected),
            ("101", Class::CredentialsRejected),
            ("108", Class::CredentialsRejected),
            ("104", Class::Configuration),
            ("118", Class::Throttled),
            ("604", Class::Business),
        ] {
            let body = b64_error(code);
            let r = p.read_reply(StatusCode::OK, body.as_bytes());
            assert_eq!(r.verdict.class, class, "{code}");
        }
        let r = p.read_reply(StatusCode::OK, br#"{"status":"1","data":"x"}"#);
        assert_eq!(r.verdict.class, Class::Success);
    }

    #[test]
    fn post_replies_decrypt_with_the_sek() {
        let p = Ewaybill;
        let sek = AesKey::random();
        let reply = format!(
            r#"{{"status":"1","data":"{}"}}"#,
            sek.encrypt_b64(br#"{"ewayBillNo":123}"#)
        );
        let r = p.read_reply(StatusCode::OK, reply.as_bytes());
        let out: Value = serde_json::from_slice(&p.decode_reply(r, &sek).unwrap()).unwrap();
        assert_eq!(out["data"]["ewayBillNo"], 123);
    }

    #[test]
    fn nic_login_limits_are_enforced_and_a_short_window_is_warned_of() {
        let upstream = |extra: &str| one_upstream("ewaybill", extra, "password = \"p\"");
        assert!(Ewaybill
            .check_upstream(&upstream("max_logins = 5").upstreams[0])
            .is_ok());
        let (field, message) = Ewaybill
            .check_upstream(&upstream("max_logins = 6").upstreams[0])
            .unwrap_err();
        assert_eq!(field, "max_logins");
        assert!(message.contains("use at most 5"), "{message}");
        assert!(Ewaybill
            .config_warnings(&upstream("login_window = \"15m\"").upstreams[0])
            .is_empty());
        let warnings = Ewaybill.config_warnings(&upstream("login_window = \"30s\"").upstreams[0]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("upstream `up`: login_window 30s is shorter"),
            "{warnings:?}"
        );
    }

    #[test]
    fn an_ewb_generate_is_looked_up_by_its_document() {
        let path = CallerPath::parse("/ewaybillapi/v1.03/ewayapi", None).unwrap();
        let body = br#"{"action":"GENEWAYBILL","data":{"docType":"INV","docNo":"E/1","docDate":"01/04/2026","fromGstin":"29AAGCB1286Q000"}}"#;
        let g = Ewaybill.generate(&Method::POST, &path, body).unwrap();
        assert_eq!(
            g.lookup.path(),
            "/ewaybillapi/v1.03/ewayapi/GetEwayBillGeneratedByConsigner"
        );
        assert_eq!(g.lookup.query(), Some("docType=INV&docNo=E%2F1"));
        assert_eq!(g.duplicate, &["604"]);
        let cancel = br#"{"action":"CANEWB","data":{"ewbNo":1}}"#;
        assert!(Ewaybill.generate(&Method::POST, &path, cancel).is_none());
        assert!(!Ewaybill.may_generate(&Method::POST, &path, cancel));
        let sealed = br#"{"action":"GENEWAYBILL","data":"c2VhbGVk"}"#;
        assert!(Ewaybill.may_generate(&Method::POST, &path, sealed));
        assert!(Ewaybill.may_generate(&Method::POST, &path, b"not json"));
        assert!(!Ewaybill.may_generate(&Method::GET, &path, sealed));
        let out: Value = serde_json::from_slice(
            &(g.answer)(&found(
                json!({"ewayBillNo": 7, "ewayBillDate": "d", "validUpto": "v"}),
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["data"]["ewayBillNo"], 7);
        assert!((g.answer)(br#"{"status":"1","data":{}}"#).is_none());
        let without = br#"{"action":"GENEWAYBILL","data":{"docType":"INV","docNo":"E/1"}}"#;
        assert!(
            Ewaybill.generate(&Method::POST, &path, without).is_none(),
            "no docDate nor fromGstin to check a lookup against"
        );
    }

    /// A decoded lookup reply holding the e-way bill of the test's document, with `extra`.
    fn found(extra: Value) -> Vec<u8> {
        let mut bill = json!({"docType": "INV", "docNo": "e/1", "docDate": "01/04/2026",
            "fromGstin": "29AAGCB1286Q000", "status": "ACT"});
        for (k, v) in extra.as_object().unwrap() {
            bill[k] = v.clone();
        }
        json!({"status": "1", "data": bill})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_ewb_found_for_another_document_or_gstin_is_not_the_callers() {
        let path = CallerPath::parse("/ewaybillapi/v1.03/ewayapi", None).unwrap();
        let body = br#"{"action":"GENEWAYBILL","data":{"docType":"INV","docNo":"E/1","docDate":"01/04/2026","fromGstin":"29AAGCB1286Q000"}}"#;
        let g = Ewaybill.generate(&Method::POST, &path, body).unwrap();
        assert!((g.answer)(&found(json!({"ewayBillNo": 7}))).is_some());
        for other in [
            json!({"ewayBillNo": 7, "docNo": "E/2"}),
            json!({"ewayBillNo": 7, "docType": "CHL"}),
            json!({"ewayBillNo": 7, "docDate": "02/04/2026"}),
            json!({"ewayBillNo": 7, "fromGstin": "27AAGCB1286Q000"}),
            json!({"ewayBillNo": 7, "docDate": null}),
        ] {
            assert!((g.answer)(&found(other.clone())).is_none(), "{other}");
        }
        // In a list, the caller's bill is picked, not the first.
        let list = json!({"status": "1", "data": [
            {"ewayBillNo": 1, "docType": "INV", "docNo": "E/1", "docDate": "02/04/2026",
             "fromGstin": "29AAGCB1286Q000"},
            {"ewayBillNo": 2, "docType": "INV", "docNo": "E/1", "docDate": "01/04/2026",
             "fromGstin": "29AAGCB1286Q000"},
        ]});
        let out: Value =
            serde_json::from_slice(&(g.answer)(list.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(out["data"]["ewayBillNo"], 2);
    }

    #[test]
    fn a_credential_needs_a_password() {
        let config = one_upstream("ewaybill", "", "");
        let (field, _) = Ewaybill
            .check_credential(&config.upstreams[0], &config.credentials[0])
            .unwrap_err();
        assert_eq!(field, "password");
        let config = one_upstream("ewaybill", "", "password = \"p\"");
        assert!(Ewaybill
            .check_credential(&config.upstreams[0], &config.credentials[0])
            .is_ok());
    }
}
