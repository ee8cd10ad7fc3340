//! Phase 7, respond: the reply as the caller gets it.

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::call::{Call, Sent};
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

/// The class of the upstream reply an answer relays, for the idempotency phase: a relayed
/// throttle or transient error is not the key's answer.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReplyClass(pub(super) Class);

/// The reply classify decided to relay: decrypted in gateway mode when it succeeded, passed
/// through as it came otherwise.
pub(super) fn respond(
    call: &Call<'_>,
    session: &Session,
    sent: &Sent,
    reply: Reply<'_>,
) -> Result<Response<Body>, GatewayError> {
    let upstream = call.upstream;
    let reply_class = reply.verdict.class;
    let success = reply_class == Class::Success;
    let gateway = call.encryption() == Encryption::Gateway;
    let body = if success && gateway {
        let plain = upstream.profile.decode_reply(reply, &session.sek)?;
        if let Some(target) = &sent.target {
            upstream.note_generated(call.method, call.path, &plain, target);
        }
        match call.dropin {
            // Sealed again for the drop-in caller, under its own SEK, as the API seals it.
            Some(dropin) => Bytes::from(upstream.profile.dropin().seal_reply(
                call.method,
                &plain,
                &dropin.sek,
            )),
            None => Bytes::from(plain),
        }
    } else {
        sent.body.clone()
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = sent.status;
    // Only the idempotency phase reads it, and the extension map costs an allocation.
    if call.claim.is_some() {
        res.extensions_mut().insert(ReplyClass(reply_class));
    }
    let headers = res.headers_mut();
    for (name, value) in &sent.headers {
        if !DROPPED_REPLY_HEADERS.contains(&name.as_str())
            && !named_by_connection(&sent.headers, name)
        {
            headers.append(name.clone(), value.clone());
        }
    }
    if gateway {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(res)
}

/// A JSON body gstgate answers with itself, as the API would (drop-in logins and refusals).
pub(super) fn api_answer(body: Vec<u8>) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
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
