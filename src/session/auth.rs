//! The login seam: the session manager reaches the upstream's auth endpoint only through
//! [`AuthEndpoint`]. In production that is [`HttpAuth`], the profile's login calls over
//! HTTP; in this module's unit tests it is a scripted upstream, so every session rule (force
//! window, hold at expiry, reissue, lockout, backoff, OTP keep-alive) is proven on Tokio's
//! paused clock in milliseconds.
//!
//! Also here: reading a token's life from a login reply.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method};
use secrecy::SecretString;

use super::pacer::{Permit, Priority};
use super::{Sessions, Slot};
use crate::config::MAX_TOKEN_LIFETIME;
use crate::crypto::AesKey;
use crate::metrics::UpstreamLabel;
use crate::problem::GatewayError;
use crate::upstream::{Expiry, Login, LoginFailure, LoginKind, Verdict};

/// A boxed future: the seam is a trait object, and a login is rare enough that the box
/// costs nothing that matters.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The upstream's auth endpoint, as the session manager calls it.
pub(crate) trait AuthEndpoint: Send + Sync + 'static {
    /// Sends a login of `kind` for `slot`'s credential (its user's `password`) and reads the
    /// new session out of the reply.
    fn login<'a>(
        &'a self,
        slot: &'a Slot,
        password: &'a SecretString,
        kind: LoginKind<'a>,
    ) -> Pending<'a, Result<Answer, LoginError>>;

    /// Asks the upstream to send the taxpayer an OTP, paired with `app_key` (GSTN).
    fn request_otp<'a>(
        &'a self,
        slot: &'a Slot,
        password: &'a SecretString,
        app_key: &'a AesKey,
    ) -> Pending<'a, Result<(), LoginError>>;
}

/// A successful login reply.
pub(crate) struct Answer {
    /// The session it carries.
    pub(crate) login: Login,
    /// The upstream's clock reading when it answered (its `Date` header), if it sent one.
    pub(crate) server_date: Option<SystemTime>,
}

/// Why an auth call failed, before it is turned into a gateway error.
pub(crate) enum LoginError {
    /// The upstream answered with an error code.
    Refused(Verdict),
    /// The call failed on the way, or its reply made no sense.
    Gateway(GatewayError),
}

/// The auth endpoint over HTTP, as each upstream's profile speaks it.
pub(crate) struct HttpAuth;

impl HttpAuth {
    /// Sends one call to the slot's auth endpoint; returns the reply's status, `Date` and
    /// body, and the app key the request carried.
    async fn call(
        slot: &Slot,
        password: &SecretString,
        kind: LoginKind<'_>,
    ) -> Result<(http::StatusCode, Option<SystemTime>, bytes::Bytes, AesKey), LoginError> {
        let upstream = &slot.upstream;
        let token = match &kind {
            LoginKind::Refresh { token, .. } => Some((*token).clone()),
            _ => None,
        };
        let req = upstream
            .profile
            .login_request(
                kind,
                &slot.credential.username,
                password,
                &upstream.public_key,
            )
            .map_err(LoginError::Gateway)?;
        let headers = upstream.login_call_headers(&slot.header_context(), token.as_ref());
        let (status, headers, body) = upstream
            .send(Method::POST, &upstream.auth_path, headers, req.body.into())
            .await
            .map_err(LoginError::Gateway)?;
        Ok((status, server_date(&headers), body, req.app_key))
    }
}

impl AuthEndpoint for HttpAuth {
    fn login<'a>(
        &'a self,
        slot: &'a Slot,
        password: &'a SecretString,
        kind: LoginKind<'a>,
    ) -> Pending<'a, Result<Answer, LoginError>> {
        Box::pin(async move {
            let (status, server_date, body, app_key) = Self::call(slot, password, kind).await?;
            let login = slot
                .upstream
                .profile
                .parse_login(&body, &app_key)
                .map_err(|f| login_failure(f, status))?;
            Ok(Answer { login, server_date })
        })
    }

    fn request_otp<'a>(
        &'a self,
        slot: &'a Slot,
        password: &'a SecretString,
        app_key: &'a AesKey,
    ) -> Pending<'a, Result<(), LoginError>> {
        Box::pin(async move {
            let kind = LoginKind::OtpRequest { app_key };
            let (status, _, body, _) = Self::call(slot, password, kind).await?;
            slot.upstream
                .profile
                .parse_ack(&body)
                .map_err(|f| login_failure(f, status))
        })
    }
}

impl Sessions {
    /// Waits for the slot's upstream's pacer to admit one auth call at `priority`: every call
    /// to an auth endpoint (cold, proactive, rejected, manual, OTP) takes this one way.
    pub(super) async fn pace(&self, slot: &Slot, priority: Priority) -> Option<Permit<'_>> {
        match self.pacers.get(&slot.upstream.name) {
            Some(pacer) => Some(pacer.acquire(priority).await),
            None => None,
        }
    }

    /// Sends a login through the seam, with `permit` or once the upstream's pacer admits it
    /// at `priority`, and reads the token's life from its reply, timed from when it was sent.
    pub(super) async fn login_call(
        &self,
        slot: &Slot,
        kind: LoginKind<'_>,
        priority: Priority,
        permit: Option<Permit<'_>>,
    ) -> Result<LoginReply, LoginError> {
        let password = slot.view().password();
        let mut permit = match permit {
            Some(p) => Some(p),
            None => self.pace(slot, priority).await,
        };
        permit.as_mut().map(Permit::used);
        let (at, instant) = (crate::clock::wall(), crate::clock::now());
        if let Priority::Refresh(due) = priority {
            if instant > due {
                self.metrics
                    .late_refreshes
                    .get_or_create(&UpstreamLabel {
                        upstream: slot.upstream.name.clone().into(),
                    })
                    .inc();
                tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    user = %slot.credential.username,
                    late_by_secs = (instant - due).as_secs_f64(),
                    "a proactive refresh started after its session expired: logins_per_second is too low for this many sessions");
            }
        }
        let answer = self.auth.login(slot, &password, kind).await?;
        let life = token_life(
            &answer.login.expiry,
            at,
            answer.server_date,
            slot.upstream.token_lifetime,
        );
        Ok(LoginReply {
            login: answer.login,
            at,
            instant,
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

/// A login failure as the session manager handles it: a reply the profile could not read is
/// the upstream being unavailable when its HTTP status says so, else a bad reply.
fn login_failure(f: LoginFailure, status: http::StatusCode) -> LoginError {
    match f {
        LoginFailure::Refused(v) => LoginError::Refused(v),
        LoginFailure::BadReply(why) if status.is_server_error() => LoginError::Gateway(
            GatewayError::UpstreamUnavailable(format!("login answered HTTP {status}: {why}")),
        ),
        LoginFailure::BadReply(why) => LoginError::Gateway(GatewayError::UpstreamBadResponse(why)),
    }
}

/// A successful login and when it was sent.
pub(super) struct LoginReply {
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
/// [`MAX_TOKEN_LIFETIME`] is cut to it; an expiry already past is not a token to schedule
/// refreshes for in a loop.
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
