//! What every request on either listener gets before anything else: its id, the size of its
//! head as the `server.max_header_bytes` limit counts it, and its path as log lines show it.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The `x-request-id` header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `gstin` header: the taxpayer a call is for. Looked up by name rather than by
/// text, which `HeaderMap` would check and hash anew for every request.
pub static GSTIN: HeaderName = HeaderName::from_static("gstin");

/// The caller's `user_name` header: which of the taxpayer's API users, when several.
pub static USER_NAME: HeaderName = HeaderName::from_static("user_name");

/// The caller's `x-api-key` header.
pub static API_KEY: HeaderName = HeaderName::from_static("x-api-key");

tokio::task_local! {
    /// The id of the caller's request being served, for the logs of work it causes (a login
    /// runs in a task of its own, which carries it on).
    static CURRENT: Arc<str>;
}

/// Runs `work` as serving request `id`.
pub async fn serving<F: std::future::Future>(id: Arc<str>, work: F) -> F::Output {
    CURRENT.scope(id, work).await
}

/// The id of the request being served, if any (a proactive refresh has none).
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(|id| id.clone()).ok()
}

/// Runs `work` as serving the same request as the caller, if any: for tasks a request spawns.
pub async fn carry<F: std::future::Future>(id: Option<Arc<str>>, work: F) -> F::Output {
    match id {
        Some(id) => CURRENT.scope(id, work).await,
        None => work.await,
    }
}

/// The address a request's connection came from, put in an admin request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The caller's id if it is sane, else a new random one (16 hex digits).
pub fn request_id(headers: &HeaderMap) -> Arc<str> {
    let sane = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(id) = sane {
        return Arc::from(id);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    let mut text = [0u8; 16];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    Arc::from(std::str::from_utf8(&text).unwrap_or_default())
}

/// `id` as the `x-request-id` value, sharing its text: sent upstream and back to the caller
/// without a copy. `request_id` keeps visible ASCII only, which is always a valid value.
pub fn id_header(id: &Arc<str>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from_owner(IdText(id.clone()))).ok()
}

/// A request id's text as the bytes of a header value.
struct IdText(Arc<str>);

impl AsRef<[u8]> for IdText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A request path as log lines show it: every byte outside printable ASCII is
/// percent-encoded, so that a path cannot break a line, fake another, or change what a
/// terminal or log viewer shows (bidi overrides such as U+202E, the U+2028 line separator, C1
/// control characters). The result is the same URI path, spelled with escapes only.
pub fn loggable_path(path: &str) -> Cow<'_, str> {
    if path.bytes().all(|b| b.is_ascii_graphic()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() * 3);
    for b in path.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// The size of a request head as parsed, in HTTP/1.1 form: the request line, one
/// `name: value` line per field and the blank line (whitespace the parser trimmed around
/// values is not counted; hyper's buffer of twice the limit bounds it). hyper's own limit is
/// only a read-buffer bound checked between socket reads, so this is the check behind
/// `server.max_header_bytes`, and the one that can answer with a problem document.
pub fn head_len(method: &Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    // "METHOD target HTTP/1.1\r\n" and the final "\r\n".
    let line = method.as_str().len() + 1 + target + 1 + "HTTP/1.1\r\n".len() + 2;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + 2 + v.len() + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_the_callers_when_sane_else_sixteen_hex_digits() {
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        let id = request_id(&headers);
        assert_eq!(&*id, "abc-123");
        assert_eq!(id_header(&id).unwrap(), "abc-123");
        for bad in ["", "has space", &"x".repeat(129)] {
            headers.insert(&REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&headers);
            assert!(
                id.len() == 16
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{bad:?} gave {id}"
            );
            assert_ne!(request_id(&headers), id, "random");
        }
    }

    #[test]
    fn a_loggable_path_escapes_every_byte_outside_printable_ascii() {
        let plain = "/eicore/v1.03/Invoice?x=%41";
        assert!(matches!(loggable_path(plain), Cow::Borrowed(p) if p == plain));
        assert_eq!(
            loggable_path("/a\u{202E}b\u{2028}c\u{85} d\u{7F}"),
            "/a%E2%80%AEb%E2%80%A8c%C2%85%20d%7F"
        );
    }
}
