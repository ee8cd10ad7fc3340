//! The control API under `/_sim/`: counters, revocation, token rejection, knobs, faults, the
//! request log and the public key — for tests and sandbox users.
//!
//! | endpoint | effect |
//! |---|---|
//! | `GET /_sim/counters`, `POST /_sim/counters/reset` | totals and per-GSTIN counts of logins (every API's auth calls), forced refreshes, new tokens, token rejections, data calls, GSTN OTP requests and refreshes, generate calls processed; logins, data calls and generates per portal (`per_irp`) |
//! | `POST /_sim/revoke {"gstin","username"}` | every token of that user dies at once, in all three APIs; the next login issues a new one (GSTN: the user's portal sessions are dropped too, so the next step is an OTP login) |
//! | `POST /_sim/reject-tokens {"gstin","enabled"}` | every data call for that GSTIN is answered 1005 / 238 / AUTH4033 (or no longer) |
//! | `GET`/`POST /_sim/knobs` | read / partially update `latency_ms`, `reply_latency_ms`, `token_ttl_secs` (new tokens only), `force_window_secs`, `error_http_status`, `force_refresh_revokes_old`, `ewb_plain_errors`, `ewb_login_window_secs`, `tamper_hmac`, `fixed_otp` (six digits, or null for random), `gstn_session_ttl_secs` (new sessions only), `gstn_max_sessions`, `stated_expiry_early_ms` (e-invoice `TokenExpiry` this much before the real expiry) |
//! | `GET /_sim/otp?gstin=&username=` | the user's pending GSTN OTP `{"otp"}` (404 `{"error"}` when none) — the SMS a taxpayer would get |
//! | `POST /_sim/gstn/access {"gstin","username","enabled"}` | switch the user's GSTN API access (off: OTPREQUEST/AUTHTOKEN answer AUTH4037) |
//! | `POST /_sim/gstn/end-session {"gstin","username"}` | end the user's GSTN portal sessions now (refresh and data calls answer AUTH4038) |
//! | `GET`/`POST`/`DELETE /_sim/faults` | read / replace / clear the fault rule (see `faults.rs`) |
//! | `GET /_sim/requests?limit=n`, `DELETE /_sim/requests` | the last n (≤ 200) protocol requests, oldest first: method, path, query, headers, body, the portal that received it |
//! | `GET /_sim/sessions` | live sessions of all three APIs: `api`, GSTIN, user, token, SEK (base64), IST expiry, previous still-valid token, GSTN portal session end — secrets on purpose, so tests can check nothing else leaks them |
//! | `POST /_sim/users/password {"gstin","username","password"}` | change an e-invoice or e-way bill user's password: logins with the old one are refused (1019 / 102), as after a taxpayer changes it on the portal; tokens already issued stay valid |
//! | `GET /_sim/public-key` | the RSA public key, PEM |
//! | `GET /_sim/irps` | the e-invoice portals: `irp` (`NIC1`…), `addr`, `state` (`up`, `refuse`, `hang`) |
//! | `POST /_sim/irps/{n}/down {"mode"}` | take portal n down: `refuse` (listener closed, connections dropped) or `hang` (requests accepted, never answered nor processed); refused through portal n itself |
//! | `POST /_sim/irps/{n}/up` | portal n serves again (a refusing one re-binds its port) |
//! | `GET /_sim/documents`, `DELETE /_sim/documents` | every e-invoice document (`irn`, `irp`, `generate_calls`, …) and e-way bill held, with counts; forget them all |
//!
//! Bodies are JSON, with or without `Content-Type: application/json`: a `curl -d` sends
//! another content type, and a control call refused for that only confuses.
//!
//! Control calls are not logged, counted or faulted. They are answered on every portal that
//! is up. There is no authentication here on purpose: this is a simulator bound to loopback by
//! default, and its whole point is that a test can reach in and change it. Never expose a
//! simulator port to a network you do not trust.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::FaultRule;
use super::portals::{Portal, PortalState, Received};
use super::server;
use super::state::{lock, Counters, Knobs, REQUEST_LOG_LEN};
use super::SimState;

/// The `/_sim/` routes.
pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/_sim/counters", get(counters))
        .route("/_sim/counters/reset", post(reset_counters))
        .route("/_sim/revoke", post(revoke))
        .route("/_sim/reject-tokens", post(reject_tokens))
        .route("/_sim/knobs", get(get_knobs).post(set_knobs))
        .route(
            "/_sim/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .route("/_sim/requests", get(requests).delete(clear_requests))
        .route("/_sim/public-key", get(public_key))
        .route("/_sim/sessions", get(sessions))
        .route("/_sim/otp", get(otp))
        .route("/_sim/gstn/access", post(gstn_access))
        .route("/_sim/gstn/end-session", post(gstn_end_session))
        .route("/_sim/users/password", post(set_password))
        .route("/_sim/irps", get(irps))
        .route("/_sim/irps/{n}/down", post(irp_down))
        .route("/_sim/irps/{n}/up", post(irp_up))
        .route("/_sim/documents", get(documents).delete(clear_documents))
}

/// A 400 with a JSON `{"error": …}` body.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({"error": self.0}))).into_response()
    }
}

/// A control call's JSON body, whatever its `Content-Type` (axum's `Json` insists on
/// `application/json`).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = BadRequest;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| BadRequest(e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| BadRequest(format!("the body is not the expected JSON: {e}")))
    }
}

/// What the mutating control handlers return.
type Reply = Result<Json<Value>, BadRequest>;

async fn counters(State(sim): State<Arc<SimState>>) -> Json<Counters> {
    Json(lock(&sim.counters).clone())
}

async fn reset_counters(State(sim): State<Arc<SimState>>) -> Json<Value> {
    *lock(&sim.counters) = Counters::default();
    Json(json!({"ok": true}))
}

/// Body of `/_sim/revoke`.
#[derive(Deserialize)]
struct RevokeBody {
    gstin: String,
    username: String,
}

async fn revoke(State(sim): State<Arc<SimState>>, JsonBody(b): JsonBody<RevokeBody>) -> Reply {
    let gstin = b.gstin.trim().to_ascii_uppercase();
    let n = lock(&sim.sessions).revoke(&gstin, &b.username)
        + lock(&sim.ewb).sessions.revoke(&gstin, &b.username)
        + lock(&sim.gstn).revoke(&gstin, &b.username, chrono::Utc::now());
    Ok(Json(json!({"ok": true, "revoked_tokens": n})))
}

/// Body of `/_sim/reject-tokens`.
#[derive(Deserialize)]
struct RejectBody {
    gstin: String,
    enabled: bool,
}

async fn reject_tokens(
    State(sim): State<Arc<SimState>>,
    JsonBody(b): JsonBody<RejectBody>,
) -> Reply {
    let gstin = b.gstin.trim().to_ascii_uppercase();
    let mut set = lock(&sim.rejected);
    if b.enabled {
        set.insert(gstin);
    } else {
        set.remove(&gstin);
    }
    let mut list: Vec<&String> = set.iter().collect();
    list.sort();
    Ok(Json(json!({"ok": true, "rejected_gstins": list})))
}

/// Partial update of the knobs; absent fields are left alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobsBody {
    latency_ms: Option<u64>,
    reply_latency_ms: Option<u64>,
    token_ttl_secs: Option<u64>,
    force_window_secs: Option<u64>,
    error_http_status: Option<u16>,
    force_refresh_revokes_old: Option<bool>,
    ewb_plain_errors: Option<bool>,
    ewb_login_window_secs: Option<u64>,
    tamper_hmac: Option<bool>,
    /// Absent: unchanged; null: random OTPs; a string: that OTP.
    #[serde(default, deserialize_with = "present")]
    fixed_otp: Option<Option<String>>,
    gstn_session_ttl_secs: Option<u64>,
    gstn_max_sessions: Option<usize>,
    stated_expiry_early_ms: Option<u64>,
}

/// Tells a field that is present (even as null) from one that is absent.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn knobs_json(k: &Knobs) -> Json<Value> {
    Json(json!({
        "latency_ms": k.latency.as_millis() as u64,
        "reply_latency_ms": k.reply_latency.as_millis() as u64,
        "token_ttl_secs": k.token_ttl.as_secs(),
        "force_window_secs": k.force_window.as_secs(),
        "error_http_status": k.error_http_status,
        "force_refresh_revokes_old": k.force_refresh_revokes_old,
        "ewb_plain_errors": k.ewb_plain_errors,
        "ewb_login_window_secs": k.ewb_login_window.as_secs(),
        "tamper_hmac": k.tamper_hmac,
        "fixed_otp": k.fixed_otp,
        "gstn_session_ttl_secs": k.gstn_session_ttl.as_secs(),
        "gstn_max_sessions": k.gstn_max_sessions,
        "stated_expiry_early_ms": k.stated_expiry_early.as_millis() as u64,
    }))
}

async fn get_knobs(State(sim): State<Arc<SimState>>) -> Json<Value> {
    knobs_json(&lock(&sim.knobs))
}

async fn set_knobs(State(sim): State<Arc<SimState>>, JsonBody(b): JsonBody<KnobsBody>) -> Reply {
    if let Some(s) = b.error_http_status {
        if StatusCode::from_u16(s).is_err() || !(100..=599).contains(&s) {
            return Err(BadRequest(format!(
                "error_http_status {s} is not an HTTP status"
            )));
        }
    }
    if let Some(Some(otp)) = &b.fixed_otp {
        if !super::is_otp(otp) {
            return Err(BadRequest(format!("fixed_otp {otp:?} is not six digits")));
        }
    }
    let mut k = lock(&sim.knobs);
    if let Some(ms) = b.latency_ms {
        k.latency = Duration::from_millis(ms);
    }
    if let Some(ms) = b.reply_latency_ms {
        k.reply_latency = Duration::from_millis(ms);
    }
    if let Some(s) = b.token_ttl_secs {
        k.token_ttl = Duration::from_secs(s);
    }
    if let Some(s) = b.force_window_secs {
        k.force_window = Duration::from_secs(s);
    }
    if let Some(s) = b.error_http_status {
        k.error_http_status = s;
    }
    if let Some(v) = b.force_refresh_revokes_old {
        k.force_refresh_revokes_old = v;
    }
    if let Some(v) = b.ewb_plain_errors {
        k.ewb_plain_errors = v;
    }
    if let Some(s) = b.ewb_login_window_secs {
        k.ewb_login_window = Duration::from_secs(s);
    }
    if let Some(v) = b.tamper_hmac {
        k.tamper_hmac = v;
    }
    if let Some(v) = b.fixed_otp {
        k.fixed_otp = v;
    }
    if let Some(s) = b.gstn_session_ttl_secs {
        k.gstn_session_ttl = Duration::from_secs(s);
    }
    if let Some(n) = b.gstn_max_sessions {
        k.gstn_max_sessions = n;
    }
    if let Some(ms) = b.stated_expiry_early_ms {
        k.stated_expiry_early = Duration::from_millis(ms);
    }
    Ok(knobs_json(&k))
}

fn fault_json(rule: Option<&FaultRule>) -> Json<Value> {
    Json(json!({"active": rule}))
}

async fn get_faults(State(sim): State<Arc<SimState>>) -> Json<Value> {
    fault_json(lock(&sim.faults).active())
}

async fn set_faults(
    State(sim): State<Arc<SimState>>,
    JsonBody(rule): JsonBody<FaultRule>,
) -> Reply {
    if let Some(why) = rule.invalid() {
        return Err(BadRequest(why));
    }
    if let Some(prefix) = rule.path_prefix.as_deref() {
        if prefix.starts_with("/_sim") {
            return Err(BadRequest("faults never apply to the control API".into()));
        }
        // A fault prefix is matched against the whole path a client sends, `--path-prefix`
        // included; one outside it would be accepted and never fire.
        if let Some(mount) = sim.path_prefix.as_deref() {
            let under = prefix == mount || prefix.starts_with(&format!("{mount}/"));
            if !under && !mount.starts_with(prefix) {
                return Err(BadRequest(format!(
                    "path_prefix {prefix:?} can never match: the simulator serves its APIs under --path-prefix {mount:?}, so write {:?}",
                    format!("{mount}{prefix}")
                )));
            }
        }
    }
    let mut f = lock(&sim.faults);
    f.set(rule);
    Ok(fault_json(f.active()))
}

async fn clear_faults(State(sim): State<Arc<SimState>>) -> Json<Value> {
    lock(&sim.faults).clear();
    fault_json(None)
}

/// Query of `/_sim/requests`.
#[derive(Deserialize)]
struct RequestsQuery {
    limit: Option<usize>,
}

async fn requests(State(sim): State<Arc<SimState>>, Query(q): Query<RequestsQuery>) -> Response {
    let limit = q.limit.unwrap_or(REQUEST_LOG_LEN);
    Json(lock(&sim.requests).recent(limit)).into_response()
}

async fn clear_requests(State(sim): State<Arc<SimState>>) -> Json<Value> {
    *lock(&sim.requests) = Default::default();
    Json(json!({"ok": true}))
}

async fn sessions(State(sim): State<Arc<SimState>>) -> Json<Value> {
    let now = chrono::Utc::now();
    let mut views = lock(&sim.sessions).views("einvoice", now);
    views.extend(lock(&sim.ewb).sessions.views("ewaybill", now));
    views.extend(lock(&sim.gstn).views(now));
    Json(json!({"sessions": views}))
}

/// Query of `/_sim/otp`.
#[derive(Deserialize)]
struct OtpQuery {
    gstin: String,
    username: String,
}

async fn otp(
    State(sim): State<Arc<SimState>>,
    q: Result<Query<OtpQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return BadRequest("gstin and username are required".into()).into_response();
    };
    let pending = lock(&sim.gstn).pending_otp(q.gstin.trim(), &q.username, chrono::Utc::now());
    match pending {
        Some(otp) => Json(json!({"otp": otp})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no OTP pending for this user"})),
        )
            .into_response(),
    }
}

/// Body of `/_sim/gstn/access`.
#[derive(Deserialize)]
struct AccessBody {
    gstin: String,
    username: String,
    enabled: bool,
}

async fn gstn_access(State(sim): State<Arc<SimState>>, JsonBody(b): JsonBody<AccessBody>) -> Reply {
    lock(&sim.gstn).set_access(b.gstin.trim(), &b.username, b.enabled);
    Ok(Json(json!({"ok": true, "enabled": b.enabled})))
}

async fn gstn_end_session(
    State(sim): State<Arc<SimState>>,
    JsonBody(b): JsonBody<RevokeBody>,
) -> Reply {
    let n = lock(&sim.gstn).end_sessions(b.gstin.trim(), &b.username, chrono::Utc::now());
    Ok(Json(json!({"ok": true, "ended_sessions": n})))
}

/// Body of `/_sim/users/password`.
#[derive(Deserialize)]
struct PasswordBody {
    gstin: String,
    username: String,
    password: String,
}

async fn set_password(
    State(sim): State<Arc<SimState>>,
    JsonBody(b): JsonBody<PasswordBody>,
) -> Reply {
    let gstin = b.gstin.trim();
    let mut users = lock(&sim.users);
    let user = users
        .iter_mut()
        .find(|u| u.gstin.eq_ignore_ascii_case(gstin) && u.username == b.username)
        .ok_or_else(|| BadRequest(format!("no user {:?} for GSTIN {gstin}", b.username)))?;
    user.password = b.password;
    Ok(Json(json!({"ok": true})))
}

async fn public_key(State(sim): State<Arc<SimState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        sim.public_key_pem.clone(),
    )
        .into_response()
}

async fn irps(State(sim): State<Arc<SimState>>) -> Json<Value> {
    Json(json!(lock(&sim.portals).views()))
}

/// Body of `/_sim/irps/{n}/down`.
#[derive(Deserialize)]
struct DownBody {
    mode: PortalState,
}

async fn irp_down(
    State(sim): State<Arc<SimState>>,
    Path(n): Path<usize>,
    received: Received,
    JsonBody(b): JsonBody<DownBody>,
) -> Reply {
    if b.mode == PortalState::Up {
        return Err(BadRequest(
            "mode must be \"refuse\" or \"hang\" (POST /_sim/irps/{n}/up brings it up)".into(),
        ));
    }
    server::take_down(&sim, Portal(n), b.mode, Portal::of(received))
        .await
        .map_err(|e| BadRequest(e.to_string()))?;
    Ok(Json(
        json!({"ok": true, "irps": lock(&sim.portals).views()}),
    ))
}

async fn irp_up(State(sim): State<Arc<SimState>>, Path(n): Path<usize>) -> Reply {
    server::bring_up(&sim, Portal(n))
        .await
        .map_err(|e| BadRequest(e.to_string()))?;
    Ok(Json(
        json!({"ok": true, "irps": lock(&sim.portals).views()}),
    ))
}

async fn documents(State(sim): State<Arc<SimState>>) -> Json<Value> {
    let irns = lock(&sim.documents).views();
    let ewbs = lock(&sim.ewb).views();
    Json(json!({
        "irn_count": irns.len(),
        "irns": irns,
        "ewb_count": ewbs.len(),
        "ewbs": ewbs,
    }))
}

async fn clear_documents(State(sim): State<Arc<SimState>>) -> Json<Value> {
    lock(&sim.documents).clear();
    lock(&sim.ewb).clear_bills();
    Json(json!({"ok": true}))
}
