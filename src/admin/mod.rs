//! The admin listener: health, readiness, metrics, the sessions API and the
//! GSTN OTP flow.
//!
//! Health and readiness stay open (probes carry no secrets). Metrics and the status page are
//! open unless `server.monitoring_token` is set; then they need it (or the admin token), as a
//! bearer token or, for a browser, as the password of HTTP Basic. Everything under `/admin/`
//! needs `Authorization: Bearer <server.admin_token>` and is disabled when no token is
//! configured.
//!
//! Every request first passes `gate`: the bearer check (before any path, query or body is
//! looked at), a small body limit read within `server.header_read_timeout` (a body is a few
//! bytes, and a client that trickles one must not hold a connection for longer than a slow
//! head can), and the `server.request_timeout` deadline. Every failure,
//! axum's own 404, 405 and extractor rejections included, is a problem document with the
//! request id.

mod audit;
mod auth;
pub mod listing;
pub mod status_page;

use crate::dropin::Dropin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::time::Instant;

pub use self::audit::log_signal_reload;
use self::audit::Audit;
use self::auth::{authorize, authorize_monitoring, is_monitoring, needs_token};
use crate::body::{read_whole, ReadError};
use crate::gstin::Gstin;
use crate::problem::{fill_request_id, GatewayError};
use crate::reload::Reloader;
use crate::session::{Session, Sessions, Slot};
use crate::tasks::Tasks;
use crate::upstream::Upstream;

/// The largest request body the admin listener reads. Only `{"otp": "…"}` is ever sent, so a
/// few KiB is ample, and nobody can make the listener buffer more.
pub const MAX_BODY_BYTES: usize = 4096;

/// The admin listener's state.
pub struct Admin {
    /// Sessions to list and refresh.
    pub sessions: Arc<Sessions>,
    /// The drop-in sessions, counted on the sessions API and the status page.
    pub dropin: Arc<Dropin>,
    /// Metrics registry.
    pub registry: Registry,
    /// The upstreams, whose targets' circuits the status page shows.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Bearer token for `/admin/*`.
    pub token: Option<SecretString>,
    /// Token for `/metrics` and `/status`, when they are not open.
    pub monitoring_token: Option<SecretString>,
    /// `server.request_timeout`: the bound on receiving and answering one request.
    pub request_timeout: Duration,
    /// `server.header_read_timeout`: the bound on receiving a request's body, as on its head.
    pub body_timeout: Duration,
    /// Reloads the configuration for `POST /admin/reload`.
    pub reloader: Arc<Reloader>,
    /// The gateway's tasks: an admin action's work runs on them, so shutdown waits for it.
    pub tasks: Tasks,
}

/// The request id the listener chose (the caller's or a new one), for the problem bodies.
#[derive(Debug, Clone)]
pub struct RequestId(pub std::sync::Arc<str>);

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page::handler))
        .route("/admin/sessions", get(sessions))
        .route("/admin/sessions/{upstream}/{gstin}/refresh", post(refresh))
        .route(
            "/admin/sessions/{upstream}/{gstin}/otp-request",
            post(otp_request),
        )
        .route("/admin/sessions/{upstream}/{gstin}/otp", post(otp))
        .route("/admin/reload", post(reload))
        .route("/admin/upstreams", get(upstreams))
        // After the routes: it applies to the routes present. axum still adds `Allow`.
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            GatewayError::AdminMethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_owned(),
            }
        })
        .fallback(|uri: Uri| async move { GatewayError::AdminRouteNotFound(uri.path().to_owned()) })
        // A layer on the router wraps every route and both fallbacks, so nothing is served
        // without passing `gate`.
        .layer(middleware::from_fn_with_state(admin.clone(), gate))
        .with_state(admin)
}

/// `GET /readyz`: ready once listening, whatever the store does. A shared store that is
/// unreachable is reported but does not fail readiness: every replica shares it, so failing
/// would take them all out of the load balancer at once, while each can go on serving the
/// sessions it holds and log in within its share of the login allowance.
async fn readyz(State(admin): State<Arc<Admin>>) -> &'static str {
    if admin.sessions.metrics().store_up.get() == 1 {
        "ready\nstore: up\n"
    } else {
        "ready\nstore: unreachable (serving the sessions held in memory; logins within this replica's share)\n"
    }
}

/// Admits a request before any handler or extractor runs: checks the bearer token for `/admin/*`,
/// reads the body within [`MAX_BODY_BYTES`] and `body_timeout`, bounds the whole request by
/// `request_timeout`, and puts the request id into whatever problem comes back.
async fn gate(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let deadline = Instant::now() + admin.request_timeout;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_else(|| crate::request::request_id(req.headers()));
    let audit = Audit::of(&req);
    let res = match receive(&admin, req, deadline).await {
        // Spawned, so that the deadline only ends the wait: a login or OTP submission already
        // sent still completes and is recorded (an OTP is single-use, and the upstream's own
        // timeout bounds the call), and /admin/sessions then shows the outcome.
        Ok(req) => match tokio::time::timeout_at(
            deadline,
            admin.tasks.spawn(crate::request::carry(
                Some(request_id.clone()),
                next.run(req),
            )),
        )
        .await
        {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => GatewayError::Internal("the admin handler failed".into()).into_response(),
            // The request arrived; what took too long is the work behind it (a login): 504
            // `upstream_timeout`, as the proxy answers its own `request_timeout`.
            Err(_) => {
                GatewayError::AdminActionTimeout(admin.request_timeout.as_millis()).into_response()
            }
        },
        Err(err) => {
            let timed_out = matches!(err, GatewayError::RequestTimeout(_));
            let mut res = err.into_response();
            if timed_out {
                // The rest of a trickled body may still come, and could not be told apart
                // from a next request: the connection is not reused.
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }
    };
    let res = fill_request_id(res, &request_id);
    if let Some(audit) = audit {
        audit.log(&request_id, &res);
    }
    res
}

/// The bearer check, on the head alone, then the bounded body read; the request comes back
/// with its body buffered.
async fn receive(admin: &Admin, req: Request, deadline: Instant) -> Result<Request, GatewayError> {
    let path = req.uri().path();
    if needs_token(path) {
        authorize(admin, req.headers())?;
    } else if is_monitoring(path) {
        authorize_monitoring(admin, req.headers())?;
    }
    let (parts, body) = req.into_parts();
    let read = read_whole(body, MAX_BODY_BYTES);
    let bound = admin.body_timeout.min(admin.request_timeout);
    let bytes = match tokio::time::timeout_at(deadline.min(Instant::now() + bound), read).await {
        Err(_) => return Err(GatewayError::RequestTimeout(bound.as_millis())),
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::TooLarge(limit))) => return Err(GatewayError::AdminBodyTooLarge(limit)),
        Ok(Err(ReadError::Failed(_))) => {
            return Err(GatewayError::AdminRequestInvalid(
                "the request body could not be read".into(),
            ))
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// How long a page waits for its turn to render before it is refused (503): a flood of
/// open monitoring pages must not queue up work that goes on long after its callers left.
const RENDER_WAIT: Duration = Duration::from_secs(10);

/// Pages rendered at once: half the cores, at least one. `/metrics` and `/status` may be open
/// to anyone who reaches the admin listener (no `monitoring_token`), and at 100,000 sessions
/// each costs 10–25 ms of CPU: a flood of them must not take every core from the proxy.
fn renders() -> &'static tokio::sync::Semaphore {
    static RENDERS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new((cores / 2).max(1))
    })
}

/// Runs `render` on the blocking pool when its turn comes ([`renders`]). On a runtime worker,
/// a render that long would hold up the proxied requests queued behind it (BENCHMARKS.md,
/// the scale scenario's burst under admin load).
async fn off_the_runtime<T: Send + 'static>(
    render: impl FnOnce() -> T + Send + 'static,
) -> Result<T, GatewayError> {
    let busy = || {
        GatewayError::NotReady(
            "the admin listener is busy rendering other pages; retry shortly".into(),
        )
    };
    let _turn = match tokio::time::timeout(RENDER_WAIT, renders().acquire()).await {
        Ok(Ok(turn)) => turn,
        Ok(Err(_)) | Err(_) => return Err(busy()),
    };
    tokio::task::spawn_blocking(render).await.map_err(|e| {
        tracing::error!(error = %e, "rendering an admin page failed");
        GatewayError::Internal("rendering the page failed".into())
    })
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let rendered = off_the_runtime(move || crate::metrics::render(&admin.registry)).await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(_)) => GatewayError::Internal("metrics encoding failed".into()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// An extractor whose rejection is a `request_invalid` problem instead of axum's text/plain.
struct Checked<T>(T);

impl<S, T> FromRequestParts<S> for Checked<T>
where
    S: Send + Sync,
    T: FromRequestParts<S>,
    T::Rejection: std::fmt::Display,
{
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        T::from_request_parts(parts, state)
            .await
            .map(Checked)
            .map_err(|e| GatewayError::AdminRequestInvalid(e.to_string()))
    }
}

/// `GET /admin/sessions`: one page of the sessions (filtered by `state`, `upstream`, `gstin`),
/// a `next` link while more follow, and the summary over every session.
/// `GET /admin/upstreams`: each upstream target's circuit, in configured order.
async fn upstreams(State(admin): State<Arc<Admin>>) -> Json<serde_json::Value> {
    let targets: Vec<serde_json::Value> = status_page::target_rows(&admin.upstreams)
        .into_iter()
        .map(|(upstream, target, state)| {
            serde_json::json!({"upstream": &*upstream, "target": &*target, "state": state.label()})
        })
        .collect();
    Json(serde_json::json!({ "targets": targets }))
}

async fn sessions(
    State(admin): State<Arc<Admin>>,
    Checked(Query(q)): Checked<Query<listing::SessionsQuery>>,
) -> Result<Response, GatewayError> {
    let (filter, position, limit) = q.parse()?;
    let (page, filter) = {
        let admin = admin.clone();
        off_the_runtime(move || {
            let page = listing::list(&admin.sessions, &filter, &position, limit);
            (page, filter)
        })
        .await?
    };
    let next_cursor = page.next.as_ref().map(listing::encode_cursor);
    let next = next_cursor.as_ref().map(|c| {
        let query = listing::query_string(
            &filter,
            &[("limit", limit.to_string()), ("cursor", c.clone())],
        );
        format!("/admin/sessions?{query}")
    });
    let dropin: Vec<serde_json::Value> = admin
        .dropin
        .counts()
        .into_iter()
        .map(|(upstream, client, live)| {
            serde_json::json!({"upstream": &*upstream, "client": &*client, "live": live})
        })
        .collect();
    Ok(Json(serde_json::json!({
        "sessions": page.sessions,
        "total": page.matched,
        "limit": limit,
        "next": next,
        "next_cursor": next_cursor,
        "summary": page.summary,
        "dropin_sessions": dropin,
    }))
    .into_response())
}

/// `?user=` picks one user when a GSTIN has several on the upstream.
#[derive(Deserialize)]
struct UserQuery {
    user: Option<String>,
}

/// The (upstream, GSTIN) an admin path names.
type SlotPath = Checked<Path<(String, String)>>;

/// The slot an admin path names; a GSTIN with several users needs `?user=`, as the proxy
/// needs `user_name`.
fn slot_for(
    admin: &Admin,
    upstream: &str,
    gstin: &str,
    user: Option<&str>,
) -> Result<Arc<Slot>, GatewayError> {
    let gstin = Gstin::parse(gstin).map_err(|e| GatewayError::GstinInvalid(e.to_string()))?;
    admin.sessions.find(upstream, &gstin, user)
}

fn session_body(slot: &Slot, session: &Session) -> serde_json::Value {
    serde_json::json!({
        "upstream": &*slot.upstream.name,
        "gstin": slot.credential.gstin.as_str(),
        "username": &*slot.credential.username,
        "generation": session.generation,
        "expires_at": crate::timestamp::rfc3339(session.expires_at),
    })
}

/// `POST /admin/reload`: reads the configuration file again and applies its clients and
/// credentials, or refuses it with the reason (422 `config_invalid`).
async fn reload(State(admin): State<Arc<Admin>>) -> Result<Response, GatewayError> {
    let reloader = admin.reloader.clone();
    let report = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .map_err(|_| GatewayError::Internal("the reload task failed".into()))?
        .map_err(|e| {
            tracing::warn!(error = %e, "configuration reload refused; the running configuration stays");
            GatewayError::ConfigInvalid(e.to_string())
        })?;
    Ok((StatusCode::OK, Json(report)).into_response())
}

/// `POST …/refresh`: logs in now and clears a lockout.
async fn refresh(
    State(admin): State<Arc<Admin>>,
    Checked(Path((upstream, gstin))): SlotPath,
    Checked(Query(q)): Checked<Query<UserQuery>>,
) -> Result<Response, GatewayError> {
    let slot = slot_for(&admin, &upstream, &gstin, q.user.as_deref())?;
    let session = admin.sessions.refresh_now(&slot).await?;
    Ok((StatusCode::OK, Json(session_body(&slot, &session))).into_response())
}

/// `POST …/otp-request`: the upstream sends the taxpayer an OTP.
async fn otp_request(
    State(admin): State<Arc<Admin>>,
    Checked(Path((upstream, gstin))): SlotPath,
    Checked(Query(q)): Checked<Query<UserQuery>>,
) -> Result<Response, GatewayError> {
    let slot = slot_for(&admin, &upstream, &gstin, q.user.as_deref())?;
    admin.sessions.request_otp(&slot).await?;
    Ok((
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
        .into_response())
}

/// The body of `POST …/otp`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OtpBody {
    otp: String,
}

/// How many digits a GSTN OTP has.
pub const OTP_LEN: usize = 6;

/// Reads the body of `POST …/otp`: a JSON object whose one member is `otp`, a string of
/// exactly six ASCII digits. Anything else (an array, a number, spaces, a newline, other
/// members) is refused here, before a login is spent on it upstream.
pub fn parse_otp_body(body: &[u8]) -> Result<SecretString, GatewayError> {
    let invalid = || GatewayError::AdminBodyInvalid("expected {\"otp\": \"123456\"}".into());
    // serde's derived struct would also accept the array form `["123456"]`.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(invalid());
    }
    let body = serde_json::from_slice::<OtpBody>(body).map_err(|_| invalid())?;
    if body.otp.len() != OTP_LEN || !body.otp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::OtpInvalid {
            upstream_code: None,
            detail: "an OTP is the 6 digits the taxpayer received, with nothing around them".into(),
        });
    }
    Ok(SecretString::from(body.otp))
}

/// `POST …/otp` with `{"otp": "123456"}`: starts the GSTN session.
async fn otp(
    State(admin): State<Arc<Admin>>,
    Checked(Path((upstream, gstin))): SlotPath,
    Checked(Query(q)): Checked<Query<UserQuery>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let slot = slot_for(&admin, &upstream, &gstin, q.user.as_deref())?;
    // `gate` has already read the body within the limit, so this cannot fail in practice;
    // if it did, the caller still gets a problem rather than axum's text.
    let body = body.map_err(|e| GatewayError::AdminRequestInvalid(e.to_string()))?;
    let otp = parse_otp_body(&body)?;
    let session = admin.sessions.submit_otp(&slot, otp).await?;
    Ok((StatusCode::OK, Json(session_body(&slot, &session))).into_response())
}
