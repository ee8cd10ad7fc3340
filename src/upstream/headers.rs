//! The headers gstgate sends upstream that are the same for every API: the values a profile
//! injects, the names an upstream uses, and what gstgate adds to every call.

use http::{HeaderMap, HeaderName, HeaderValue};

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
pub(super) static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("gstgate/", env!("CARGO_PKG_VERSION")));

/// The `Accept` sent when the caller named none, as gstgate always has.
pub(super) static ACCEPT_ANY: HeaderValue = HeaderValue::from_static("*/*");

/// A fresh GSTN-style transaction id: 32 hex digits, unique per request.
pub fn transaction_id() -> HeaderValue {
    let text = format!("{:032x}", rand::random::<u128>());
    // Hex digits are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}
