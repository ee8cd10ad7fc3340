//! The admin listener (DESIGN.md §6): health, readiness, metrics, and the sessions API.
//!
//! Health and metrics stay open (probes and Prometheus scrape without secrets); everything
//! under `/admin/` needs `Authorization: Bearer <server.admin_token>` and is disabled when no
//! token is configured.

use std::sync::Arc;

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
use crate::session::Sessions;

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

async fn refresh(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((upstream, gstin)): Path<(String, String)>,
    Query(q): Query<UserQuery>,
) -> Response {
    if let Err(e) = authorize(&admin, &headers) {
        return e.into_response();
    }
    let gstin = match Gstin::parse(&gstin) {
        Ok(g) => g,
        Err(e) => return GatewayError::GstinInvalid(e.to_string()).into_response(),
    };
    let Some(slot) = admin.sessions.find(&upstream, &gstin, q.user.as_deref()) else {
        return GatewayError::NoCredential {
            upstream,
            gstin: gstin.to_string(),
        }
        .into_response();
    };
    match admin.sessions.refresh_now(&slot).await {
        Ok(s) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "upstream": upstream,
                "gstin": gstin.as_str(),
                "username": &*slot.credential.username,
                "generation": s.generation,
                "expires_at": chrono::DateTime::<chrono::Utc>::from(s.expires_at).to_rfc3339(),
            })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
