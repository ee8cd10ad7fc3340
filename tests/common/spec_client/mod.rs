//! Test clients written from the published NIC e-invoice, NIC e-way bill and GSTN returns API
//! specifications, as an ASP's developer would write them: their own RSA login, SEK unwrapping
//! and AES payload crypto ([`crypto`]), with no gstgate module involved. They exist to prove a
//! "drop-in" mode: an unmodified client pointed at gstgate instead of the GSP must still work,
//! so they must not share gstgate's reading of the protocol.
//!
//! Errors are one [`ClientError`]: [`ClientError::Api`] when the server refused (its codes in
//! [`ApiFailure::codes`], whatever the HTTP status), [`ClientError::Crypto`] when a reply's
//! crypto does not hold (a SEK, REK or `Data` that does not decrypt, an HMAC that does not
//! match), [`ClientError::Http`] when no reply came, and [`ClientError::Usage`] when nothing was
//! sent because the client has no session it could use.
//!
//! One file per API: [`einvoice`], [`ewaybill`], [`gstn`].

pub mod crypto;
pub mod einvoice;
pub mod ewaybill;
pub mod gstn;

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::{CLIENT_ID, CLIENT_SECRET, GSTIN, PASSWORD, USER};

pub use self::einvoice::EinvoiceClient;
pub use self::ewaybill::EwaybillClient;
pub use self::gstn::GstnClient;

/// What a real client's configuration holds, and nothing else.
#[derive(Clone, Debug)]
pub struct SpecConfig {
    /// Where the API is served, without a trailing slash (the GSP, or gstgate).
    pub base_url: String,
    /// The server's RSA public key: PEM `PUBLIC KEY`, `RSA PUBLIC KEY` or X.509 `CERTIFICATE`.
    pub public_key_pem: String,
    /// The API client id the GSP issued.
    pub client_id: String,
    /// The API client secret the GSP issued.
    pub client_secret: String,
    /// The taxpayer's GSTIN.
    pub gstin: String,
    /// The API user.
    pub username: String,
    /// The API user's password (NIC only: GSTN logs in with an OTP).
    pub password: String,
}

impl SpecConfig {
    /// The harness's identities (`CLIENT_ID`, `GSTIN`, `USER`, …) against a server and its key.
    pub fn test_identity(base_url: impl Into<String>, public_key_pem: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            public_key_pem: public_key_pem.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            gstin: GSTIN.into(),
            username: USER.into(),
            password: PASSWORD.into(),
        }
    }

    /// `base_url` + `path`, tolerating a trailing slash in the configured URL.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// A refusal by the server, or a reply that is not a success of the specification.
#[derive(Clone, Debug)]
pub struct ApiFailure {
    /// The HTTP status, for information only: NIC and GSTN refuse with HTTP 200 too.
    pub http_status: u16,
    /// The error codes as text (`"1005"`, `"238"`, `"AUTH4033"`); empty when the reply is not
    /// an error envelope of the specification (an HTML 503, a success missing its fields).
    pub codes: Vec<String>,
    /// The server's messages, or what was wrong with a reply that carries no codes.
    pub message: String,
    /// The reply body: JSON, or the raw text as a JSON string when it is not JSON.
    pub body: Value,
}

impl ApiFailure {
    /// A reply without error codes that still is not the success the spec describes.
    fn malformed(reply: &Reply, why: impl Into<String>) -> ClientError {
        ClientError::Api(Self {
            http_status: reply.status,
            codes: vec![],
            message: why.into(),
            body: reply.body.clone(),
        })
    }

    /// Whether the server answered `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HTTP {} codes [{}]: {}",
            self.http_status,
            self.codes.join(", "),
            self.message
        )
    }
}

/// Why a client call failed.
#[derive(Clone, Debug)]
pub enum ClientError {
    /// The server refused, or did not answer with the specification's success shape.
    Api(ApiFailure),
    /// A reply's crypto does not hold: a key or payload does not decrypt, an HMAC mismatch.
    Crypto(String),
    /// No reply: connection refused or reset, timeout, unreadable body.
    Http(String),
    /// Nothing was sent: the client has no session (GSTN needs `otp_request` + `auth_token`).
    Usage(String),
}

impl ClientError {
    /// The server's error codes; empty for everything but [`ClientError::Api`].
    pub fn codes(&self) -> &[String] {
        match self {
            Self::Api(f) => &f.codes,
            _ => &[],
        }
    }

    /// Whether the server answered `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.codes().iter().any(|c| c == code)
    }

    /// Whether the failure is the client's crypto check, not the server's refusal.
    pub fn is_crypto(&self) -> bool {
        matches!(self, Self::Crypto(_))
    }

    /// The API failure, if that is what this is.
    pub fn api(&self) -> Option<&ApiFailure> {
        match self {
            Self::Api(f) => Some(f),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api(a) => write!(f, "API failure: {a}"),
            Self::Crypto(m) => write!(f, "crypto failure: {m}"),
            Self::Http(m) => write!(f, "HTTP failure: {m}"),
            Self::Usage(m) => write!(f, "not sent: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An HTTP reply: its status and body (JSON, or the raw text as a JSON string).
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    body: Value,
}

/// The HTTP client every spec client uses. Bounded, so that a server that never answers fails
/// a test instead of hanging it; no proxy, so that loopback traffic stays on loopback.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("building the HTTP client: {e}"))
}

/// Sends a request and reads the whole reply, whatever its status: NIC and GSTN put their
/// verdict in the body, so the HTTP status decides nothing here.
async fn send(req: reqwest::RequestBuilder) -> Result<Reply, ClientError> {
    let res = req
        .send()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = res.status().as_u16();
    let text = res
        .text()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply { status, body })
}

/// A code or status sent as a JSON string or number, as text.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether a status field says success: `1` or `"1"` (both occur).
fn is_one(v: &Value) -> bool {
    text_of(v).as_deref() == Some("1")
}

/// A string field of a success reply, or an [`ApiFailure`] saying it is missing.
fn required_str<'a>(reply: &'a Reply, v: &'a Value, field: &str) -> Result<&'a str, ClientError> {
    v.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiFailure::malformed(reply, format!("success reply without `{field}`")))
}

/// Parses decrypted bytes as JSON; garbage here means the wrong key decrypted it.
fn json_from(bytes: &[u8], what: &str) -> Result<Value, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Crypto(format!("{what} does not decrypt to JSON: {e}")))
}
