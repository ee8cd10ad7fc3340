//! The NIC e-invoice (IRP) profile of the simulator: login and the data calls, with the real
//! payload crypto.
//!
//! Error codes and where the simulator chooses between them:
//!
//! | code | when |
//! |---|---|
//! | 1011 / 1012 | `client_id` / `client_secret` header missing (checked first, on every call) |
//! | 1010 | unknown client id, or secret does not match |
//! | 1004 | `Gstin` header missing |
//! | 1007 | login body is not `{"Data": "…"}` JSON, or the RSA plaintext is not base64 of a JSON object |
//! | 1013 | login `Data` is not base64 or does not RSA-decrypt under the simulator's key (wrong public key) |
//! | 1006 | login `UserName` missing or empty |
//! | 1016 | `AppKey` is not base64 of exactly 32 bytes |
//! | 1017 | no such user *for the header GSTIN* (a user configured only for another GSTIN is also 1017) |
//! | 1019 | wrong password (a missing password counts as wrong) |
//! | 1005 | data call: `AuthToken` missing, unknown, expired or revoked; `user_name` missing or not the token's user; GSTIN switched to "reject" by `/_sim/reject-tokens` |
//! | 1015 | data call: the token was issued for another GSTIN than the `Gstin` header (NIC documents 1015 for this; 1005 would send a gateway into a useless re-login) |
//! | 2140 | data call body is not `{"Data": …}`, `Data` does not decrypt under the token's SEK or is not JSON, or a required invoice / cancel field is missing or malformed |
//! | 2142 | `irnbydocdetails` without `doctype`, `docnum` or `docdate` |
//! | 2155 | `SellerDtls.Gstin` missing |
//! | 2143 | `SellerDtls.Gstin` is not the header GSTIN, or the IRN belongs to another GSTIN |
//! | 2150 | the document already has an IRN, cancelled or not (`InfoDtls` `DUPIRN` carries AckNo/AckDt/Irn); with `allow_duplicate_irn` the existing IRN is answered as a success instead |
//! | 2148 | unknown IRN (never generated, or evicted from the bounded store) |
//! | 9999 | cancelling an IRN that is already cancelled, or generating an e-way bill for it ("Invoice is not active") |
//! | 4002 | generate EWB by IRN for an IRN that already has one |
//! | 4005 | get EWB by IRN for an IRN without one |
//! | 3098 | an `irp` header that names none of the simulator's portals (`portals.rs`) |
//! | 3028 | master lookup of a GSTIN that fails the shape or checksum check |
//!
//! Portals: every document remembers the portal that generated it, and the calls that name
//! an existing IRN (get by IRN or document, cancel, EWB by IRN) find it only on the portal
//! the `irp` header names, or without one on the portal that received the call (2148
//! elsewhere). Duplicate detection (2150) spans every portal.
//!
//! Not simulated: 1008 (the simulator always says which of user / password is wrong), 1014
//! inactive users, 1018 client-to-user mapping (every client may log in every user), NIC's
//! 24-hour cancellation limit, and the many invoice business rules beyond the fields listed.
//! `SignedInvoice` and `SignedQRCode` are JWT-shaped (header.payload.signature, base64url) with
//! NIC-like payloads, but the "signature" is a SHA-256 digest, not an RSA signature.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use chrono::{Datelike, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::clock::{ist_now, to_ist, validity_end};
use super::portals::{resolve_irp, Portal};
use super::state::{lock, DocStatus, Document, IrnEwayBill, Issue};
use super::SimState;
use crate::crypto::{b64_decode, AesKey};
use crate::gstin::Gstin;

/// Login paths (v1.04 is current; v1.03 is still called by older clients).
pub const AUTH_PATHS: [&str; 2] = ["/eivital/v1.04/auth", "/eivital/v1.03/auth"];

/// The e-invoice routes. Every handler answers NIC envelopes; routing misses are plain 404s.
pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route(AUTH_PATHS[0], post(auth))
        .route(AUTH_PATHS[1], post(auth))
        .route("/eicore/v1.03/Invoice", post(generate))
        .route("/eicore/v1.03/Invoice/Cancel", post(cancel))
        .route("/eicore/v1.03/Invoice/irn/{irn}", get(get_by_irn))
        .route(
            "/eicore/v1.03/Invoice/irnbydocdetails",
            get(get_by_doc_details),
        )
        .route("/eiewb/v1.03/ewaybill", post(generate_ewb))
        .route("/eiewb/v1.03/ewaybill/irn/{irn}", get(get_ewb))
        .route("/eivital/v1.04/Master/gstin/{gstin}", get(master_gstin))
        .route("/eivital/v1.04/Master/syncgstin/{gstin}", get(master_gstin))
}

/// Whether `path` is a login path.
pub fn is_auth_path(path: &str) -> bool {
    AUTH_PATHS.contains(&path)
}

/// A `Status: 0` reply: one error detail and optional `InfoDtls`.
#[derive(Debug)]
pub struct NicError {
    code: &'static str,
    message: String,
    info: Option<Value>,
}

impl NicError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            info: None,
        }
    }

    fn invalid_token(why: &str) -> Self {
        Self::new("1005", format!("Invalid Token ({why})"))
    }
}

impl SimState {
    /// Renders a `Status: 0` reply with the configured HTTP status, counting 1005 replies.
    fn error_reply(&self, headers: &HeaderMap, e: NicError) -> Response {
        if e.code == "1005" {
            let gstin = header_gstin(headers);
            lock(&self.counters).bump(gstin.as_deref(), |c| c.token_rejections += 1);
        }
        let status =
            StatusCode::from_u16(lock(&self.knobs).error_http_status).unwrap_or(StatusCode::OK);
        let body = json!({
            "Status": 0,
            "ErrorDetails": [{"ErrorCode": e.code, "ErrorMessage": e.message}],
            "Data": null,
            "InfoDtls": e.info,
        });
        (status, Json(body)).into_response()
    }
}

/// A header's trimmed value under any of `names`, if present and not empty.
pub(super) fn header<'a>(h: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .filter_map(|n| h.get(*n))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
}

/// The `Gstin` header, upper-cased.
pub fn header_gstin(h: &HeaderMap) -> Option<String> {
    header(h, &["gstin"]).map(str::to_ascii_uppercase)
}

/// Constant-time string equality (secrets, passwords).
pub(super) fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Checks `client_id` / `client_secret` (or the hyphenated forms); returns the client id.
fn check_client(sim: &SimState, h: &HeaderMap) -> Result<String, NicError> {
    let id = header(h, &["client_id", "client-id"])
        .ok_or_else(|| NicError::new("1011", "Client Id is required"))?;
    let secret = header(h, &["client_secret", "client-secret"])
        .ok_or_else(|| NicError::new("1012", "Client Secret is required"))?;
    // Evaluate every client so the time taken does not depend on which one matched.
    let ok = sim.clients.iter().fold(false, |acc, c| {
        acc | (ct_eq(&c.client_id, id) & ct_eq(&c.client_secret, secret))
    });
    if ok {
        Ok(id.to_string())
    } else {
        Err(NicError::new("1010", "Invalid Client-ID/Client-Secret"))
    }
}

fn require_gstin(h: &HeaderMap) -> Result<String, NicError> {
    header_gstin(h).ok_or_else(|| NicError::new("1004", "Header GSTIN is required"))
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

/// The decrypted login payload. NIC's field names, with lower-case aliases for lenience.
#[derive(Deserialize)]
struct LoginPayload {
    #[serde(rename = "UserName", alias = "username", default)]
    user_name: Option<String>,
    #[serde(rename = "Password", alias = "password", default)]
    password: Option<String>,
    #[serde(rename = "AppKey", alias = "appkey", default)]
    app_key: Option<String>,
    #[serde(
        rename = "ForceRefreshAccessToken",
        alias = "forcerefreshaccesstoken",
        default
    )]
    force_refresh: Option<Value>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Data")]
    data: String,
}

async fn auth(State(sim): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    match login(&sim, &headers, &body) {
        Ok(data) => ok_reply(data, None),
        Err(e) => sim.error_reply(&headers, e),
    }
}

fn login(sim: &SimState, h: &HeaderMap, body: &[u8]) -> Result<Value, NicError> {
    let client_id = check_client(sim, h)?;
    let gstin = require_gstin(h)?;
    let bad_payload = || {
        NicError::new("1007", "Authentication failed. Pls. inform the helpdesk (request payload is not as documented)")
    };
    let env: Envelope = serde_json::from_slice(body).map_err(|_| bad_payload())?;
    let decrypt_failed = || {
        NicError::new("1013", "Decryption of password failed (was the payload encrypted with this server's public key?)")
    };
    let cipher = b64_decode(&env.data).map_err(|_| decrypt_failed())?;
    // RSA-2048 decryption takes about a millisecond; inline is fine because logins are rare
    // by protocol design (one per token lifetime per user).
    let plain = sim.keypair.decrypt(&cipher).map_err(|_| decrypt_failed())?;
    // The JSON is base64-encoded before RSA.
    let json_bytes = std::str::from_utf8(&plain)
        .ok()
        .and_then(|s| b64_decode(s).ok())
        .ok_or_else(bad_payload)?;
    let payload: LoginPayload = serde_json::from_slice(&json_bytes).map_err(|_| bad_payload())?;
    let user_name = payload
        .user_name
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| NicError::new("1006", "User Name is required"))?;
    let app_key = payload
        .app_key
        .as_deref()
        .and_then(|k| b64_decode(k).ok())
        .and_then(|k| AesKey::from_slice(&k).ok())
        .ok_or_else(|| {
            NicError::new(
                "1016",
                "Decryption of App Key failed (AppKey must be base64 of 32 bytes)",
            )
        })?;
    let force = match payload.force_refresh {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let password_matches = lock(&sim.users)
        .iter()
        .find(|u| u.gstin.eq_ignore_ascii_case(&gstin) && u.username == user_name)
        .map(|u| ct_eq(&u.password, payload.password.as_deref().unwrap_or("")))
        .ok_or_else(|| NicError::new("1017", "Incorrect user id/User does not exists"))?;
    if !password_matches {
        return Err(NicError::new("1019", "Incorrect Password"));
    }

    let knobs = lock(&sim.knobs).clone();
    let (session, issue) = lock(&sim.sessions).login(&gstin, &user_name, force, &knobs, Utc::now());
    if issue != Issue::Reused {
        lock(&sim.counters).bump(Some(&gstin), |c| {
            c.new_tokens += 1;
            if issue == Issue::Forced {
                c.force_refreshes += 1;
            }
        });
    }
    tracing::info!(gstin = %gstin, user = %user_name, ?issue, "sim: login");
    Ok(json!({
        "ClientId": client_id,
        "UserName": user_name,
        "AuthToken": session.token,
        "Sek": app_key.encrypt_b64(session.sek.as_bytes()),
        "TokenExpiry": to_ist(
            session.expires_at
                - chrono::Duration::from_std(knobs.stated_expiry_early).unwrap_or_default()
        ),
    }))
}

fn ok_reply(data: Value, info: Option<Value>) -> Response {
    Json(json!({"Status": 1, "Data": data, "ErrorDetails": null, "InfoDtls": info})).into_response()
}

// ---------------------------------------------------------------------------------------------
// Data calls: authorize, decode, operate, encode
// ---------------------------------------------------------------------------------------------

/// Who is calling, established from the five e-invoice headers, and where.
struct Caller {
    gstin: String,
    sek: AesKey,
    /// The portal that received the call: a generate commits there.
    received: Portal,
    /// The portal whose documents the call searches (the `irp` header's).
    target: Portal,
}

/// The portal a request came in on (the main one when the extension is absent).
type Received = Option<Extension<Portal>>;

fn portal_of(received: Received) -> Portal {
    received.map(|Extension(p)| p).unwrap_or_default()
}

/// How the request's `Data` came, and so how the reply's goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Encrypted,
    Plain,
}

fn authorize(sim: &SimState, h: &HeaderMap, received: Portal) -> Result<Caller, NicError> {
    check_client(sim, h)?;
    let gstin = require_gstin(h)?;
    if lock(&sim.rejected).contains(&gstin) {
        return Err(NicError::invalid_token(
            "every token of this GSTIN is rejected",
        ));
    }
    let token = header(h, &["authtoken"])
        .ok_or_else(|| NicError::invalid_token("AuthToken header missing"))?;
    let grant = lock(&sim.sessions)
        .grant(token, Utc::now())
        .ok_or_else(|| NicError::invalid_token("unknown, expired or revoked"))?;
    if grant.gstin != gstin {
        return Err(NicError::new("1015", "Invalid GSTIN for this user"));
    }
    match header(h, &["user_name", "user-name"]) {
        Some(u) if u == grant.username => {}
        _ => return Err(NicError::invalid_token("user_name is not the token's user")),
    }
    let portals = lock(&sim.portals).count();
    let target = resolve_irp(header(h, &["irp"]), received, portals).map_err(|_| {
        NicError::new(
            "3098",
            format!("Invalid value in the irp header: expected NIC1 to NIC{portals}"),
        )
    })?;
    Ok(Caller {
        gstin,
        sek: grant.sek,
        received,
        target,
    })
}

fn decode_input(sim: &SimState, caller: &Caller, body: &[u8]) -> Result<(Value, Form), NicError> {
    let outer: Value = serde_json::from_slice(body).map_err(|_| {
        NicError::new(
            "2140",
            "Request body is not JSON of the form {\"Data\": ...}",
        )
    })?;
    match outer.get("Data") {
        Some(Value::String(s)) => {
            let plain = caller.sek.decrypt_b64(s).map_err(|_| {
                NicError::new("2140", "Data could not be decrypted with the SEK of this AuthToken")
            })?;
            let v = serde_json::from_slice(&plain)
                .map_err(|_| NicError::new("2140", "Decrypted Data is not JSON"))?;
            Ok((v, Form::Encrypted))
        }
        Some(v @ Value::Object(_)) if sim.plain => Ok((v.clone(), Form::Plain)),
        Some(Value::Object(_)) => Err(NicError::new(
            "2140",
            "Data must be base64 of AES-256-ECB(SEK, JSON) (plain JSON is accepted only with --plain)",
        )),
        _ => Err(NicError::new("2140", "Data is required")),
    }
}

fn encode_reply(caller: &Caller, form: Form, data: Value) -> Response {
    let data = match form {
        Form::Plain => data,
        Form::Encrypted => Value::String(caller.sek.encrypt_b64(data.to_string().as_bytes())),
    };
    ok_reply(data, None)
}

/// Runs one data call: `body` is `None` for GETs, whose replies are plain in `--plain` mode
/// (an enriched GSP speaks plain JSON) and encrypted otherwise.
fn data_call(
    sim: &SimState,
    headers: &HeaderMap,
    received: Received,
    body: Option<&[u8]>,
    op: impl FnOnce(&SimState, &Caller, Value) -> Result<Value, NicError>,
) -> Response {
    let result = authorize(sim, headers, portal_of(received)).and_then(|caller| {
        let (input, form) = match body {
            Some(b) => decode_input(sim, &caller, b)?,
            None if sim.plain => (Value::Null, Form::Plain),
            None => (Value::Null, Form::Encrypted),
        };
        let out = op(sim, &caller, input)?;
        Ok(encode_reply(&caller, form, out))
    });
    result.unwrap_or_else(|e| sim.error_reply(headers, e))
}

async fn generate(
    State(sim): State<Arc<SimState>>,
    received: Received,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    data_call(&sim, &headers, received, Some(&body), generate_irn)
}

async fn cancel(
    State(sim): State<Arc<SimState>>,
    received: Received,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    data_call(&sim, &headers, received, Some(&body), cancel_irn)
}

async fn get_by_irn(
    State(sim): State<Arc<SimState>>,
    Path(irn): Path<String>,
    received: Received,
    headers: HeaderMap,
) -> Response {
    data_call(&sim, &headers, received, None, |sim, caller, _| {
        lookup(sim, caller, &irn)
    })
}

async fn generate_ewb(
    State(sim): State<Arc<SimState>>,
    received: Received,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    data_call(&sim, &headers, received, Some(&body), generate_ewb_by_irn)
}

async fn get_ewb(
    State(sim): State<Arc<SimState>>,
    Path(irn): Path<String>,
    received: Received,
    headers: HeaderMap,
) -> Response {
    data_call(&sim, &headers, received, None, |sim, caller, _| {
        ewb_by_irn(sim, caller, &irn)
    })
}

/// Query of `irnbydocdetails`.
#[derive(Deserialize)]
struct DocQuery {
    doctype: Option<String>,
    docnum: Option<String>,
    docdate: Option<String>,
}

async fn get_by_doc_details(
    State(sim): State<Arc<SimState>>,
    Query(q): Query<DocQuery>,
    received: Received,
    headers: HeaderMap,
) -> Response {
    data_call(&sim, &headers, received, None, |sim, caller, _| {
        let (Some(t), Some(n), Some(d)) = (q.doctype, q.docnum, q.docdate) else {
            return Err(NicError::new(
                "2142",
                "Incomplete request parameters (doctype, docnum, docdate)",
            ));
        };
        let doc = DocKey::parse(&caller.gstin, &t, &n, &d)?;
        lookup(sim, caller, &doc.irn())
    })
}

async fn master_gstin(
    State(sim): State<Arc<SimState>>,
    Path(gstin): Path<String>,
    received: Received,
    headers: HeaderMap,
) -> Response {
    data_call(&sim, &headers, received, None, |_, _, _| {
        taxpayer_master(&gstin)
    })
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// The fields that identify a document, validated.
struct DocKey {
    seller: String,
    doc_type: String,
    doc_no: String,
    doc_date: String,
    financial_year: String,
}

impl DocKey {
    fn parse(seller: &str, typ: &str, no: &str, dt: &str) -> Result<Self, NicError> {
        let doc_type = typ.trim().to_ascii_uppercase();
        if !matches!(doc_type.as_str(), "INV" | "CRN" | "DBN") {
            return Err(NicError::new("2140", "DocDtls.Typ must be INV, CRN or DBN"));
        }
        let no = no.trim();
        // NIC: 1-16 characters, letters, digits, '/' and '-', not starting with 0, '/' or '-'.
        let valid_no = (1..=16).contains(&no.len())
            && no
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '/' || c == '-')
            && no
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() && c != '0');
        if !valid_no {
            return Err(NicError::new(
                "2140",
                "DocDtls.No must be 1-16 characters of letters, digits, '/' or '-', not starting with 0, '/' or '-'",
            ));
        }
        let date = NaiveDate::parse_from_str(dt.trim(), "%d/%m/%Y")
            .map_err(|_| NicError::new("2140", "DocDtls.Dt must be a date dd/mm/yyyy"))?;
        Ok(Self {
            seller: seller.trim().to_ascii_uppercase(),
            doc_type,
            // NIC treats document numbers case-insensitively (since June 2025).
            doc_no: no.to_ascii_uppercase(),
            doc_date: date.format("%d/%m/%Y").to_string(),
            financial_year: financial_year(date),
        })
    }

    /// Lower-case hex SHA-256 of seller GSTIN + type + number + financial year.
    fn irn(&self) -> String {
        let digest = Sha256::digest(
            format!(
                "{}{}{}{}",
                self.seller, self.doc_type, self.doc_no, self.financial_year
            )
            .as_bytes(),
        );
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The Indian financial year (April–March) of a date, as "2024-25".
pub fn financial_year(d: NaiveDate) -> String {
    let start = if d.month() >= 4 {
        d.year()
    } else {
        d.year() - 1
    };
    format!("{}-{:02}", start, (start + 1).rem_euclid(100))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn required<'a>(v: &'a Value, pointer: &str, field: &str) -> Result<&'a str, NicError> {
    str_at(v, pointer).ok_or_else(|| NicError::new("2140", format!("{field} is required")))
}

/// Counts a generate call the simulator processes, on the portal that received it.
fn count_generate(sim: &SimState, caller: &Caller) {
    lock(&sim.counters).bump_at(caller.received, Some(&caller.gstin), |c| c.generates += 1);
}

fn generate_irn(sim: &SimState, caller: &Caller, inv: Value) -> Result<Value, NicError> {
    count_generate(sim, caller);
    let seller = str_at(&inv, "/SellerDtls/Gstin")
        .ok_or_else(|| NicError::new("2155", "Supplier GSTIN is required"))?;
    if !seller.eq_ignore_ascii_case(&caller.gstin) {
        return Err(NicError::new(
            "2143",
            format!(
                "Seller GSTIN {seller} does not belong to the user GSTIN {}",
                caller.gstin
            ),
        ));
    }
    let key = DocKey::parse(
        seller,
        required(&inv, "/DocDtls/Typ", "DocDtls.Typ")?,
        required(&inv, "/DocDtls/No", "DocDtls.No")?,
        required(&inv, "/DocDtls/Dt", "DocDtls.Dt")?,
    )?;
    let irn = key.irn();
    let mut docs = lock(&sim.documents);
    if let Some(existing) = docs.get_mut(&irn) {
        existing.generate_calls += 1;
        if sim.allow_duplicate_irn {
            return Ok(document_reply(existing));
        }
        let mut e = NicError::new("2150", "Duplicate IRN");
        e.info = Some(json!([{
            "InfCd": "DUPIRN",
            "Desc": {"AckNo": existing.ack_no, "AckDt": existing.ack_dt, "Irn": existing.irn},
        }]));
        return Err(e);
    }
    let doc = Document {
        irn,
        ack_no: docs.next_ack_no(),
        ack_dt: ist_now(),
        seller_gstin: key.seller,
        buyer_gstin: str_at(&inv, "/BuyerDtls/Gstin").map(str::to_ascii_uppercase),
        doc_type: key.doc_type,
        doc_no: key.doc_no,
        doc_date: key.doc_date,
        total_value: inv.pointer("/ValDtls/TotInvVal").and_then(Value::as_f64),
        status: DocStatus::Active,
        irp: caller.received,
        generate_calls: 1,
        ewb: None,
        ewb_generate_calls: 0,
    };
    let reply = document_reply(&doc);
    docs.insert(doc);
    Ok(reply)
}

fn cancel_irn(sim: &SimState, caller: &Caller, req: Value) -> Result<Value, NicError> {
    let irn = required(&req, "/Irn", "Irn")?.to_ascii_lowercase();
    let reason = match req.get("CnlRsn") {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    // NIC's reasons: 1 duplicate, 2 data entry mistake, 3 order cancelled, 4 others.
    if !matches!(reason.as_str(), "1" | "2" | "3" | "4") {
        return Err(NicError::new("2140", "CnlRsn must be 1, 2, 3 or 4"));
    }
    let mut docs = lock(&sim.documents);
    let doc = held(docs.get(&irn), caller)?;
    if doc.seller_gstin != caller.gstin {
        return Err(NicError::new(
            "2143",
            "Invoice does not belongs to the user GSTIN",
        ));
    }
    if doc.status != DocStatus::Active {
        return Err(NicError::new("9999", "Invoice is not active"));
    }
    let when = ist_now();
    docs.cancel(&irn, when.clone());
    Ok(json!({"Irn": irn, "CancelDate": when}))
}

/// The document, if it is held on the portal the caller searches; 2148 otherwise.
fn held<D: std::ops::Deref<Target = Document>>(
    doc: Option<D>,
    caller: &Caller,
) -> Result<D, NicError> {
    doc.filter(|d| d.irp == caller.target)
        .ok_or_else(|| NicError::new("2148", "Requested IRN data is not available"))
}

/// The caller's document: held on the portal searched and generated by the caller's GSTIN.
fn owned<D: std::ops::Deref<Target = Document>>(
    doc: Option<D>,
    caller: &Caller,
) -> Result<D, NicError> {
    let doc = held(doc, caller)?;
    if doc.seller_gstin != caller.gstin {
        return Err(NicError::new(
            "2143",
            "Invoice does not belongs to the user GSTIN",
        ));
    }
    Ok(doc)
}

fn lookup(sim: &SimState, caller: &Caller, irn: &str) -> Result<Value, NicError> {
    let docs = lock(&sim.documents);
    let doc = owned(docs.get(&irn.trim().to_ascii_lowercase()), caller)?;
    Ok(document_reply(doc))
}

fn generate_ewb_by_irn(sim: &SimState, caller: &Caller, req: Value) -> Result<Value, NicError> {
    count_generate(sim, caller);
    let irn = required(&req, "/Irn", "Irn")?.to_ascii_lowercase();
    let distance = match req.get("Distance") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|d: &f64| d.is_finite() && *d >= 0.0)
    .ok_or_else(|| NicError::new("2140", "Distance must be a number of kilometres"))?;
    let mut docs = lock(&sim.documents);
    {
        let doc = owned(docs.get_mut(&irn), caller)?;
        if doc.status != DocStatus::Active {
            return Err(NicError::new("9999", "Invoice is not active"));
        }
        doc.ewb_generate_calls += 1;
        if doc.ewb.is_some() {
            return Err(NicError::new(
                "4002",
                "EwayBill is already generated for this IRN",
            ));
        }
    }
    let now = Utc::now();
    let bill = IrnEwayBill {
        no: docs.next_ewb_no(),
        date: to_ist(now),
        valid_till: validity_end(distance, now)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default(),
    };
    let reply = json!({
        "EwbNo": bill.no,
        "EwbDt": bill.date,
        "EwbValidTill": bill.valid_till,
        "Alert": "",
    });
    if let Some(doc) = docs.get_mut(&irn) {
        doc.ewb = Some(bill);
    }
    Ok(reply)
}

fn ewb_by_irn(sim: &SimState, caller: &Caller, irn: &str) -> Result<Value, NicError> {
    let docs = lock(&sim.documents);
    let doc = owned(docs.get(&irn.trim().to_ascii_lowercase()), caller)?;
    let bill = doc
        .ewb
        .as_ref()
        .ok_or_else(|| NicError::new("4005", "Eway Bill details are not found"))?;
    Ok(json!({
        "EwbNo": bill.no,
        "Status": "ACT",
        "GenGstin": doc.seller_gstin,
        "EwbDt": bill.date,
        "EwbValidTill": bill.valid_till,
    }))
}

/// The reply of generate and of the IRN lookups.
fn document_reply(doc: &Document) -> Value {
    let (status, cancel_date) = match &doc.status {
        DocStatus::Active => ("ACT", Value::Null),
        DocStatus::Cancelled(when) => ("CNL", Value::String(when.clone())),
    };
    let invoice = json!({
        "Irn": doc.irn,
        "AckNo": doc.ack_no,
        "AckDt": doc.ack_dt,
        "SellerDtls": {"Gstin": doc.seller_gstin},
        "BuyerDtls": {"Gstin": doc.buyer_gstin},
        "DocDtls": {"Typ": doc.doc_type, "No": doc.doc_no, "Dt": doc.doc_date},
        "ValDtls": {"TotInvVal": doc.total_value},
    });
    let qr = json!({
        "SellerGstin": doc.seller_gstin,
        "BuyerGstin": doc.buyer_gstin,
        "DocNo": doc.doc_no,
        "DocTyp": doc.doc_type,
        "DocDt": doc.doc_date,
        "TotInvVal": doc.total_value,
        "Irn": doc.irn,
        "IrnDt": doc.ack_dt,
    });
    json!({
        "AckNo": doc.ack_no,
        "AckDt": doc.ack_dt,
        "Irn": doc.irn,
        "SignedInvoice": pseudo_jwt(&invoice),
        "SignedQRCode": pseudo_jwt(&qr),
        "Status": status,
        "CancelDate": cancel_date,
        "EwbNo": doc.ewb.as_ref().map(|e| e.no),
        "EwbDt": doc.ewb.as_ref().map(|e| e.date.clone()),
        "EwbValidTill": doc.ewb.as_ref().map(|e| e.valid_till.clone()),
        "Remarks": null,
    })
}

/// A JWT-shaped string like NIC's signed content (`{"data": "<json>", "iss": "NIC"}`); the
/// third part is a SHA-256 digest, not a signature — nothing can verify it.
fn pseudo_jwt(data: &Value) -> String {
    let header =
        B64URL.encode(json!({"alg": "RS256", "kid": "SIMULATOR", "typ": "JWT"}).to_string());
    let payload = B64URL.encode(json!({"data": data.to_string(), "iss": "NIC"}).to_string());
    let digest = Sha256::digest(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", B64URL.encode(digest))
}

/// Plausible master details of any well-formed GSTIN, derived from the GSTIN itself.
fn taxpayer_master(text: &str) -> Result<Value, NicError> {
    let g = Gstin::parse(text)
        .ok()
        .filter(|g| g.verify_checksum().is_ok())
        .ok_or_else(|| NicError::new("3028", format!("GSTIN - {text} is invalid")))?;
    let pan = &g.as_str()[2..12];
    let state: u32 = g.state_code().parse().unwrap_or(0);
    // A real PIN code of each state's capital for the common states; Delhi's otherwise.
    let pin = match state {
        5 => 248001,
        7 => 110001,
        9 => 226001,
        19 => 700001,
        24 => 382010,
        27 => 400001,
        29 => 560001,
        32 => 695001,
        33 => 600001,
        36 => 500001,
        _ => 110001,
    };
    Ok(json!({
        "Gstin": g.as_str(),
        "TradeName": format!("Sim Traders {pan}"),
        "LegalName": format!("SIM TRADERS {pan} PRIVATE LIMITED"),
        "AddrBnm": "Simulator House",
        "AddrBno": "1",
        "AddrFlno": null,
        "AddrSt": "Sandbox Road",
        "AddrLoc": "Test Nagar",
        "StateCode": state,
        "AddrPncd": pin,
        "TxpType": "REG",
        "Status": "ACT",
        "BlkStatus": "U",
        "DtReg": "2017-07-01",
        "DtDReg": null,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn financial_year_turns_in_april() {
        let d = |s| NaiveDate::parse_from_str(s, "%d/%m/%Y").unwrap();
        assert_eq!(financial_year(d("31/03/2025")), "2024-25");
        assert_eq!(financial_year(d("01/04/2025")), "2025-26");
        assert_eq!(financial_year(d("15/01/2000")), "1999-00");
    }

    #[test]
    fn irn_is_sha256_of_the_document_key() {
        let k = DocKey::parse("27aapfu0939f1zv", "inv", "abc/1", "05/06/2024").unwrap();
        let expected: String = Sha256::digest(b"27AAPFU0939F1ZVINVABC/12024-25")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(k.irn(), expected);
        assert!(DocKey::parse("X", "INV", "0123", "05/06/2024").is_err());
        assert!(DocKey::parse("X", "BIL", "1", "05/06/2024").is_err());
        assert!(DocKey::parse("X", "INV", "1", "2024-06-05").is_err());
    }
}
