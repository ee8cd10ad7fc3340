//! The control API under `/_sim/`: counters, revocation, token rejection, knobs, faults, the
//! request log and the public key — for tests and sandbox users.
//!
//! | endpoint | effect |
//! |---|---|
//! | `GET /_sim/counters`, `POST /_sim/counters/reset` | totals and per-GSTIN counts of logins, forced refreshes, new tokens, 1005 replies, data calls |
//! | `POST /_sim/revoke {"gstin","username"}` | every token of that user dies at once; the next login issues a new one |
//! | `POST /_sim/reject-tokens {"gstin","enabled"}` | every data call for that GSTIN is answered 1005 (or no longer) |
//! | `GET`/`POST /_sim/knobs` | read / partially update `latency_ms`, `token_ttl_secs` (new tokens only), `force_window_secs`, `error_http_status`, `force_refresh_revokes_old` |
//! | `GET`/`POST`/`DELETE /_sim/faults` | read / replace / clear the fault rule (see `faults.rs`) |
//! | `GET /_sim/requests?limit=n`, `DELETE /_sim/requests` | the last n (≤ 200) protocol requests, oldest first: method, path, query, headers, body |
//! | `GET /_sim/sessions` | live sessions: GSTIN, user, token, SEK (base64), IST expiry, previous still-valid token — secrets on purpose, so tests can check nothing else leaks them |
//! | `GET /_sim/public-key` | the RSA public key, PEM |
//!
//! Control calls are not logged, counted or faulted. There is no authentication here on purpose: this is a simulator bound to loopback by
//! default, and its whole point is that a test can reach in and change it. Never expose a
//! simulator port to a network you do not trust.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::FaultRule;
use super::state::{lock, Counters, Knobs, SimState, REQUEST_LOG_LEN};

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
}

/// A 400 with a JSON `{"error": …}` body.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({"error": self.0}))).into_response()
    }
}

impl From<JsonRejection> for BadRequest {
    fn from(r: JsonRejection) -> Self {
        Self(r.body_text())
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

async fn revoke(
    State(sim): State<Arc<SimState>>,
    b: Result<Json<RevokeBody>, JsonRejection>,
) -> Reply {
    let Json(b) = b?;
    let n = lock(&sim.sessions).revoke(&b.gstin.trim().to_ascii_uppercase(), &b.username);
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
    b: Result<Json<RejectBody>, JsonRejection>,
) -> Reply {
    let Json(b) = b?;
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
    token_ttl_secs: Option<u64>,
    force_window_secs: Option<u64>,
    error_http_status: Option<u16>,
    force_refresh_revokes_old: Option<bool>,
}

fn knobs_json(k: &Knobs) -> Json<Value> {
    Json(json!({
        "latency_ms": k.latency.as_millis() as u64,
        "token_ttl_secs": k.token_ttl.as_secs(),
        "force_window_secs": k.force_window.as_secs(),
        "error_http_status": k.error_http_status,
        "force_refresh_revokes_old": k.force_refresh_revokes_old,
    }))
}

async fn get_knobs(State(sim): State<Arc<SimState>>) -> Json<Value> {
    knobs_json(&lock(&sim.knobs))
}

async fn set_knobs(
    State(sim): State<Arc<SimState>>,
    b: Result<Json<KnobsBody>, JsonRejection>,
) -> Reply {
    let Json(b) = b?;
    if let Some(s) = b.error_http_status {
        if StatusCode::from_u16(s).is_err() || !(100..=599).contains(&s) {
            return Err(BadRequest(format!(
                "error_http_status {s} is not an HTTP status"
            )));
        }
    }
    let mut k = lock(&sim.knobs);
    if let Some(ms) = b.latency_ms {
        k.latency = Duration::from_millis(ms);
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
    b: Result<Json<FaultRule>, JsonRejection>,
) -> Reply {
    let Json(rule) = b?;
    if rule
        .path_prefix
        .as_deref()
        .is_some_and(|p| p.starts_with("/_sim"))
    {
        return Err(BadRequest("faults never apply to the control API".into()));
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
    let views = lock(&sim.sessions).views(chrono::Utc::now());
    Json(json!({"sessions": views}))
}

async fn public_key(State(sim): State<Arc<SimState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        sim.public_key_pem.clone(),
    )
        .into_response()
}
