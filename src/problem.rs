//! Gateway errors and their problem+json form (RFC 9457). The codes and statuses are a
//! public contract: callers and dashboards switch on them, so they never change.
//!
//! One error type, [`GatewayError`], knows where a failure came from ([`Origin`]) and whether
//! retrying can help; the HTTP status, the stable `code`, the `remedy` and the retry rules of
//! the session code all derive from it in this one file. A failure built from a lower-level
//! error keeps it as its [`Cause`]: the log shows the whole [`chain`], the problem body never
//! does (causes can name hosts and addresses, which are no business of the calling ASPs).
//! Nothing here ever carries a token, SEK or password: details are written by gstgate, and
//! upstream text is limited to the upstream's error code and message.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// Where to read more about a problem code; `type` is this base plus the code.
const TYPE_BASE: &str = "https://gstgate.dev/problems/";

/// The admin listener's endpoints (docs/operations.md), the remedy for an unknown admin path.
const ADMIN_ENDPOINTS: &str = "Use an admin endpoint: GET /healthz, /readyz, /metrics, /status or /admin/sessions; POST /admin/sessions/<upstream>/<gstin>/refresh, …/otp-request or …/otp.";

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
    /// For the session store's failures; sessions are kept in memory, so none arises yet.
    Store,
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
    /// The store or a dependency is not ready.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A bug or resource failure inside gstgate.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status of the problem.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Unauthenticated | AdminUnauthenticated => StatusCode::UNAUTHORIZED,
            GstinMissing
            | GstinInvalid(_)
            | UserRequired { .. }
            | PathInvalid(_)
            | GstinMismatch(_)
            | BodyInvalid(_)
            | AdminBodyInvalid(_)
            | AdminRequestInvalid(_)
            | OtpInvalid { .. } => StatusCode::BAD_REQUEST,
            GstinNotAllowed(_) | NoCredential { .. } => StatusCode::FORBIDDEN,
            RouteNotFound(_) | AdminRouteNotFound(_) => StatusCode::NOT_FOUND,
            OtpNotApplicable { .. } => StatusCode::CONFLICT,
            AdminMethodNotAllowed { .. } | MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge(_) | AdminBodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LoginThrottled { .. } | UpstreamThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            CredentialsRejected { .. }
            | UpstreamConfigRejected { .. }
            | LoginBackoff { .. }
            | TokenRejected { .. }
            | UpstreamUnavailable(_)
            | UpstreamUnreachable(_)
            | UpstreamConnectionFailed(_)
            | ApiAccessDisabled { .. }
            | TooManySessions { .. }
            | UpstreamBadResponse(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) | AdminActionTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NotReady(_) | OtpRequired { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable problem code callers and dashboards key on.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthenticated | AdminUnauthenticated => "unauthenticated",
            GstinMissing => "gstin_missing",
            GstinInvalid(_) => "gstin_invalid",
            GstinNotAllowed(_) => "gstin_not_allowed",
            GstinMismatch(_) => "gstin_mismatch",
            NoCredential { .. } => "credential_not_configured",
            UserRequired { .. } => "user_required",
            // The admin variants share the proxy's codes: callers switch on what went wrong,
            // and the remedy says what to do about it on that listener.
            PathInvalid(_) => "path_invalid",
            RouteNotFound(_) | AdminRouteNotFound(_) => "route_not_found",
            BodyTooLarge(_) | AdminBodyTooLarge(_) => "body_too_large",
            AdminMethodNotAllowed { .. } | MethodNotAllowed(_) => "method_not_allowed",
            AdminRequestInvalid(_) => "request_invalid",
            RequestTimeout(_) => "request_timeout",
            HeadersTooLarge(_) => "headers_too_large",
            BodyInvalid(_) | AdminBodyInvalid(_) => "body_invalid",
            OtpNotApplicable { .. } => "otp_not_applicable",
            CredentialsRejected { .. } => "credentials_rejected",
            UpstreamConfigRejected { .. } => "upstream_config_rejected",
            LoginThrottled { .. } => "login_rate_limited",
            LoginBackoff { .. } => "login_backoff",
            TokenRejected { .. } => "token_rejected",
            UpstreamThrottled { .. } => "upstream_throttled",
            UpstreamUnavailable(_) | UpstreamUnreachable(_) | UpstreamConnectionFailed(_) => {
                "upstream_unavailable"
            }
            UpstreamTimeout(_) | AdminActionTimeout(_) => "upstream_timeout",
            UpstreamBadResponse(_) => "upstream_bad_response",
            OtpRequired { .. } => "otp_required",
            OtpInvalid { .. } => "otp_invalid",
            ApiAccessDisabled { .. } => "api_access_disabled",
            TooManySessions { .. } => "too_many_sessions",
            NotReady(_) => "not_ready",
            Internal(_) => "internal",
        }
    }

    /// A short human title for the code.
    fn title(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthenticated | AdminUnauthenticated => "Unauthenticated",
            GstinMissing => "GSTIN header missing",
            GstinInvalid(_) => "Invalid GSTIN",
            GstinNotAllowed(_) => "GSTIN not allowed",
            GstinMismatch(_) => "GSTIN mismatch",
            NoCredential { .. } => "No credential configured",
            UserRequired { .. } => "User name required",
            PathInvalid(_) => "Invalid path",
            RouteNotFound(_) | AdminRouteNotFound(_) => "No route",
            BodyTooLarge(_) | AdminBodyTooLarge(_) => "Request body too large",
            AdminMethodNotAllowed { .. } | MethodNotAllowed(_) => "Method not allowed",
            AdminRequestInvalid(_) => "Invalid request",
            RequestTimeout(_) => "Request timeout",
            HeadersTooLarge(_) => "Request headers too large",
            BodyInvalid(_) | AdminBodyInvalid(_) => "Invalid request body",
            OtpNotApplicable { .. } => "No OTP sessions on this upstream",
            CredentialsRejected { .. } => "Credentials rejected",
            UpstreamConfigRejected { .. } => "Upstream rejected gateway configuration",
            LoginThrottled { .. } => "Login rate limited",
            LoginBackoff { .. } => "Upstream login failing",
            TokenRejected { .. } => "Token rejected",
            UpstreamThrottled { .. } => "Upstream throttling",
            UpstreamUnavailable(_) | UpstreamUnreachable(_) | UpstreamConnectionFailed(_) => {
                "Upstream unavailable"
            }
            UpstreamTimeout(_) | AdminActionTimeout(_) => "Upstream timeout",
            UpstreamBadResponse(_) => "Bad upstream response",
            OtpRequired { .. } => "OTP required",
            OtpInvalid { .. } => "OTP refused",
            ApiAccessDisabled { .. } => "API access not enabled",
            TooManySessions { .. } => "Too many sessions",
            NotReady(_) => "Not ready",
            Internal(_) => "Internal error",
        }
    }

    /// The action that fixes it, in one sentence (the GST docs' troubleshooting table). Where
    /// the error knows the upstream or GSTIN, the admin call it names is written out in full.
    pub fn remedy(&self) -> Cow<'static, str> {
        use GatewayError::*;
        match self {
            OtpRequired {
                upstream, gstin, ..
            } => Cow::Owned(format!(
                "Ask the gateway operator to run POST /admin/sessions/{upstream}/{gstin}/otp-request (the taxpayer receives an OTP), then POST /admin/sessions/{upstream}/{gstin}/otp with {{\"otp\": \"<the OTP>\"}}."
            )),
            OtpNotApplicable { upstream, gstin } => Cow::Owned(format!(
                "Sessions on `{upstream}` start with the API user's password, not an OTP: to log in again now, POST /admin/sessions/{upstream}/{gstin}/refresh."
            )),
            CredentialsRejected { gstin, .. } => Cow::Owned(format!(
                "Correct the API user's password in the gateway config (or reset it on the e-invoice/GST portal), then POST /admin/sessions/<upstream>/{gstin}/refresh."
            )),
            Unauthenticated => "Send your API key in the `x-api-key` header (or `Authorization: Bearer`); ask the gateway operator for one.".into(),
            GstinMissing => "Send the taxpayer's GSTIN in the `gstin` header.".into(),
            GstinInvalid(_) => "Send a 15-character GSTIN as registered on the GST portal; check for typos in the last (check) character.".into(),
            GstinMismatch(_) => "Send the same GSTIN in the `gstin` header and in the query's `gstin` parameter.".into(),
            GstinNotAllowed(_) => "Ask the gateway operator to add this GSTIN to your client's `gstins` list.".into(),
            NoCredential { .. } => "Ask the gateway operator to add a [[credential]] for this GSTIN and upstream.".into(),
            UserRequired { .. } => "Name one of the API users configured for this GSTIN: the `user_name` header on API calls, `?user=NAME` on the admin API.".into(),
            PathInvalid(_) => "Send the GST API path as documented, without `.` or `..` segments, `//`, backslashes or percent-encoded slashes; letters, digits, `-`, `_` and `.` make up every segment.".into(),
            RouteNotFound(_) => "Use a path of the GST API this gateway fronts (e.g. /eicore/v1.03/Invoice); check the base URL.".into(),
            BodyTooLarge(_) => "Send a smaller body, or ask the operator to raise `server.max_body_bytes`.".into(),
            AdminUnauthenticated => "Send `Authorization: Bearer <server.admin_token>`; without an `admin_token` in the config the /admin API is off.".into(),
            AdminRouteNotFound(_) => ADMIN_ENDPOINTS.into(),
            AdminMethodNotAllowed { .. } => "Use a method from the `Allow` header; every /admin/sessions/… action is a POST.".into(),
            MethodNotAllowed(_) => "Use the method the GST API documents: GET, POST, PUT or DELETE (the `Allow` header lists them).".into(),
            AdminRequestInvalid(_) => "Send a UTF-8 path of the form /admin/sessions/<upstream>/<gstin>/<action> and at most one `?user=NAME`.".into(),
            AdminBodyTooLarge(_) => "Send only the documented body: {\"otp\": \"123456\"} for POST /admin/sessions/<upstream>/<gstin>/otp, nothing for the other endpoints.".into(),
            RequestTimeout(_) => "Send the whole request at once; the gateway waits at most `server.request_timeout` for it.".into(),
            HeadersTooLarge(_) => "Send fewer or shorter headers (look for large cookies or repeated headers), or ask the operator to raise `server.max_header_bytes`.".into(),
            BodyInvalid(_) => "Send the plain JSON payload of the GST API; the gateway does the encryption.".into(),
            AdminBodyInvalid(_) => "Send the JSON body {\"otp\": \"123456\"} with the digits the taxpayer received.".into(),
            UpstreamConfigRejected { .. } => "Check the upstream's client_id, client_secret and public key in the gateway config against the GSP's onboarding details.".into(),
            LoginThrottled { .. } => "Wait and retry: the gateway limits logins per user to stay below the upstream's lockout threshold.".into(),
            LoginBackoff { .. } => "Retry later; if it persists check the GSP's status and the gateway's /admin/sessions.".into(),
            TokenRejected { .. } => "Check that the API user belongs to this GSTIN and that no other system logs in with the same user; retry later.".into(),
            UpstreamThrottled { .. } => "Slow down and retry after a few minutes.".into(),
            UpstreamUnavailable(_) | UpstreamConnectionFailed(_) => "Retry with backoff; if it persists check the GSP's status page.".into(),
            UpstreamUnreachable(_) => "Retry with backoff; if it persists check the GSP's status page, and ask the gateway operator to read the gateway's log, which says why no connection could be made (DNS, network or TLS trust).".into(),
            UpstreamTimeout(_) => "Retry later, checking first whether the operation took effect (e.g. get the IRN by document details) to avoid duplicates.".into(),
            AdminActionTimeout(_) => "Read GET /admin/sessions for the action's outcome before repeating it: it was not cancelled, and an OTP is good for one submission only.".into(),
            UpstreamBadResponse(_) => "Retry; if it persists the GSP or its session keys are misbehaving — contact the gateway operator.".into(),
            NotReady(_) => "Retry shortly; the gateway is starting or its store is unreachable.".into(),
            Internal(_) => "Retry; if it persists report it to the gateway operator with the x-request-id.".into(),
            OtpInvalid { .. } => "Request a new OTP with POST …/otp-request on the same upstream and GSTIN, and submit the 6 digits the taxpayer receives, once.".into(),
            ApiAccessDisabled { .. } => "The taxpayer must enable API access on the GST portal (My Profile → Manage API Access, up to 30 days); then request a new OTP.".into(),
            TooManySessions { .. } => "Stop other software logging in with this API user, or wait for its sessions to expire, then request a new OTP.".into(),
        }
    }

    /// The upstream's own error code, where it gave one.
    pub fn upstream_code(&self) -> Option<&str> {
        use GatewayError::*;
        match self {
            CredentialsRejected { upstream_code, .. }
            | UpstreamConfigRejected { upstream_code, .. }
            | TokenRejected { upstream_code }
            | OtpInvalid { upstream_code, .. }
            | ApiAccessDisabled { upstream_code, .. }
            | TooManySessions { upstream_code }
            | UpstreamThrottled { upstream_code } => upstream_code.as_deref(),
            _ => None,
        }
    }

    /// Where the failure arose. Every variant answers for itself, so that a new one must too.
    pub fn origin(&self) -> Origin {
        use GatewayError::*;
        match self {
            Unauthenticated
            | GstinMissing
            | GstinInvalid(_)
            | GstinMismatch(_)
            | GstinNotAllowed(_)
            | NoCredential { .. }
            | UserRequired { .. }
            | PathInvalid(_)
            | MethodNotAllowed(_)
            | RouteNotFound(_)
            | AdminUnauthenticated
            | AdminRouteNotFound(_)
            | AdminMethodNotAllowed { .. }
            | AdminRequestInvalid(_)
            | BodyTooLarge(_)
            | AdminBodyTooLarge(_)
            | RequestTimeout(_)
            | AdminBodyInvalid(_)
            | HeadersTooLarge(_)
            | BodyInvalid(_)
            | OtpNotApplicable { .. }
            | OtpInvalid { .. } => Origin::Caller,
            LoginThrottled { .. }
            | LoginBackoff { .. }
            | OtpRequired { .. }
            | NotReady(_)
            | Internal(_) => Origin::Gateway,
            CredentialsRejected { .. }
            | UpstreamConfigRejected { .. }
            | TokenRejected { .. }
            | UpstreamThrottled { .. }
            | UpstreamUnavailable(_)
            | UpstreamUnreachable(_)
            | UpstreamConnectionFailed(_)
            | UpstreamTimeout(_)
            | AdminActionTimeout(_)
            | UpstreamBadResponse(_)
            | ApiAccessDisabled { .. }
            | TooManySessions { .. } => Origin::Upstream,
        }
    }

    /// Whether sending the same request again later can succeed without anyone changing
    /// anything (a config, a password, an OTP, the request itself). Not whether it is safe:
    /// a write that timed out may have taken effect.
    pub fn retryable(&self) -> bool {
        use GatewayError::*;
        match self {
            // The caller must change the request, or the operator grant it something.
            Unauthenticated
            | GstinMissing
            | GstinInvalid(_)
            | GstinMismatch(_)
            | GstinNotAllowed(_)
            | NoCredential { .. }
            | UserRequired { .. }
            | PathInvalid(_)
            | MethodNotAllowed(_)
            | RouteNotFound(_)
            | AdminUnauthenticated
            | AdminRouteNotFound(_)
            | AdminMethodNotAllowed { .. }
            | AdminRequestInvalid(_)
            | BodyTooLarge(_)
            | AdminBodyTooLarge(_)
            | AdminBodyInvalid(_)
            | HeadersTooLarge(_)
            | BodyInvalid(_)
            | OtpNotApplicable { .. }
            | OtpInvalid { .. } => false,
            // An operator (config, password, OTP) or the taxpayer (portal setting) must act.
            CredentialsRejected { .. }
            | UpstreamConfigRejected { .. }
            | OtpRequired { .. }
            | ApiAccessDisabled { .. } => false,
            // A slow link, a limit that lifts, sessions that expire, an upstream that recovers.
            RequestTimeout(_)
            | LoginThrottled { .. }
            | LoginBackoff { .. }
            | TokenRejected { .. }
            | UpstreamThrottled { .. }
            | UpstreamUnavailable(_)
            | UpstreamUnreachable(_)
            | UpstreamConnectionFailed(_)
            | UpstreamTimeout(_)
            | AdminActionTimeout(_)
            | UpstreamBadResponse(_)
            | TooManySessions { .. }
            | NotReady(_)
            | Internal(_) => true,
        }
    }

    /// Seconds the caller should wait before retrying, where that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::LoginThrottled { retry_after_secs }
            | GatewayError::LoginBackoff {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("{TYPE_BASE}{}", self.code()),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.to_string(),
            code: self.code(),
            upstream_code: self.upstream_code().map(str::to_owned),
            remedy: self.remedy(),
            request_id: None,
        }
    }
}

/// An RFC 9457 problem document with gstgate's extension members.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the type.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
    /// Stable gstgate code.
    pub code: &'static str,
    /// The upstream's error code, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_code: Option<String>,
    /// What fixes it.
    pub remedy: Cow<'static, str>,
    /// The request id, to quote to the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The error travels in the response extensions so the access log can name it.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub &'static str);

/// A problem response built without the request id (by axum, through [`IntoResponse`]) keeps
/// its error here, so that the listener, which knows the id, can fill it in with
/// [`fill_request_id`].
#[derive(Debug, Clone)]
struct WithoutRequestId(GatewayError);

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut res = build_response(&self, None);
        res.extensions_mut().insert(WithoutRequestId(self));
        res
    }
}

/// The problem response with the request id filled in.
pub fn problem_response(err: &GatewayError, request_id: &str) -> Response {
    build_response(err, Some(request_id))
}

/// Puts `request_id` into the body of a problem response that was built without it; other
/// responses, and the status and headers (such as `Allow`), are left as they are.
pub fn fill_request_id(res: Response, request_id: &str) -> Response {
    let (mut parts, body) = res.into_parts();
    match parts.extensions.remove::<WithoutRequestId>() {
        Some(WithoutRequestId(err)) => {
            // The new body is longer; a length set for the old one would be wrong.
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(problem_body(&err, Some(request_id))))
        }
        None => Response::from_parts(parts, body),
    }
}

fn problem_body(err: &GatewayError, request_id: Option<&str>) -> Vec<u8> {
    let mut problem = err.problem();
    problem.request_id = request_id.map(str::to_owned);
    // Serialising a struct of strings and integers cannot fail.
    serde_json::to_vec(&problem).unwrap_or_default()
}

fn build_response(err: &GatewayError, request_id: Option<&str>) -> Response {
    let body = problem_body(err, request_id);
    let mut res = (err.status(), body).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(secs) = err.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let GatewayError::MethodNotAllowed(_) = err {
        headers.insert(header::ALLOW, HeaderValue::from_static(PROXY_METHODS));
    }
    res.extensions_mut().insert(ErrorCode(err.code()));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_carries_code_status_remedy_and_upstream_code() {
        let e = GatewayError::CredentialsRejected {
            gstin: "27AAPFU0939F1ZV".into(),
            username: "u".into(),
            upstream_code: Some("1019".into()),
        };
        let p = e.problem();
        assert_eq!(p.status, 502);
        assert_eq!(p.code, "credentials_rejected");
        assert_eq!(p.upstream_code.as_deref(), Some("1019"));
        assert!(p.kind.ends_with("credentials_rejected"));
        assert!(!p.remedy.is_empty());
    }

    /// A cause with text no problem body may show: an address and a rustls reason.
    fn cause() -> Cause {
        Cause::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "10.1.2.3:443: invalid peer certificate: UnknownIssuer",
        ))
    }

    /// One value of every variant, with the origin and retryability docs/errors.md gives it.
    fn table() -> Vec<(GatewayError, Origin, bool)> {
        use GatewayError::*;
        use Origin::{Caller, Gateway, Upstream};
        let s = || String::from("x");
        vec![
            (Unauthenticated, Caller, false),
            (GstinMissing, Caller, false),
            (GstinInvalid(s()), Caller, false),
            (GstinMismatch(s()), Caller, false),
            (GstinNotAllowed(s()), Caller, false),
            (
                NoCredential {
                    upstream: s(),
                    gstin: s(),
                },
                Caller,
                false,
            ),
            (
                UserRequired {
                    upstream: s(),
                    gstin: s(),
                },
                Caller,
                false,
            ),
            (
                PathInvalid(crate::path::CallerPath::parse("/a/../b", None).unwrap_err()),
                Caller,
                false,
            ),
            (MethodNotAllowed(s()), Caller, false),
            (RouteNotFound(s()), Caller, false),
            (AdminUnauthenticated, Caller, false),
            (AdminRouteNotFound(s()), Caller, false),
            (
                AdminMethodNotAllowed {
                    method: s(),
                    path: s(),
                },
                Caller,
                false,
            ),
            (AdminRequestInvalid(s()), Caller, false),
            (BodyTooLarge(1), Caller, false),
            (AdminBodyTooLarge(1), Caller, false),
            (RequestTimeout(1), Caller, true),
            (AdminBodyInvalid(s()), Caller, false),
            (HeadersTooLarge(1), Caller, false),
            (BodyInvalid(s()), Caller, false),
            (
                OtpNotApplicable {
                    upstream: s(),
                    gstin: s(),
                },
                Caller,
                false,
            ),
            (
                OtpInvalid {
                    upstream_code: None,
                    detail: s(),
                },
                Caller,
                false,
            ),
            (
                CredentialsRejected {
                    gstin: s(),
                    username: s(),
                    upstream_code: None,
                },
                Upstream,
                false,
            ),
            (
                UpstreamConfigRejected {
                    upstream_code: None,
                    message: s(),
                },
                Upstream,
                false,
            ),
            (
                LoginThrottled {
                    retry_after_secs: 1,
                },
                Gateway,
                true,
            ),
            (
                LoginBackoff {
                    retry_after_secs: 1,
                    reason: s(),
                },
                Gateway,
                true,
            ),
            (
                TokenRejected {
                    upstream_code: None,
                },
                Upstream,
                true,
            ),
            (
                UpstreamThrottled {
                    upstream_code: None,
                },
                Upstream,
                true,
            ),
            (UpstreamUnavailable(s()), Upstream, true),
            (UpstreamUnreachable(cause()), Upstream, true),
            (UpstreamConnectionFailed(cause()), Upstream, true),
            (UpstreamTimeout(1), Upstream, true),
            (AdminActionTimeout(1), Upstream, true),
            (UpstreamBadResponse(s()), Upstream, true),
            (
                OtpRequired {
                    upstream: s(),
                    gstin: s(),
                    reason: s(),
                },
                Gateway,
                false,
            ),
            (
                ApiAccessDisabled {
                    gstin: s(),
                    upstream_code: None,
                },
                Upstream,
                false,
            ),
            (
                TooManySessions {
                    upstream_code: None,
                },
                Upstream,
                true,
            ),
            (NotReady(s()), Gateway, true),
            (Internal(s()), Gateway, true),
        ]
    }

    /// The variant's name; exhaustive, so that a new variant cannot be left out of [`table`].
    fn variant(e: &GatewayError) -> &'static str {
        use GatewayError::*;
        match e {
            Unauthenticated => "Unauthenticated",
            GstinMissing => "GstinMissing",
            GstinInvalid(_) => "GstinInvalid",
            GstinMismatch(_) => "GstinMismatch",
            GstinNotAllowed(_) => "GstinNotAllowed",
            NoCredential { .. } => "NoCredential",
            UserRequired { .. } => "UserRequired",
            PathInvalid(_) => "PathInvalid",
            MethodNotAllowed(_) => "MethodNotAllowed",
            RouteNotFound(_) => "RouteNotFound",
            AdminUnauthenticated => "AdminUnauthenticated",
            AdminRouteNotFound(_) => "AdminRouteNotFound",
            AdminMethodNotAllowed { .. } => "AdminMethodNotAllowed",
            AdminRequestInvalid(_) => "AdminRequestInvalid",
            BodyTooLarge(_) => "BodyTooLarge",
            AdminBodyTooLarge(_) => "AdminBodyTooLarge",
            RequestTimeout(_) => "RequestTimeout",
            AdminBodyInvalid(_) => "AdminBodyInvalid",
            HeadersTooLarge(_) => "HeadersTooLarge",
            BodyInvalid(_) => "BodyInvalid",
            OtpNotApplicable { .. } => "OtpNotApplicable",
            OtpInvalid { .. } => "OtpInvalid",
            CredentialsRejected { .. } => "CredentialsRejected",
            UpstreamConfigRejected { .. } => "UpstreamConfigRejected",
            LoginThrottled { .. } => "LoginThrottled",
            LoginBackoff { .. } => "LoginBackoff",
            TokenRejected { .. } => "TokenRejected",
            UpstreamThrottled { .. } => "UpstreamThrottled",
            UpstreamUnavailable(_) => "UpstreamUnavailable",
            UpstreamUnreachable(_) => "UpstreamUnreachable",
            UpstreamConnectionFailed(_) => "UpstreamConnectionFailed",
            UpstreamTimeout(_) => "UpstreamTimeout",
            AdminActionTimeout(_) => "AdminActionTimeout",
            UpstreamBadResponse(_) => "UpstreamBadResponse",
            OtpRequired { .. } => "OtpRequired",
            ApiAccessDisabled { .. } => "ApiAccessDisabled",
            TooManySessions { .. } => "TooManySessions",
            NotReady(_) => "NotReady",
            Internal(_) => "Internal",
        }
    }

    #[test]
    fn every_variant_has_its_documented_origin_and_retryability() {
        let table = table();
        let names: std::collections::BTreeSet<_> = table.iter().map(|(e, ..)| variant(e)).collect();
        assert_eq!(names.len(), table.len(), "a variant is listed twice");
        // The exhaustive `variant` names 39 variants; the table must hold each of them.
        assert_eq!(names.len(), 39, "a variant is missing from the table");
        for (e, origin, retryable) in &table {
            assert_eq!(e.origin(), *origin, "origin of {}", variant(e));
            assert_eq!(e.retryable(), *retryable, "retryable of {}", variant(e));
            // A 4xx other than a throttle (gstgate's or the upstream's) is the caller's.
            let status = e.status();
            assert_eq!(
                status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS,
                *origin == Origin::Caller,
                "status {} of {} against its origin",
                e.status(),
                variant(e)
            );
        }
    }

    #[test]
    fn remedies_leave_no_placeholder_unformatted() {
        for (e, ..) in table() {
            let remedy = e.remedy();
            assert!(
                !remedy.contains("{upstream}") && !remedy.contains("{gstin}"),
                "{}: {remedy}",
                variant(&e)
            );
        }
        let e = GatewayError::OtpNotApplicable {
            upstream: "einvoice".into(),
            gstin: "27AAPFU0939F1ZV".into(),
        };
        let remedy = e.remedy();
        assert!(
            remedy.contains("/admin/sessions/einvoice/27AAPFU0939F1ZV/refresh"),
            "{remedy}"
        );
        assert!(!remedy.contains("JSON"), "{remedy}");
    }

    #[test]
    fn the_cause_is_in_the_log_chain_and_never_in_the_body() {
        let e = GatewayError::UpstreamUnreachable(cause());
        let logged = chain(&e);
        assert_eq!(
            logged,
            "upstream unavailable: cannot connect to the upstream: 10.1.2.3:443: invalid peer certificate: UnknownIssuer"
        );
        let body = String::from_utf8(problem_body(&e, Some("r1"))).unwrap();
        for secret in ["10.1.2.3", "UnknownIssuer", "certificate"] {
            assert!(!body.contains(secret), "{body}");
        }
        // A cause that its error's own text already ends with is not repeated.
        let path = crate::path::CallerPath::parse("/a/../b", None).unwrap_err();
        let e = GatewayError::PathInvalid(path.clone());
        assert_eq!(chain(&e), e.to_string());
        assert!(e.to_string().ends_with(&path.to_string()));
    }
}
