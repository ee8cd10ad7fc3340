//! Phase 7, respond: the reply as the caller gets it.

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::call::Sent;
use crate::config::Encryption;
use crate::problem::GatewayError;
use crate::session::{Session, Slot};
use crate::upstream::{named_by_connection, Class, Reply, Upstream};

/// Upstream reply headers never relayed to the caller: the hop-by-hop fields (RFC 9110
/// §7.6.1), the length (hyper sets the caller's own) and cookies. Those the reply's
/// `Connection` header names are dropped as well.
const DROPPED_REPLY_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "content-length",
    "proxy-authenticate",
    "proxy-authorization",
    "set-cookie",
];

/// The reply classify decided to relay: decrypted in gateway mode when it succeeded, passed
/// through as it came otherwise.
pub(super) fn respond(
    upstream: &Upstream,
    session: &Session,
    sent: &Sent,
    reply: Reply<'_>,
) -> Result<Response<Body>, GatewayError> {
    let success = reply.verdict.class == Class::Success;
    let body = if success && upstream.encryption == Encryption::Gateway {
        Bytes::from(upstream.profile.decode_reply(reply, &session.sek)?)
    } else {
        sent.body.clone()
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = sent.status;
    let headers = res.headers_mut();
    for (name, value) in &sent.headers {
        if !DROPPED_REPLY_HEADERS.contains(&name.as_str())
            && !named_by_connection(&sent.headers, name)
        {
            headers.append(name.clone(), value.clone());
        }
    }
    if upstream.encryption == Encryption::Gateway {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(res)
}

/// gstgate's own answer to a caller's call of the upstream's login path: a success that
/// reveals neither token nor SEK.
pub(super) fn login_answer(upstream: &Upstream, slot: &Slot, session: &Session) -> Response<Body> {
    let body = upstream
        .profile
        .auth_answer(&slot.credential.username, session.expires_at);
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
