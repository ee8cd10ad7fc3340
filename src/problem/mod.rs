//! Gateway errors and their problem+json form (RFC 9457). The codes and statuses are a
//! public contract: callers and dashboards switch on them, so they never change.
//!
//! One error type, [`GatewayError`], knows where a failure came from ([`Origin`]) and whether
//! retrying can help; the HTTP status, the stable `code`, the `remedy` and the retry rules of
//! the session code all derive from it (`meaning.rs`; `response.rs` writes the problem+json
//! answer). A failure built from a lower-level error keeps it as its [`Cause`]: the log shows
//! the whole [`chain`], the problem body never does (causes can name hosts and addresses,
//! which are no business of the calling ASPs).
//! Nothing here ever carries a token, SEK or password: details are written by gstgate, and
//! upstream text is limited to the upstream's error code and message.

mod meaning;
mod response;

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The methods the proxy forwards: all that the GST APIs use. Others (TRACE, CONNECT,
/// OPTIONS, PATCH, …) would at best do nothing and at worst make an upstream echo gstgate's
/// injected credentials.
pub const PROXY_METHODS: &str = "GET, POST, PUT, DELETE";

/// Where a failure arose, and so who can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request as sent (every 4xx but 429): its key, headers, path, body, or what its
    /// client may do.
    Caller,
    /// gstgate itself: its own limits and backoff, a missing GSTN session, a bug.
    Gateway,
    /// The upstream: its refusal or reply, or the connection to it.
    Upstream,
}

/// A lower-level failure kept as a gateway error's cause: shared, so that the error stays
/// `Clone`, and transparent, so that its own causes follow it in [`chain`].
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync>);

impl Cause {
    /// Keeps `err` as a cause.
    pub fn new(err: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }
}

impl From<Box<dyn Error + Send + Sync>> for Cause {
    fn from(err: Box<dyn Error + Send + Sync>) -> Self {
        Self(Arc::from(err))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// Causes compare by what they say, whole chain included: the error types behind them need
/// not be comparable, and errors are compared in tests and decisions by their content.
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || chain(&*self.0) == chain(&*other.0)
    }
}

impl Eq for Cause {}

/// `err` and its causes, outermost first, joined by ": ", for the log (never for a problem
/// body). A cause whose text its error already ends with (an error that writes its source
/// into its own message, as `#[error("…: {0}")]` does) is not repeated.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

/// A failure the gateway answers itself, instead of relaying an upstream reply.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No API key, or one no client has.
    #[error("missing or unknown API key")]
    Unauthenticated,
    /// A drop-in caller's client id or secret is missing or unknown (no API code for it).
    #[error("missing or unknown client id or client secret")]
    ClientRejected,
    /// A drop-in client holds as many drop-in sessions as it may.
    #[error("client `{client}` already holds its {max} drop-in sessions")]
    DropinSessionsExhausted {
        /// The client's name.
        client: String,
        /// Its `max_dropin_sessions`.
        max: usize,
    },
    /// No `gstin` header.
    #[error("the `gstin` header is required")]
    GstinMissing,
    /// The `gstin` header is not a valid GSTIN.
    #[error("invalid GSTIN: {0}")]
    GstinInvalid(String),
    /// The query names another GSTIN than the `gstin` header (GSTN).
    #[error("the query's `gstin` differs from the `gstin` header ({0})")]
    GstinMismatch(String),
    /// The client may not act for this GSTIN.
    #[error("this client is not allowed to act for GSTIN {0}")]
    GstinNotAllowed(String),
    /// No credential is configured for this GSTIN on this upstream.
    #[error("no credential is configured for GSTIN {gstin} on upstream `{upstream}`")]
    NoCredential {
        /// Upstream name.
        upstream: String,
        /// The GSTIN.
        gstin: String,
    },
    /// An admin call names an upstream the configuration does not have.
    #[error("no upstream is named `{upstream}`; the configured upstreams are: {known}")]
    UpstreamNotFound {
        /// The name in the path.
        upstream: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// Several users exist for the GSTIN and the caller named none (or an unknown one).
    #[error("GSTIN {gstin} has several users on `{upstream}`, or the user named is not one of them: name one of its configured users")]
    UserRequired {
        /// Upstream name.
        upstream: String,
        /// The GSTIN.
        gstin: String,
    },
    /// The request path is not a plain GST API path (dot segments, encoded slashes, …).
    #[error("invalid request path: {0}")]
    PathInvalid(#[from] crate::path::PathError),
    /// A method no GST API uses (TRACE would echo gstgate's injected headers back).
    #[error("method {0} is not used by the GST APIs")]
    MethodNotAllowed(String),
    /// No upstream serves this path.
    #[error("no upstream serves path `{0}`")]
    RouteNotFound(String),
    /// No admin token, or a wrong one, on `/admin/*` (or no `admin_token` configured).
    #[error("missing or wrong admin token")]
    AdminUnauthenticated,
    /// No token, or a wrong one, on `/metrics` or `/status` while `monitoring_token` is set.
    #[error("missing or wrong monitoring token")]
    MonitoringUnauthenticated,
    /// The admin listener has no endpoint at this path.
    #[error("the admin listener has no endpoint at `{0}`")]
    AdminRouteNotFound(String),
    /// The admin endpoint exists but not for this method (the `Allow` header lists the others).
    #[error("method {method} is not allowed on `{path}`")]
    AdminMethodNotAllowed {
        /// The method the caller used.
        method: String,
        /// The path it used it on.
        path: String,
    },
    /// An admin request's path or query cannot be read (not UTF-8, a repeated `user`, …).
    #[error("invalid admin request: {0}")]
    AdminRequestInvalid(String),
    /// The request body is over `max_body_bytes`.
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// An admin request body is over the admin listener's fixed limit.
    #[error("request body exceeds the admin listener's limit of {0} bytes")]
    AdminBodyTooLarge(usize),
    /// The caller did not finish sending its request within `server.request_timeout`.
    #[error("the request body did not arrive within {0} ms")]
    RequestTimeout(u128),
    /// A configuration reload was refused: the file does not load or fails a check.
    #[error("configuration refused: {0}")]
    ConfigInvalid(String),
    /// The body of an admin OTP submission is not `{"otp": "…"}`.
    #[error("invalid request body: {0}")]
    AdminBodyInvalid(String),
    /// The request line and headers are over `max_header_bytes`.
    #[error("request head (request line and headers) exceeds the limit of {0} bytes")]
    HeadersTooLarge(usize),
    /// The request body is not what the upstream needs (not JSON in gateway mode).
    #[error("invalid request body: {0}")]
    BodyInvalid(String),
    /// An admin OTP action on an upstream whose sessions start with a password, not an OTP.
    #[error("upstream `{upstream}` does not use OTP sessions")]
    OtpNotApplicable {
        /// Upstream name.
        upstream: String,
        /// The GSTIN.
        gstin: String,
    },
    /// The upstream refused the taxpayer's username/password; logins are stopped.
    #[error("the upstream rejected the credentials for GSTIN {gstin} user `{username}`; logins are stopped until an operator resets them")]
    CredentialsRejected {
        /// The upstream that refused them.
        upstream: String,
        /// The GSTIN.
        gstin: String,
        /// API user.
        username: String,
        /// The upstream's error code.
        upstream_code: Option<String>,
    },
    /// The upstream refused gstgate's own configuration (client id/secret, public key).
    #[error("the upstream rejected gstgate's configuration: {message}")]
    UpstreamConfigRejected {
        /// The upstream's error code.
        upstream_code: Option<String>,
        /// The upstream's message.
        message: String,
    },
    /// The caller's client sends faster than its `rate` allows.
    #[error("client `{client}` is over its rate limit; retry in {retry_after_secs} s")]
    ClientRateLimited {
        /// The client's name.
        client: String,
        /// Seconds until its next request is allowed.
        retry_after_secs: u64,
    },
    /// gstgate's own login rate limit for this credential is reached.
    #[error("login rate limit reached for this credential; retry in {retry_after_secs} s")]
    LoginThrottled {
        /// Seconds until the next login is allowed.
        retry_after_secs: u64,
    },
    /// Logins keep failing for transient reasons; gstgate is backing off.
    #[error("logins to the upstream are failing ({reason}); retry in {retry_after_secs} s")]
    LoginBackoff {
        /// Seconds until the next attempt.
        retry_after_secs: u64,
        /// The last failure, without secrets.
        reason: String,
    },
    /// The upstream rejected the token again after one re-login and one replay, or rejected
    /// a token that such a re-login got back unchanged (no other login is tried for a while).
    #[error("the upstream rejected a fresh token as well")]
    TokenRejected {
        /// The upstream's error code.
        upstream_code: Option<String>,
    },
    /// The upstream throttled us.
    #[error("the upstream is throttling requests")]
    UpstreamThrottled {
        /// The upstream's error code.
        upstream_code: Option<String>,
    },
    /// Could not reach the upstream, or it answered 5xx / a transient error code.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// No connection to the upstream could be made (DNS, TCP or TLS): the request never left.
    #[error("upstream unavailable: cannot connect to the upstream")]
    UpstreamUnreachable(#[source] Cause),
    /// The connection broke after it was made: closed or reset, or what came back was not HTTP.
    #[error(
        "upstream unavailable: the upstream closed the connection or sent an invalid HTTP response"
    )]
    UpstreamConnectionFailed(#[source] Cause),
    /// The upstream did not answer within its timeout.
    #[error("the upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
    /// A generate's outcome was lost and the upstream could not say whether it created the
    /// document; gstgate sent no further generate.
    #[error("the outcome of the generate is unknown: {0}")]
    OutcomeUnknown(String),
    /// An admin action (a login) outlasted `server.request_timeout`; it is not cancelled.
    #[error("the action did not finish within {0} ms; it goes on and its outcome is recorded")]
    AdminActionTimeout(u128),
    /// The upstream's reply could not be read: not JSON, undecryptable, bad HMAC, too large.
    #[error("unreadable upstream response: {0}")]
    UpstreamBadResponse(String),
    /// A GSTN session needs the taxpayer's OTP; callers never trigger the OTP themselves.
    #[error("GSTIN {gstin} has no GSTN session on `{upstream}`: {reason}")]
    OtpRequired {
        /// Upstream name.
        upstream: String,
        /// The GSTIN.
        gstin: String,
        /// Why (never started, portal session ended, refresh refused).
        reason: String,
    },
    /// The OTP given to the admin API is malformed or the upstream refused it.
    #[error("the OTP was refused: {detail}")]
    OtpInvalid {
        /// The upstream's error code.
        upstream_code: Option<String>,
        /// What was wrong.
        detail: String,
    },
    /// The taxpayer has not enabled API access on the GST portal.
    #[error("API access is not enabled on the GST portal for GSTIN {gstin}")]
    ApiAccessDisabled {
        /// The GSTIN.
        gstin: String,
        /// The upstream's error code.
        upstream_code: Option<String>,
    },
    /// The API user has too many live sessions with this GSP.
    #[error("the API user has too many active sessions with this GSP")]
    TooManySessions {
        /// The upstream's error code.
        upstream_code: Option<String>,
    },
    /// The `Idempotency-Key` header is not one key of 1 to 255 visible ASCII characters.
    #[error("invalid Idempotency-Key: {0}")]
    IdempotencyKeyInvalid(&'static str),
    /// The `Idempotency-Key` was used before for another request (method, path or body).
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// The first request with this `Idempotency-Key` was still in flight when this one's
    /// wait for it ran out.
    #[error("the first request with this Idempotency-Key is still in flight")]
    IdempotencyKeyInFlight,
    /// The session store cannot hold or check the `Idempotency-Key` now (unreachable, or
    /// `idempotency.max_keys` reached): the request is not sent rather than sent unguarded.
    #[error("idempotency keys unavailable: {0}")]
    IdempotencyUnavailable(String),
    /// The store or a dependency is not ready.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A bug or resource failure inside gstgate.
    #[error("internal error: {0}")]
    Internal(String),
}

pub use response::{fill_request_id, problem_response, ErrorCode, Problem};
