//! What each gateway error means: its HTTP status, stable code, title, remedy, origin and
//! whether retrying can help. The codes and statuses are a public contract.

use std::borrow::Cow;

use http::StatusCode;

use super::{GatewayError, Origin};
use crate::path::PathError;

/// The admin listener's endpoints (docs/operations.md), the remedy for an unknown admin path.
const ADMIN_ENDPOINTS: &str = "Use an admin endpoint: GET /healthz, /readyz, /metrics, /status or /admin/sessions; POST /admin/sessions/<upstream>/<gstin>/refresh, …/otp-request or …/otp.";

impl GatewayError {
    /// The HTTP status of the problem.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Unauthenticated | ClientRejected | AdminUnauthenticated | MonitoringUnauthenticated => {
                StatusCode::UNAUTHORIZED
            }
            GstinMissing
            | GstinInvalid(_)
            | UserRequired { .. }
            | PathInvalid(_)
            | GstinMismatch(_)
            | BodyInvalid(_)
            | AdminBodyInvalid(_)
            | AdminRequestInvalid(_)
            | IdempotencyKeyInvalid(_)
            | OtpInvalid { .. } => StatusCode::BAD_REQUEST,
            GstinNotAllowed(_) | NoCredential { .. } => StatusCode::FORBIDDEN,
            RouteNotFound(_) | AdminRouteNotFound(_) | UpstreamNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            OtpNotApplicable { .. } | IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ConfigInvalid(_) | IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            AdminMethodNotAllowed { .. } | MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge(_) | AdminBodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LoginThrottled { .. }
            | UpstreamThrottled { .. }
            | DropinSessionsExhausted { .. }
            | ClientRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            OutcomeUnknown(_) => StatusCode::BAD_GATEWAY,
            NotReady(_) | OtpRequired { .. } | IdempotencyUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable problem code callers and dashboards key on.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthenticated | ClientRejected | AdminUnauthenticated | MonitoringUnauthenticated => {
                "unauthenticated"
            }
            DropinSessionsExhausted { .. } => "dropin_sessions_exhausted",
            GstinMissing => "gstin_missing",
            GstinInvalid(_) => "gstin_invalid",
            GstinNotAllowed(_) => "gstin_not_allowed",
            GstinMismatch(_) => "gstin_mismatch",
            NoCredential { .. } => "credential_not_configured",
            UpstreamNotFound { .. } => "upstream_not_found",
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
            ConfigInvalid(_) => "config_invalid",
            OtpNotApplicable { .. } => "otp_not_applicable",
            CredentialsRejected { .. } => "credentials_rejected",
            UpstreamConfigRejected { .. } => "upstream_config_rejected",
            LoginThrottled { .. } => "login_rate_limited",
            ClientRateLimited { .. } => "client_rate_limited",
            LoginBackoff { .. } => "login_backoff",
            TokenRejected { .. } => "token_rejected",
            UpstreamThrottled { .. } => "upstream_throttled",
            UpstreamUnavailable(_) | UpstreamUnreachable(_) | UpstreamConnectionFailed(_) => {
                "upstream_unavailable"
            }
            UpstreamTimeout(_) | AdminActionTimeout(_) => "upstream_timeout",
            OutcomeUnknown(_) => "outcome_unknown",
            UpstreamBadResponse(_) => "upstream_bad_response",
            OtpRequired { .. } => "otp_required",
            OtpInvalid { .. } => "otp_invalid",
            ApiAccessDisabled { .. } => "api_access_disabled",
            TooManySessions { .. } => "too_many_sessions",
            IdempotencyKeyInvalid(_) => "idempotency_key_invalid",
            IdempotencyKeyReused => "idempotency_key_reused",
            IdempotencyKeyInFlight => "idempotency_key_in_flight",
            IdempotencyUnavailable(_) => "idempotency_unavailable",
            NotReady(_) => "not_ready",
            Internal(_) => "internal",
        }
    }

    /// A short human title for the code.
    pub(super) fn title(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthenticated | ClientRejected | AdminUnauthenticated | MonitoringUnauthenticated => {
                "Unauthenticated"
            }
            DropinSessionsExhausted { .. } => "Drop-in sessions exhausted",
            GstinMissing => "GSTIN header missing",
            GstinInvalid(_) => "Invalid GSTIN",
            GstinNotAllowed(_) => "GSTIN not allowed",
            GstinMismatch(_) => "GSTIN mismatch",
            NoCredential { .. } => "No credential configured",
            UpstreamNotFound { .. } => "No such upstream",
            UserRequired { .. } => "User name required",
            PathInvalid(_) => "Invalid path",
            RouteNotFound(_) | AdminRouteNotFound(_) => "No route",
            BodyTooLarge(_) | AdminBodyTooLarge(_) => "Request body too large",
            AdminMethodNotAllowed { .. } | MethodNotAllowed(_) => "Method not allowed",
            AdminRequestInvalid(_) => "Invalid request",
            RequestTimeout(_) => "Request timeout",
            HeadersTooLarge(_) => "Request headers too large",
            BodyInvalid(_) | AdminBodyInvalid(_) => "Invalid request body",
            ConfigInvalid(_) => "Configuration refused",
            OtpNotApplicable { .. } => "No OTP sessions on this upstream",
            CredentialsRejected { .. } => "Credentials rejected",
            UpstreamConfigRejected { .. } => "Upstream rejected gateway configuration",
            LoginThrottled { .. } => "Login rate limited",
            ClientRateLimited { .. } => "Client rate limited",
            LoginBackoff { .. } => "Upstream login failing",
            TokenRejected { .. } => "Token rejected",
            UpstreamThrottled { .. } => "Upstream throttling",
            UpstreamUnavailable(_) | UpstreamUnreachable(_) | UpstreamConnectionFailed(_) => {
                "Upstream unavailable"
            }
            UpstreamTimeout(_) | AdminActionTimeout(_) => "Upstream timeout",
            OutcomeUnknown(_) => "Outcome unknown",
            UpstreamBadResponse(_) => "Bad upstream response",
            OtpRequired { .. } => "OTP required",
            OtpInvalid { .. } => "OTP refused",
            ApiAccessDisabled { .. } => "API access not enabled",
            TooManySessions { .. } => "Too many sessions",
            IdempotencyKeyInvalid(_) => "Invalid Idempotency-Key",
            IdempotencyKeyReused => "Idempotency-Key reused",
            IdempotencyKeyInFlight => "Idempotency-Key in flight",
            IdempotencyUnavailable(_) => "Idempotency keys unavailable",
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
            CredentialsRejected { upstream, gstin, .. } => Cow::Owned(format!(
                "Correct the API user's password in the gateway config and reload it (a changed password lifts the stop); if it was reset on the e-invoice/GST portal to the configured one instead, POST /admin/sessions/{upstream}/{gstin}/refresh."
            )),
            Unauthenticated => "Send your API key in the `x-api-key` header (or `Authorization: Bearer`); ask the gateway operator for one.".into(),
            GstinMissing => "Send the taxpayer's GSTIN in the `gstin` header.".into(),
            GstinInvalid(_) => "Send a 15-character GSTIN as registered on the GST portal; check for typos in the last (check) character.".into(),
            GstinMismatch(_) => "Send the same GSTIN in the `gstin` header and in the query's `gstin` parameter.".into(),
            GstinNotAllowed(_) => "Ask the gateway operator to add this GSTIN to your client's `gstins` list.".into(),
            NoCredential { .. } => "Ask the gateway operator to add a [[credential]] for this GSTIN and upstream.".into(),
            UpstreamNotFound { known, .. } => Cow::Owned(format!("Name one of the configured upstreams in the path: {known}.")),
            UserRequired { .. } => "Name one of the API users configured for this GSTIN: the `user_name` header on API calls, `?user=NAME` on the admin API.".into(),
            PathInvalid(PathError::QueryName { .. } | PathError::QuerySeparator) => "Name query parameters as the GST API documents them (`action`, `gstin`, `ret_period`, …): letters, digits, `_` and `-`, unencoded, separated by `&`, with no `;` anywhere in the query.".into(),
            PathInvalid(_) => "Send the GST API path as documented, without `.` or `..` segments, `//`, backslashes or percent-encoded slashes; letters, digits, `-`, `_` and `.` make up every segment.".into(),
            RouteNotFound(_) => "Use a path of the GST API this gateway fronts (e.g. /eicore/v1.03/Invoice); check the base URL.".into(),
            BodyTooLarge(_) => "Send a smaller body, or ask the operator to raise `server.max_body_bytes`.".into(),
            ClientRejected => "Send the client id and secret the gateway operator configured for your client (`client_id`, `client_secret_sha256` in its [[client]] table) in the API's own client-id and client-secret headers.".into(),
            DropinSessionsExhausted { .. } => "Log in again with the same user instead of opening new sessions (a repeat login returns the live token), or ask the operator to raise the client's `max_dropin_sessions`.".into(),
            AdminUnauthenticated => "Send `Authorization: Bearer <server.admin_token>`; without an `admin_token` in the config the /admin API is off.".into(),
            MonitoringUnauthenticated => "Send `Authorization: Bearer <server.monitoring_token>` (the admin token works too); in a browser, give the token as the password at the login prompt.".into(),
            AdminRouteNotFound(_) => ADMIN_ENDPOINTS.into(),
            AdminMethodNotAllowed { .. } => "Use a method from the `Allow` header; every /admin/sessions/… action is a POST.".into(),
            MethodNotAllowed(_) => "Use the method the GST API documents: GET, POST, PUT or DELETE (the `Allow` header lists them).".into(),
            AdminRequestInvalid(_) => "Send a UTF-8 path of the form /admin/sessions/<upstream>/<gstin>/<action> and at most one `?user=NAME`; to GET /admin/sessions only `state`, `upstream`, `gstin`, `limit` (1 to 1000) and the `cursor` its `next` gave, to GET /status only `state`, `upstream`, `gstin` and `page`, each at most once (docs/operations.md).".into(),
            AdminBodyTooLarge(_) => "Send only the documented body: {\"otp\": \"123456\"} for POST /admin/sessions/<upstream>/<gstin>/otp, nothing for the other endpoints.".into(),
            RequestTimeout(_) => "Send the whole request at once; the gateway waits at most `server.request_timeout` for it, the admin listener `server.header_read_timeout` for a body.".into(),
            HeadersTooLarge(_) => "Send fewer or shorter headers (look for large cookies or repeated headers), or ask the operator to raise `server.max_header_bytes`.".into(),
            BodyInvalid(_) => "Send the plain JSON payload of the GST API; the gateway does the encryption.".into(),
            ConfigInvalid(_) => "Fix the configuration file as the detail says (`gstgate check-config` shows the same) and reload again; the running configuration stays until then.".into(),
            AdminBodyInvalid(_) => "Send the JSON body {\"otp\": \"123456\"} with the digits the taxpayer received.".into(),
            UpstreamConfigRejected { .. } => "Check the upstream's client_id, client_secret and public key in the gateway config against the GSP's onboarding details.".into(),
            ClientRateLimited { .. } => "Send more slowly: retry after the `Retry-After` seconds, or ask the gateway operator to raise your client's `rate` or `burst`.".into(),
            LoginThrottled { .. } => "Wait and retry: the gateway limits logins per user to stay below the upstream's lockout threshold.".into(),
            LoginBackoff { .. } => "Retry later; if it persists check the GSP's status and the gateway's /admin/sessions.".into(),
            TokenRejected { .. } => "Check that the API user belongs to this GSTIN and that no other system logs in with the same user; retry later.".into(),
            UpstreamThrottled { .. } => "Slow down and retry after a few minutes.".into(),
            UpstreamUnavailable(_) | UpstreamConnectionFailed(_) => "Retry with backoff; if it persists check the GSP's status page.".into(),
            UpstreamUnreachable(_) => "Retry with backoff; if it persists check the GSP's status page, and ask the gateway operator to read the gateway's log, which says why no connection could be made (DNS, network or TLS trust).".into(),
            UpstreamTimeout(_) => "Retry later, checking first whether the operation took effect (e.g. get the IRN by document details) to avoid duplicates.".into(),
            OutcomeUnknown(_) => "Do not generate again blindly: look the document up first (e-invoice: GET …/Invoice/irnbydocdetails; e-way bill: GetEwayBillGeneratedByConsigner) and generate only if the upstream has none; a repeated generate may be answered as a duplicate (2150, 604, 4002) naming the existing document.".into(),
            AdminActionTimeout(_) => "Read GET /admin/sessions for the action's outcome before repeating it: it was not cancelled, and an OTP is good for one submission only.".into(),
            UpstreamBadResponse(_) => "Retry; if it persists the GSP or its session keys are misbehaving — contact the gateway operator.".into(),
            IdempotencyKeyInvalid(_) => "Send one Idempotency-Key of 1 to 255 visible ASCII characters (a UUID is best), bare or as a quoted string, and no other characters.".into(),
            IdempotencyKeyReused => "Use a new Idempotency-Key for a new request; a key stands for one request (method, path and body) for `idempotency.window`.".into(),
            IdempotencyKeyInFlight => "Retry with the same Idempotency-Key and the same body in a few seconds: the first request is still running and its answer will be replayed.".into(),
            IdempotencyUnavailable(_) => "Retry shortly with the same Idempotency-Key; nothing was sent upstream. If it persists, ask the gateway operator to check the session store and `idempotency.max_keys`.".into(),
            NotReady(_) => "Retry shortly; the gateway is starting, its store is unreachable, or its admin listener is busy rendering other pages.".into(),
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
            | ClientRejected
            | GstinMissing
            | GstinInvalid(_)
            | GstinMismatch(_)
            | GstinNotAllowed(_)
            | NoCredential { .. }
            | UpstreamNotFound { .. }
            | UserRequired { .. }
            | PathInvalid(_)
            | MethodNotAllowed(_)
            | RouteNotFound(_)
            | AdminUnauthenticated
            | MonitoringUnauthenticated
            | AdminRouteNotFound(_)
            | AdminMethodNotAllowed { .. }
            | AdminRequestInvalid(_)
            | BodyTooLarge(_)
            | AdminBodyTooLarge(_)
            | RequestTimeout(_)
            | AdminBodyInvalid(_)
            | ConfigInvalid(_)
            | HeadersTooLarge(_)
            | BodyInvalid(_)
            | OtpNotApplicable { .. }
            | IdempotencyKeyInvalid(_)
            | IdempotencyKeyReused
            | IdempotencyKeyInFlight
            | OtpInvalid { .. } => Origin::Caller,
            LoginThrottled { .. }
            | ClientRateLimited { .. }
            | LoginBackoff { .. }
            | DropinSessionsExhausted { .. }
            | OtpRequired { .. }
            | IdempotencyUnavailable(_)
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
            | OutcomeUnknown(_)
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
            | ClientRejected
            | GstinMissing
            | GstinInvalid(_)
            | GstinMismatch(_)
            | GstinNotAllowed(_)
            | NoCredential { .. }
            | UpstreamNotFound { .. }
            | UserRequired { .. }
            | PathInvalid(_)
            | MethodNotAllowed(_)
            | RouteNotFound(_)
            | AdminUnauthenticated
            | MonitoringUnauthenticated
            | AdminRouteNotFound(_)
            | AdminMethodNotAllowed { .. }
            | AdminRequestInvalid(_)
            | BodyTooLarge(_)
            | AdminBodyTooLarge(_)
            | AdminBodyInvalid(_)
            | ConfigInvalid(_)
            | HeadersTooLarge(_)
            | BodyInvalid(_)
            | OtpNotApplicable { .. }
            | IdempotencyKeyInvalid(_)
            | IdempotencyKeyReused
            | OtpInvalid { .. } => false,
            // An operator (config, password, OTP) or the taxpayer (portal setting) must act.
            CredentialsRejected { .. }
            | UpstreamConfigRejected { .. }
            | OtpRequired { .. }
            | ApiAccessDisabled { .. } => false,
            // A slow link, a limit that lifts, sessions that expire, an upstream that recovers.
            RequestTimeout(_)
            | ClientRateLimited { .. }
            | DropinSessionsExhausted { .. }
            | LoginThrottled { .. }
            | LoginBackoff { .. }
            | TokenRejected { .. }
            | UpstreamThrottled { .. }
            | UpstreamUnavailable(_)
            | UpstreamUnreachable(_)
            | UpstreamConnectionFailed(_)
            | UpstreamTimeout(_)
            | OutcomeUnknown(_)
            | AdminActionTimeout(_)
            | UpstreamBadResponse(_)
            | TooManySessions { .. }
            | IdempotencyKeyInFlight
            | IdempotencyUnavailable(_)
            | NotReady(_)
            | Internal(_) => true,
        }
    }

    /// Seconds the caller should wait before retrying, where that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::LoginThrottled { retry_after_secs }
            | GatewayError::ClientRateLimited {
                retry_after_secs, ..
            }
            | GatewayError::LoginBackoff {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Cause;

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
            (ClientRejected, Caller, false),
            (
                DropinSessionsExhausted {
                    client: s(),
                    max: 1,
                },
                Gateway,
                true,
            ),
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
                UpstreamNotFound {
                    upstream: s(),
                    known: s(),
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
            (MonitoringUnauthenticated, Caller, false),
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
            (ConfigInvalid(s()), Caller, false),
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
                    upstream: s(),
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
                ClientRateLimited {
                    client: s(),
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
            (OutcomeUnknown(s()), Upstream, true),
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
            (IdempotencyKeyInvalid("x"), Caller, false),
            (IdempotencyKeyReused, Caller, false),
            (IdempotencyKeyInFlight, Caller, true),
            (IdempotencyUnavailable(s()), Gateway, true),
            (NotReady(s()), Gateway, true),
            (Internal(s()), Gateway, true),
        ]
    }

    /// The variant's name; exhaustive, so that a new variant cannot be left out of [`table`].
    fn variant(e: &GatewayError) -> &'static str {
        use GatewayError::*;
        match e {
            Unauthenticated => "Unauthenticated",
            ClientRejected => "ClientRejected",
            DropinSessionsExhausted { .. } => "DropinSessionsExhausted",
            GstinMissing => "GstinMissing",
            GstinInvalid(_) => "GstinInvalid",
            GstinMismatch(_) => "GstinMismatch",
            GstinNotAllowed(_) => "GstinNotAllowed",
            NoCredential { .. } => "NoCredential",
            UpstreamNotFound { .. } => "UpstreamNotFound",
            UserRequired { .. } => "UserRequired",
            PathInvalid(_) => "PathInvalid",
            MethodNotAllowed(_) => "MethodNotAllowed",
            RouteNotFound(_) => "RouteNotFound",
            AdminUnauthenticated => "AdminUnauthenticated",
            MonitoringUnauthenticated => "MonitoringUnauthenticated",
            AdminRouteNotFound(_) => "AdminRouteNotFound",
            AdminMethodNotAllowed { .. } => "AdminMethodNotAllowed",
            AdminRequestInvalid(_) => "AdminRequestInvalid",
            BodyTooLarge(_) => "BodyTooLarge",
            AdminBodyTooLarge(_) => "AdminBodyTooLarge",
            RequestTimeout(_) => "RequestTimeout",
            AdminBodyInvalid(_) => "AdminBodyInvalid",
            ConfigInvalid(_) => "ConfigInvalid",
            HeadersTooLarge(_) => "HeadersTooLarge",
            BodyInvalid(_) => "BodyInvalid",
            OtpNotApplicable { .. } => "OtpNotApplicable",
            OtpInvalid { .. } => "OtpInvalid",
            CredentialsRejected { .. } => "CredentialsRejected",
            UpstreamConfigRejected { .. } => "UpstreamConfigRejected",
            LoginThrottled { .. } => "LoginThrottled",
            ClientRateLimited { .. } => "ClientRateLimited",
            LoginBackoff { .. } => "LoginBackoff",
            TokenRejected { .. } => "TokenRejected",
            UpstreamThrottled { .. } => "UpstreamThrottled",
            UpstreamUnavailable(_) => "UpstreamUnavailable",
            UpstreamUnreachable(_) => "UpstreamUnreachable",
            UpstreamConnectionFailed(_) => "UpstreamConnectionFailed",
            UpstreamTimeout(_) => "UpstreamTimeout",
            OutcomeUnknown(_) => "OutcomeUnknown",
            AdminActionTimeout(_) => "AdminActionTimeout",
            UpstreamBadResponse(_) => "UpstreamBadResponse",
            OtpRequired { .. } => "OtpRequired",
            ApiAccessDisabled { .. } => "ApiAccessDisabled",
            TooManySessions { .. } => "TooManySessions",
            IdempotencyKeyInvalid(_) => "IdempotencyKeyInvalid",
            IdempotencyKeyReused => "IdempotencyKeyReused",
            IdempotencyKeyInFlight => "IdempotencyKeyInFlight",
            IdempotencyUnavailable(_) => "IdempotencyUnavailable",
            NotReady(_) => "NotReady",
            Internal(_) => "Internal",
        }
    }

    #[test]
    fn every_variant_has_its_documented_origin_and_retryability() {
        let table = table();
        let names: std::collections::BTreeSet<_> = table.iter().map(|(e, ..)| variant(e)).collect();
        assert_eq!(names.len(), table.len(), "a variant is listed twice");
        // The exhaustive `variant` names 50 variants; the table must hold each of them.
        assert_eq!(names.len(), 50, "a variant is missing from the table");
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
}
