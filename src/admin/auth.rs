//! Who may use the admin listener: the admin token for `/admin/*`, and the optional
//! monitoring token for `/metrics` and `/status`. Tokens are compared as digests, so the time
//! a comparison takes tells nothing about the configured token, not even its length.

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::Admin;
use crate::problem::GatewayError;

/// Whether a path is under `/admin/`, which needs the bearer token. The raw path is what the
/// router matches on too, so a percent-encoded spelling cannot reach an `/admin/` route.
pub(super) fn needs_token(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Whether a path shows what the gateway serves (the status page: which GSTINs and users;
/// the metrics: how much, per upstream), which `monitoring_token` closes.
pub(super) fn is_monitoring(path: &str) -> bool {
    path == "/metrics" || path == "/status"
}

/// With `monitoring_token` set, `/metrics` and `/status` need it or the admin token: as a
/// bearer token (Prometheus's `authorization`), or as the password of HTTP Basic, which a
/// browser asks for on the `WWW-Authenticate` challenge (any user name).
pub(super) fn authorize_monitoring(admin: &Admin, headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(monitoring) = &admin.monitoring_token else {
        return Ok(());
    };
    let given = presented(headers, true);
    if same_token(&given, monitoring) || admin.token.as_ref().is_some_and(|t| same_token(&given, t))
    {
        Ok(())
    } else {
        Err(GatewayError::MonitoringUnauthenticated)
    }
}

/// The token an `Authorization` header presents: a bearer token, or with `basic` also the
/// password of HTTP Basic (any user name). Scheme names are case-insensitive (RFC 9110
/// §11.1). Nothing presented is the empty token, which no configured token equals.
fn presented(headers: &HeaderMap, basic: bool) -> Vec<u8> {
    let Some((scheme, credentials)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return Vec::new();
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        return credentials.trim().as_bytes().to_vec();
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .unwrap_or_default();
        if let Some(colon) = decoded.iter().position(|&b| b == b':') {
            return decoded[colon + 1..].to_vec();
        }
    }
    Vec::new()
}

/// Whether `given` is the configured token, in time that tells nothing about it: both sides
/// are hashed first, so even the token's length does not show.
fn same_token(given: &[u8], expected: &SecretString) -> bool {
    let given = Sha256::digest(given);
    let expected = Sha256::digest(expected.expose_secret().as_bytes());
    bool::from(given.ct_eq(&expected))
}

/// The admin token check of `/admin/*`: a bearer token only.
pub(super) fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(expected) = &admin.token else {
        return Err(GatewayError::AdminUnauthenticated);
    };
    if same_token(&presented(headers, false), expected) {
        Ok(())
    } else {
        Err(GatewayError::AdminUnauthenticated)
    }
}
