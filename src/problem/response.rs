//! The problem+json form of a gateway error (RFC 9457), as both listeners answer it.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue};
use serde::Serialize;

use std::borrow::Cow;

use super::{GatewayError, PROXY_METHODS};

/// Where to read more about a problem code; `type` is this base plus the code.
const TYPE_BASE: &str = "https://gstgate.dev/problems/";

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

impl GatewayError {
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
    // A 401 says how to authenticate (RFC 9110 §11.6.1). The monitoring pages offer Basic so
    // that a browser asks for the token.
    let challenge = match err {
        GatewayError::Unauthenticated => Some(r#"Bearer realm="gstgate""#),
        GatewayError::AdminUnauthenticated => Some(r#"Bearer realm="gstgate admin""#),
        GatewayError::MonitoringUnauthenticated => Some(
            r#"Basic realm="gstgate monitoring", charset="UTF-8", Bearer realm="gstgate monitoring""#,
        ),
        _ => None,
    };
    if let Some(challenge) = challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
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
            upstream: "einvoice".into(),
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

    #[test]
    fn the_cause_is_in_the_log_chain_and_never_in_the_body() {
        let e = GatewayError::UpstreamUnreachable(crate::problem::Cause::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "10.1.2.3:443: invalid peer certificate: UnknownIssuer",
        )));
        let logged = crate::problem::chain(&e);
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
        assert_eq!(crate::problem::chain(&e), e.to_string());
        assert!(e.to_string().ends_with(&path.to_string()));
    }
}
