//! Phase 7, respond: the reply as the caller gets it.

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::call::{Call, Sent};
use crate::config::Encryption;
use crate::problem::GatewayError;
use crate::session::{Session, Slot};
use crate::upstream::{Class, Reply, Upstream};

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
    // The reply's own header map, stripped: a new map would cost two allocations a request.
    let headers = res.headers_mut();
    *headers = sent.headers.take();
    strip_reply_headers(headers);
    if gateway {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(res)
}

/// Removes what is never relayed: the names the reply's `Connection` header lists, then the
/// fixed list. A reply has a handful of fields, so a removal of the fixed list is found by a
/// scan; each costs at most a pass over them, whatever an upstream sends.
fn strip_reply_headers(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for token in listed
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            // A name that is not a header name matches nothing.
            headers.remove(token.trim());
        }
    }
    while let Some(name) = headers
        .keys()
        .find(|name| DROPPED_REPLY_HEADERS.contains(&name.as_str()))
        .cloned()
    {
        headers.remove(&name);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_fields_cookies_and_the_length_are_stripped_and_the_rest_kept() {
        let mut headers = reply(&[
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("connection", "X-Leak, keep-alive, not a name!,"),
            ("connection", "x-also"),
            ("keep-alive", "timeout=5"),
            ("x-leak", "secret"),
            ("x-also", "secret"),
            ("x-gsp-trace", "one"),
            ("x-gsp-trace", "two"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_reply_headers(&mut headers);
        let kept: Vec<(String, &str)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            kept,
            [
                ("content-type".to_string(), "application/json"),
                ("x-gsp-trace".to_string(), "one"),
                ("x-gsp-trace".to_string(), "two"),
            ]
        );
    }

    #[test]
    fn a_connection_header_listing_every_field_strips_them_all() {
        let names: Vec<String> = (0..90).map(|i| format!("x-h{i}")).collect();
        let mut headers = HeaderMap::new();
        for name in &names {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_str(&names.join(", ")).unwrap(),
        );
        strip_reply_headers(&mut headers);
        assert!(headers.is_empty(), "{headers:?}");
    }
}
