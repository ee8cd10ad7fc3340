//! Every header gstgate sends upstream is decided here, in one order that makes each injected
//! header gstgate's own value: the caller's headers the upstream allows, then the profile's,
//! then gstgate's. Also the values a profile injects and the names an upstream uses.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::Upstream;
use crate::request::REQUEST_ID;

/// The header values a profile injects, precomputed so the request path does not allocate.
pub struct HeaderContext<'a> {
    /// The upstream's header names.
    pub names: &'a HeaderNames,
    /// Client id (sensitive).
    pub client_id: &'a HeaderValue,
    /// Client secret (sensitive).
    pub client_secret: &'a HeaderValue,
    /// The taxpayer's GSTIN.
    pub gstin: &'a HeaderValue,
    /// The API user name.
    pub user_name: &'a HeaderValue,
    /// The GSTIN's two-digit state code.
    pub state_cd: &'a HeaderValue,
    /// The end user's IP address, as configured (GSTN's `ip-usr`).
    pub ip_usr: &'a HeaderValue,
}

impl HeaderContext<'_> {
    /// Inserts the headers every call of every GST API carries: client id, client secret
    /// and GSTIN.
    pub fn insert_client(&self, out: &mut HeaderMap) {
        out.insert(self.names.client_id.clone(), self.client_id.clone());
        out.insert(self.names.client_secret.clone(), self.client_secret.clone());
        out.insert(self.names.gstin.clone(), self.gstin.clone());
    }
}

/// The header names an upstream uses, after `header_names` overrides.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// Client id header.
    pub client_id: HeaderName,
    /// Client secret header.
    pub client_secret: HeaderName,
    /// GSTIN header.
    pub gstin: HeaderName,
    /// User name header.
    pub user_name: HeaderName,
    /// Auth token header.
    pub auth_token: HeaderName,
    /// State code header (GSTN).
    pub state_cd: HeaderName,
    /// End-user IP header (GSTN).
    pub ip_usr: HeaderName,
    /// Per-request transaction id header (GSTN).
    pub txn: HeaderName,
}

/// Caller headers every API may receive: what the body is and what the caller accepts.
/// `x-request-id` is not among them: gstgate always sends its own, validated id.
pub const GENERIC_CALLER_HEADERS: &[&str] = &["content-type", "accept"];

/// The `User-Agent` gstgate sends upstream.
static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("gstgate/", env!("CARGO_PKG_VERSION")));

/// The `Accept` sent when the caller named none, as gstgate always has.
static ACCEPT_ANY: HeaderValue = HeaderValue::from_static("*/*");

/// A fresh GSTN-style transaction id: 32 hex digits, unique per request.
pub fn transaction_id() -> HeaderValue {
    let text = format!("{:032x}", rand::random::<u128>());
    // Hex digits are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}

/// `content-type` of the bodies gstgate writes: logins and encrypted payloads.
static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Upstream {
    /// The headers of a data call: the caller's that this upstream allows, the profile's (with
    /// the session's token), the request id, `content-type` when gstgate wrote the body, and
    /// what every call carries.
    pub fn data_call_headers(
        &self,
        ctx: &HeaderContext<'_>,
        token: &HeaderValue,
        caller: &HeaderMap,
        request_id: Option<&HeaderValue>,
        gstgate_wrote_body: bool,
    ) -> HeaderMap {
        let mut out = self.forwardable(caller);
        self.profile.data_headers(&mut out, ctx, token);
        if let Some(id) = request_id {
            out.insert(REQUEST_ID.clone(), id.clone());
        }
        if gstgate_wrote_body {
            out.insert(header::CONTENT_TYPE, JSON.clone());
        }
        self.every_call(&mut out);
        out
    }

    /// The headers of a call to the auth endpoint; `token` is the current one for a refresh.
    pub fn login_call_headers(
        &self,
        ctx: &HeaderContext<'_>,
        token: Option<&HeaderValue>,
    ) -> HeaderMap {
        let mut out = HeaderMap::new();
        self.profile.login_headers(&mut out, ctx, token);
        out.insert(header::CONTENT_TYPE, JSON.clone());
        self.every_call(&mut out);
        out
    }

    /// What every call carries: the configured static headers (over any of the same name),
    /// and gstgate's `user-agent` and `accept: */*` unless the call already has them.
    fn every_call(&self, out: &mut HeaderMap) {
        for (k, v) in &self.static_headers {
            out.insert(k.clone(), v.clone());
        }
        out.entry(header::USER_AGENT)
            .or_insert_with(|| USER_AGENT.clone());
        out.entry(header::ACCEPT)
            .or_insert_with(|| ACCEPT_ANY.clone());
    }

    /// The caller headers that may travel upstream: only those the upstream's allow-list names
    /// (RFC 9110 §7.6.1: minus any the caller's `Connection` header marks hop-by-hop).
    fn forwardable(&self, caller: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(self.forwarded.len() + 8);
        for name in &self.forwarded {
            if !caller.contains_key(name) || named_by_connection(caller, name) {
                continue;
            }
            for value in caller.get_all(name) {
                out.append(name.clone(), value.clone());
            }
        }
        out
    }
}

/// Whether a message's `Connection` header names `name`, which makes that header hop-by-hop
/// (RFC 9110 §7.6.1): it is for this hop only and must not be relayed, in either direction.
fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}
