//! The admin listener (DESIGN.md §6): health, readiness, metrics, the sessions API and the
//! GSTN OTP flow.
//!
//! Health and metrics stay open (probes and Prometheus scrape without secrets); everything
//! under `/admin/` needs `Authorization: Bearer <server.admin_token>` and is disabled when no
//! token is configured.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::gstin::Gstin;
use crate::problem::GatewayError;
use crate::session::{Session, Sessions, Slot};

/// The admin listener's state.
pub struct Admin {
    /// Sessions to list and refresh.
    pub sessions: Arc<Sessions>,
    /// Metrics registry.
    pub registry: Registry,
    /// Bearer token for `/admin/*`.
    pub token: Option<SecretString>,
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        // Open like /metrics: browsers cannot send a bearer token, and the page has no secrets.
        .route("/status", get(crate::status_page::handler))
        .route("/admin/sessions", get(sessions))
        .route("/admin/sessions/{upstream}/{gstin}/refresh", post(refresh))
        .route(
            "/admin/sessions/{upstream}/{gstin}/otp-request",
            post(otp_request),
        )
        .route("/admin/sessions/{upstream}/{gstin}/otp", post(otp))
        .fallback(|| async { GatewayError::RouteNotFound("admin".into()) })
        .with_state(admin)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    match crate::metrics::render(&admin.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => GatewayError::Internal("metrics encoding failed".into()).into_response(),
    }
}

fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(expected) = &admin.token else {
        return Err(GatewayError::Unauthenticated);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(GatewayError::Unauthenticated)
    }
}

async fn sessions(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&admin, &headers) {
        return e.into_response();
    }
    Json(serde_json::json!({ "sessions": admin.sessions.snapshot() })).into_response()
}

/// `?user=` picks one user when a GSTIN has several on the upstream.
#[derive(Deserialize)]
struct UserQuery {
    user: Option<String>,
}

/// The slot an admin path names, after the bearer check.
fn slot_for(
    admin: &Admin,
    headers: &HeaderMap,
    upstream: &str,
    gstin: &str,
    user: Option<&str>,
) -> Result<Arc<Slot>, GatewayError> {
    authorize(admin, headers)?;
    let gstin = Gstin::parse(gstin).map_err(|e| GatewayError::GstinInvalid(e.to_string()))?;
    admin
        .sessions
        .find(upstream, &gstin, user)
        .ok_or_else(|| GatewayError::NoCredential {
            upstream: upstream.to_owned(),
            gstin: gstin.to_string(),
        })
}

fn session_body(slot: &Slot, session: &Session) -> serde_json::Value {
    serde_json::json!({
        "upstream": &*slot.upstream.name,
        "gstin": slot.credential.gstin.as_str(),
        "username": &*slot.credential.username,
        "generation": session.generation,
        "expires_at": chrono::DateTime::<chrono::Utc>::from(session.expires_at).to_rfc3339(),
    })
}

async fn refresh(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((upstream, gstin)): Path<(String, String)>,
    Query(q): Query<UserQuery>,
) -> Response {
    let slot = match slot_for(&admin, &headers, &upstream, &gstin, q.user.as_deref()) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    match admin.sessions.refresh_now(&slot).await {
        Ok(s) => (StatusCode::OK, Json(session_body(&slot, &s))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST …/otp-request`: the upstream sends the taxpayer an OTP.
async fn otp_request(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((upstream, gstin)): Path<(String, String)>,
    Query(q): Query<UserQuery>,
) -> Response {
    let slot = match slot_for(&admin, &headers, &upstream, &gstin, q.user.as_deref()) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    match admin.sessions.request_otp(&slot).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "status": "otp_requested",
                "upstream": &*slot.upstream.name,
                "gstin": slot.credential.gstin.as_str(),
                "username": &*slot.credential.username,
                "next": format!(
                    "POST /admin/sessions/{}/{}/otp with {{\"otp\": \"<the OTP the taxpayer received>\"}}",
                    slot.upstream.name, slot.credential.gstin
                ),
            })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The body of `POST …/otp`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OtpBody {
    otp: String,
}

/// `POST …/otp` with `{"otp": "123456"}`: starts the GSTN session.
async fn otp(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((upstream, gstin)): Path<(String, String)>,
    Query(q): Query<UserQuery>,
    body: Bytes,
) -> Response {
    let slot = match slot_for(&admin, &headers, &upstream, &gstin, q.user.as_deref()) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let Ok(body) = serde_json::from_slice::<OtpBody>(&body) else {
        return GatewayError::BodyInvalid("expected {\"otp\": \"123456\"}".into()).into_response();
    };
    match admin.sessions.submit_otp(&slot, &body.otp).await {
        Ok(s) => (StatusCode::OK, Json(session_body(&slot, &s))).into_response(),
        Err(e) => e.into_response(),
    }
}
