//! Calls to the upstream's auth endpoint, and reading a token's life from the reply.

use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method};

use super::{Sessions, Slot};
use crate::config::MAX_TOKEN_LIFETIME;
use crate::crypto::AesKey;
use crate::problem::GatewayError;
use crate::upstream::{Expiry, Login, LoginFailure, LoginKind, Verdict};

impl Sessions {
    /// Sends a call to the auth endpoint and returns the raw reply.
    pub(super) async fn auth_call(
        &self,
        slot: &Slot,
        kind: LoginKind<'_>,
    ) -> Result<RawReply, LoginError> {
        let upstream = &slot.upstream;
        let token = match &kind {
            LoginKind::Refresh { token, .. } => Some((*token).clone()),
            _ => None,
        };
        let password = slot.lock().password.clone();
        let req = upstream
            .profile
            .login_request(
                kind,
                &slot.credential.username,
                &password,
                &upstream.public_key,
            )
            .map_err(LoginError::Gateway)?;
        let headers = upstream.login_call_headers(&slot.header_context(), token.as_ref());
        let at = SystemTime::now();
        let instant = Instant::now();
        let (status, headers, body) = upstream
            .send(Method::POST, &upstream.auth_path, headers, req.body.into())
            .await
            .map_err(LoginError::Gateway)?;
        Ok(RawReply {
            status,
            server_date: server_date(&headers),
            body,
            app_key: req.app_key,
            at,
            instant,
        })
    }

    /// Sends a login and reads the session out of its reply.
    pub(super) async fn login_call(
        &self,
        slot: &Slot,
        kind: LoginKind<'_>,
    ) -> Result<Sent, LoginError> {
        let raw = self.auth_call(slot, kind).await?;
        let login = slot
            .upstream
            .profile
            .parse_login(&raw.body, &raw.app_key)
            .map_err(|f| login_failure(f, raw.status))?;
        let life = token_life(
            &login.expiry,
            raw.at,
            raw.server_date,
            slot.upstream.token_lifetime,
        );
        Ok(Sent {
            login,
            at: raw.at,
            instant: raw.instant,
            life,
        })
    }
}

/// The upstream's `Date` header, rounded up by the second it may have truncated (so the
/// token's remaining life is under- rather than over-estimated).
fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    let text = headers.get(http::header::DATE)?.to_str().ok()?;
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some(SystemTime::from(at) + Duration::from_secs(1))
}

/// Why an auth call failed, before it is turned into a gateway error.
pub(super) enum LoginError {
    Refused(Verdict),
    Gateway(GatewayError),
}

pub(super) fn login_failure(f: LoginFailure, status: http::StatusCode) -> LoginError {
    match f {
        LoginFailure::Refused(v) => LoginError::Refused(v),
        LoginFailure::BadReply(why) if status.is_server_error() => LoginError::Gateway(
            GatewayError::UpstreamUnavailable(format!("login answered HTTP {status}: {why}")),
        ),
        LoginFailure::BadReply(why) => LoginError::Gateway(GatewayError::UpstreamBadResponse(why)),
    }
}

/// An auth call's reply, with when it was sent by both clocks and the upstream's clock
/// reading from its `Date` header.
pub(super) struct RawReply {
    pub(super) status: http::StatusCode,
    pub(super) server_date: Option<SystemTime>,
    pub(super) body: bytes::Bytes,
    pub(super) app_key: AesKey,
    pub(super) at: SystemTime,
    pub(super) instant: Instant,
}

/// A successful login and when it was sent.
pub(super) struct Sent {
    pub(super) login: Login,
    pub(super) at: SystemTime,
    pub(super) instant: Instant,
    /// When the token expires, as reported (capped), and its life from when the login was
    /// sent; or why the reply's expiry is unusable.
    pub(super) life: Result<(SystemTime, Duration), &'static str>,
}

/// A new token's expiry and life. The life runs from when the login was sent, on the
/// monotonic clock, so latency makes gstgate early, never late. An absolute expiry is measured
/// against the upstream's own clock (its `Date` header) when it sent one, so a host clock
/// running behind the upstream's cannot stretch a token's life. A life over
/// [`MAX_TOKEN_LIFETIME`] is cut to it; an expiry already past is a bad reply (retrying later
/// may help), not a token to schedule refreshes for in a loop.
fn token_life(
    expiry: &Expiry,
    sent_at: SystemTime,
    server_date: Option<SystemTime>,
    configured: Duration,
) -> Result<(SystemTime, Duration), &'static str> {
    let lifetime = match *expiry {
        Expiry::At(at) => at
            .duration_since(server_date.unwrap_or(sent_at))
            .unwrap_or(Duration::ZERO),
        Expiry::After(lifetime) => lifetime,
        Expiry::Unstated => configured,
    };
    if lifetime.is_zero() {
        return Err("the login reply's token expiry is already past");
    }
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    let expires_at = match *expiry {
        Expiry::At(at) => at.min(sent_at + MAX_TOKEN_LIFETIME),
        _ => sent_at + lifetime,
    };
    Ok((expires_at, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_life_is_capped_and_a_past_expiry_refused() {
        let sent = SystemTime::now();
        let six_hours = Duration::from_secs(6 * 3600);
        let far = sent + Duration::from_secs(3 * 365 * 24 * 3600);
        assert_eq!(
            token_life(&Expiry::At(far), sent, None, six_hours),
            Ok((sent + MAX_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME))
        );
        // Measured on the upstream's clock: its Date an hour ahead of ours shortens the life.
        let at = sent + six_hours;
        let upstream_now = sent + Duration::from_secs(3600);
        assert_eq!(
            token_life(&Expiry::At(at), sent, Some(upstream_now), six_hours),
            Ok((at, Duration::from_secs(5 * 3600)))
        );
        assert!(token_life(&Expiry::At(sent), sent, None, six_hours).is_err());
        let past = sent - Duration::from_secs(60);
        assert!(token_life(&Expiry::At(past), sent, None, six_hours).is_err());
        assert_eq!(
            token_life(&Expiry::Unstated, sent, None, six_hours),
            Ok((sent + six_hours, six_hours))
        );
    }
}
