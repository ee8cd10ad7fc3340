//! The simulator's HTTP plumbing: the accept loop, per-connection control, and the intercept
//! layer every protocol request passes through (log, count, fault, latency).
//!
//! The accept loop is hand-written rather than `axum::serve` because the `reset` fault must be
//! able to drop one connection without answering, and `hang` connections must not keep the
//! simulator from stopping: each connection task selects between serving, its kill switch and
//! the shutdown signal. One accept loop runs per e-invoice portal (`portals.rs`); a portal
//! taken down drops its listener and connections, a hanging one never answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use super::einvoice::header_gstin;
use super::faults::{self, ConnKill, FaultMode};
use super::portals::{Portal, PortalError, PortalState};
use super::state::{lock, LoggedRequest, LOGGED_BODY_MAX};
use super::{is_auth_path, Api, SimState};

/// Largest request body the simulator reads (NIC's limit is of the same order).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How long in-flight requests get to finish at shutdown before their connections are dropped
/// (hanging requests never finish on their own).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Starts serving `portal` on `listener` in `state` (`up`, or `hang`), unless another call
/// started it meanwhile.
pub fn launch(sim: &Arc<SimState>, portal: Portal, listener: TcpListener, state: PortalState) {
    let app = super::router(sim.clone(), sim.path_prefix.as_deref());
    let (down, down_rx) = watch::channel(false);
    let mut portals = lock(&sim.portals);
    if !portals.needs_listener(portal) {
        return;
    }
    let on = Listener {
        sim: sim.clone(),
        portal,
        shutdown: portals.shutdown_signal(),
        down: down_rx,
    };
    let task = tokio::spawn(serve(listener, app, on));
    portals.serving(portal, down, task, state);
}

/// Takes `portal` down in `mode` (`refuse` or `hang`) through the portal `received`;
/// returns once a refusing portal's listener is closed, or a hanging one listens.
pub async fn take_down(
    sim: &Arc<SimState>,
    portal: Portal,
    mode: PortalState,
    received: Portal,
) -> Result<(), PortalError> {
    let task = lock(&sim.portals).take_down(portal, mode, received)?;
    if let Some(task) = task {
        let _ = task.await;
    }
    if mode == PortalState::Hang {
        // A refusing portal that is to hang must accept connections again.
        rebind(sim, portal, PortalState::Hang).await?;
    }
    Ok(())
}

/// Brings `portal` back up: a refusing one binds its port again and serves.
pub async fn bring_up(sim: &Arc<SimState>, portal: Portal) -> Result<(), PortalError> {
    if lock(&sim.portals).bring_up(portal)? {
        rebind(sim, portal, PortalState::Up).await?;
    }
    Ok(())
}

/// Binds `portal`'s address again and serves it in `state`, if it has no listener.
async fn rebind(
    sim: &Arc<SimState>,
    portal: Portal,
    state: PortalState,
) -> Result<(), PortalError> {
    let addr = {
        let portals = lock(&sim.portals);
        if !portals.needs_listener(portal) {
            return Ok(());
        }
        portals.addr(portal)?
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| PortalError::Rebind {
            portal: portal.0,
            addr,
            source,
        })?;
    launch(sim, portal, listener, state);
    Ok(())
}

/// What an accept loop serves as and listens to.
pub struct Listener {
    /// The shared state (the portal's state is read per request).
    pub sim: Arc<SimState>,
    /// Which portal this listener is.
    pub portal: Portal,
    /// The simulator's stop signal: stop accepting, let requests finish briefly.
    pub shutdown: watch::Receiver<bool>,
    /// The portal's down signal: close the listener and drop every connection at once.
    pub down: watch::Receiver<bool>,
}

/// Accepts connections until `shutdown` fires (or its sender is dropped), or drops them all
/// when the portal is taken down.
pub async fn serve(listener: TcpListener, app: Router, mut on: Listener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = on.shutdown.changed() => break,
            _ = on.down.changed() => {
                // Connection refused from now on, and no reply on open connections.
                drop(listener);
                conns.abort_all();
                while conns.join_next().await.is_some() {}
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(
                        stream,
                        app.clone(),
                        on.sim.clone(),
                        on.portal,
                        on.shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    sim: Arc<SimState>,
    portal: Portal,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let kill = Arc::new(Notify::new());
    let conn_kill = ConnKill(kill.clone());
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let hung = lock(&sim.portals).state(portal) == PortalState::Hang;
        req.extensions_mut().insert(conn_kill.clone());
        req.extensions_mut().insert(portal);
        async move {
            if hung {
                // A hanging portal reads the request and never looks at it.
                return std::future::pending().await;
            }
            app.oneshot(req.map(Body::new)).await
        }
    });
    // The timer drives hyper's header-read timeout (30 s), so a silent client cannot pin a task.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Dropping the connection closes the socket with no response written.
        _ = kill.notified() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
        }
    }
}

/// What kind of protocol request this is, for the counters.
#[derive(PartialEq, Eq)]
enum Kind {
    Auth,
    Data,
    Unrouted,
}

/// The layer in front of every protocol route (and the 404 fallback): buffers the body, logs
/// the request, counts it, applies an active fault, adds the artificial latency to data calls (`latency` before
/// the handler, `reply_latency` after it).
pub async fn intercept(State(sim): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
    };
    let path = parts.uri.path().to_string();
    if path.starts_with("/_sim/") {
        // An unknown control path reached the fallback: not a protocol request.
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    log_request(&sim, &parts, &bytes);

    let kind = if is_auth_path(&path) {
        Kind::Auth
    } else if parts.extensions.get::<MatchedPath>().is_some() {
        Kind::Data
    } else {
        Kind::Unrouted
    };
    let gstin = header_gstin(&parts.headers);
    let portal = parts
        .extensions
        .get::<Portal>()
        .copied()
        .unwrap_or_default();
    match kind {
        Kind::Auth => lock(&sim.counters).bump_at(portal, gstin.as_deref(), |c| c.auth_calls += 1),
        Kind::Data => lock(&sim.counters).bump_at(portal, gstin.as_deref(), |c| c.requests += 1),
        Kind::Unrouted => {}
    }

    // Faults match the path as the client sent it: under `--path-prefix` the routes see it
    // with the prefix taken off.
    let sent = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(path.as_str(), |u| u.path());
    let fault = lock(&sim.faults).take(parts.method.as_str(), sent, rand::random::<f64>());
    let mut hop_header = false;
    let mut commit_drop = false;
    match fault {
        Some((FaultMode::Slow, delay)) => {
            tracing::info!(path = %path, delay_ms = delay.as_millis(), "sim: answering late");
            tokio::time::sleep(delay).await;
        }
        Some((FaultMode::HopHeader, _)) => {
            tracing::info!(path = %path, "sim: answering with a hop-by-hop header");
            hop_header = true;
        }
        Some((FaultMode::CommitDrop, _)) => {
            tracing::info!(path = %path, "sim: processing, then dropping the reply");
            commit_drop = true;
        }
        Some((mode, _)) => {
            tracing::info!(path = %path, ?mode, "sim: injecting fault");
            return faults::respond(
                mode,
                Api::of(&path),
                kind == Kind::Auth,
                parts.extensions.get::<ConnKill>().cloned(),
            )
            .await;
        }
        None => {}
    }
    if kind == Kind::Data {
        let latency = lock(&sim.knobs).latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
    let kill = parts.extensions.get::<ConnKill>().cloned();
    let mut res = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if kind == Kind::Data {
        // After the handler: the document exists while the reply waits.
        let reply_latency = lock(&sim.knobs).reply_latency;
        if !reply_latency.is_zero() {
            tokio::time::sleep(reply_latency).await;
        }
    }
    if commit_drop {
        return faults::drop_connection(kill).await;
    }
    if hop_header {
        faults::add_hop_header(&mut res);
    }
    res
}

fn log_request(sim: &SimState, parts: &axum::http::request::Parts, body: &[u8]) {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let truncated = body.len() > LOGGED_BODY_MAX;
    let entry = LoggedRequest {
        at: chrono::Utc::now().to_rfc3339(),
        method: parts.method.to_string(),
        // Under a path prefix the router has stripped it from `uri`: log what was received.
        path: parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path(), |o| o.0.path())
            .to_string(),
        query: parts.uri.query().map(str::to_string),
        headers,
        body: String::from_utf8_lossy(&body[..body.len().min(LOGGED_BODY_MAX)]).into_owned(),
        body_truncated: truncated,
        irp: parts
            .extensions
            .get::<Portal>()
            .copied()
            .unwrap_or_default()
            .name(),
    };
    lock(&sim.requests).push(entry);
}

/// The answer to paths the simulator does not know.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "no such path on the gstgate simulator\n",
    )
        .into_response()
}
